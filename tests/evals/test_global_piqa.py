"""Global PIQA: the local layout, error paths, both variants, the prompted format's answer extraction,
reports (per variety / script / macro, markdown, JSON, plot), the CLI, the generic task config and
the training-data guard."""

import json
import pathlib
import shutil

import pytest

from jaxstack.data.guard import EvalDataError, assert_not_eval_data, eval_data_reason
from jaxstack.evals import global_piqa
from jaxstack.evals.multiple_choice import MultipleChoiceItem
from jaxstack.evals.tasks import PIQA, MultipleChoiceTask, TaskDataError, read_records

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
GLOBAL_PIQA = FIXTURES / "global_piqa"
GLOBAL_PIQA_PARALLEL = FIXTURES / "global_piqa_parallel"
EVAL_MODEL = FIXTURES / "evals" / "model"

SCRIPTS = {"latn", "cyrl", "arab", "deva", "hans"}


def _write(path: pathlib.Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


RECORD = {"prompt": "To dry wet shoes,", "solution0": "stuff them with paper.", "solution1": "freeze them.", "label": 0}


def test_fixture_layout_loads():
    data = global_piqa.load_global_piqa(GLOBAL_PIQA)
    assert {items[0].meta["script"] for items in data.values()} == SCRIPTS
    assert set(data) == {"eng_latn", "spa_latn_mexi", "rus_cyrl", "apc_arab_jord", "hin_deva", "cmn_hans"}
    item = data["apc_arab_jord"][0]
    assert len(item.choices) == 2 and item.meta["variety"] == "apc_arab_jord" and item.meta["variant"] == "nonparallel"
    assert all(len(items) >= 3 for items in data.values())
    # a single variety directory is accepted too
    assert list(global_piqa.load_global_piqa(GLOBAL_PIQA / "cmn_hans")) == ["cmn_hans"]


def test_parallel_variant_has_four_choices():
    data = global_piqa.load_global_piqa(GLOBAL_PIQA_PARALLEL)
    assert all(len(item.choices) == 4 and item.meta["variant"] == "parallel" for items in data.values()
               for item in items)
    with pytest.raises(TaskDataError, match="missing field"):
        global_piqa.load_global_piqa(GLOBAL_PIQA, variant="parallel")


def test_layout_variants(tmp_path):
    _write(tmp_path / "eng_latn" / "test" / "part-0.jsonl", [RECORD])  # test/ directory
    _write(tmp_path / "dev_latn" / "test.jsonl", [RECORD])  # dev configs are skipped
    _write(tmp_path / "fra_latn_cana" / "train.jsonl", [RECORD])  # not the test split
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "cmn_hans").mkdir()
    pq.write_table(pa.Table.from_pylist([RECORD, {**RECORD, "label": 1}]),
                   tmp_path / "cmn_hans" / "test-00000-of-00001.parquet")
    with pytest.raises(TaskDataError, match="fra_latn_cana: no test split"):
        global_piqa.load_global_piqa(tmp_path)
    shutil.rmtree(tmp_path / "fra_latn_cana")
    data = global_piqa.load_global_piqa(tmp_path)
    assert sorted(data) == ["cmn_hans", "eng_latn"] and [i.label for i in data["cmn_hans"]] == [0, 1]


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in RECORD.items() if k != "solution1"}, "missing field\\(s\\) \\['solution1'\\]"),
    ({**RECORD, "label": 2}, "'label' must be an integer in \\[0, 2\\)"),
    ({**RECORD, "label": "zero"}, "'label' must be an integer"),
    ({**RECORD, "solution0": ""}, "'solution0' must be a non-empty string"),
], ids=["missing-field", "label-out-of-range", "label-not-int", "empty-solution"])
def test_bad_records(tmp_path, record, message):
    _write(tmp_path / "eng_latn" / "test.jsonl", [RECORD, record])
    with pytest.raises(TaskDataError, match=message):
        global_piqa.load_global_piqa(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(TaskDataError, match="does not exist"):
        global_piqa.load_global_piqa(tmp_path / "nope")
    with pytest.raises(TaskDataError, match="no variety directories"):
        global_piqa.load_global_piqa(tmp_path)
    with pytest.raises(TaskDataError, match="varieties \\['xyz_latn'\\] not found"):
        global_piqa.load_global_piqa(GLOBAL_PIQA, varieties=["xyz_latn"])
    (tmp_path / "eng_latn").mkdir()
    (tmp_path / "eng_latn" / "test.jsonl").write_text("{not json\n")
    with pytest.raises(TaskDataError, match="test.jsonl:1: not valid JSON"):
        global_piqa.load_global_piqa(tmp_path)


def test_prompted_format_and_answer_extraction():
    item = global_piqa.load_global_piqa(GLOBAL_PIQA, varieties=["eng_latn"])["eng_latn"][0]
    text = global_piqa.prompted_text(item)
    assert text.startswith("Given the following situation, which option is more likely to be correct?\n\nSituation:\n")
    assert "Option A: " + item.choices[0] in text and text.endswith("one of A or B.")
    parallel = global_piqa.load_global_piqa(GLOBAL_PIQA_PARALLEL)["eng_latn"][0]
    assert global_piqa.prompted_text(parallel).endswith("one of A, B, C, or D.")
    extract = global_piqa.extract_answer
    assert extract("Let me think. The best answer is: B") == "B"
    assert extract("Answer: A ... no wait, the final answer is B.") == "B"  # last match wins
    assert extract("\\boxed{A}") == "A"
    assert extract("I would pick option C") == "[invalid]"
    assert extract("the best answer is: a") == "[invalid]"  # lm-eval's regex is case-sensitive on the letter
    assert extract("The answer is C", 4) == "C" and extract("The answer is C", 2) == "[invalid]"
    items = [item, MultipleChoiceItem("x", ("a", "b"), 1, {"variety": "eng_latn"})]
    scored = global_piqa.score_prompted(items, ["The best answer is: A.", "The best answer is A"])
    assert [r["correct"] for r in scored["records"]] == [True, False] and scored["exact_match"] == 0.5


def test_report_aggregation(tmp_path):
    data = global_piqa.load_global_piqa(GLOBAL_PIQA)
    items = [item for v in data.values() for item in v]
    # "responses" that are right for Latin-script items only: per-variety and per-script numbers are known
    responses = [f"The best answer is: {'AB'[i.label] if i.meta['script'] == 'latn' else 'AB'[1 - i.label]}"
                 for i in items]
    report = global_piqa.evaluate_global_piqa(None, None, data, format="prompted", responses=responses)
    assert report["varieties"]["eng_latn"]["exact_match"] == 1.0
    assert report["varieties"]["rus_cyrl"]["exact_match"] == 0.0
    assert report["scripts"]["latn"] == {"script": "latn", "varieties": 2, "n": 7, "exact_match": 1.0}
    assert report["macro"]["exact_match"] == pytest.approx(2 / 6)  # unweighted over varieties
    paths = global_piqa.write_report(report, tmp_path)
    table = paths["markdown"].read_text(encoding="utf-8")
    assert table.index("eng_latn") < table.index("rus_cyrl")  # sorted by accuracy
    assert paths["plot"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["macro"]["varieties"] == 6


def test_cli_writes_table_and_plot(tmp_path, capsys):
    from jaxstack.cli import main

    assert main(["eval", "global-piqa", "--model", str(EVAL_MODEL), "--data", str(GLOBAL_PIQA),
                 "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["varieties"]) == {p.name for p in GLOBAL_PIQA.iterdir() if p.is_dir()}
    assert {"acc", "acc_norm", "acc_bytes"} <= set(report["macro"])
    assert (tmp_path / "accuracy.png").stat().st_size > 1000 and (tmp_path / "report.md").exists()
    assert "| variety | script | n | acc | acc_norm | acc_bytes |" in capsys.readouterr().out


def test_generic_task_and_piqa(tmp_path):
    _write(tmp_path / "piqa.jsonl", [{"goal": "Open a can", "sol1": "use an opener", "sol2": "use a spoon", "label": 0}])
    item = PIQA.load(tmp_path / "piqa.jsonl")[0]
    assert item.context == "Question: Open a can\nAnswer:" and item.choices == ("use an opener", "use a spoon")
    four_way = MultipleChoiceTask("mine", "Q: {q}\nA:", ("a", "b", "c", "d"), "gold")
    _write(tmp_path / "mine.jsonl", [{"q": "2+2?", "a": "3", "b": "4", "c": "5", "d": "22", "gold": 1}])
    item = four_way.load(tmp_path / "mine.jsonl")[0]
    assert item.label == 1 and len(item.choices) == 4
    with pytest.raises(TaskDataError, match="missing field\\(s\\) \\['q'\\]"):
        four_way.items([{"a": "1", "b": "2", "c": "3", "d": "4", "gold": 0}])
    with pytest.raises(TaskDataError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


def test_guard_refuses_eval_data(tmp_path):  # (a test name with "piqa" would put it into tmp_path)
    with pytest.raises(EvalDataError, match="evaluation only"):
        assert_not_eval_data(GLOBAL_PIQA)
    with pytest.raises(EvalDataError):
        assert_not_eval_data(GLOBAL_PIQA / "eng_latn" / "test.jsonl")
    # renamed directory: caught by the record fields
    copy = tmp_path / "my_corpus"
    shutil.copytree(GLOBAL_PIQA, copy)
    assert "Global PIQA fields" in eval_data_reason(copy)
    # a parent containing it: caught by the name of the sub-directory
    (tmp_path / "mix").mkdir()
    shutil.copytree(GLOBAL_PIQA, tmp_path / "mix" / "global-piqa-nonparallel")
    assert "names Global PIQA" in eval_data_reason(tmp_path / "mix")
    # HF cache layout
    assert eval_data_reason(tmp_path / "datasets--mrlbenchmarks--global-piqa-parallel") is not None
    # a marker file fences off anything
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".eval_only").touch()
    assert ".eval_only" in eval_data_reason(tmp_path / "other" / "x.txt")
    # ordinary text data passes
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    _write(tmp_path / "text" / "b.jsonl", [{"text": "hello"}])
    assert_not_eval_data(tmp_path / "text")


def test_train_cli_refuses_eval_data(capsys):
    from jaxstack.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--out", "/tmp/never", "--text-dir", str(GLOBAL_PIQA)])
    assert "refused as training data" in capsys.readouterr().err
