"""jaxstack scoring vs lm-evaluation-harness's HF backend.

* Golden fixture (always runs): ``scripts/make_eval_fixtures.py`` saved a tiny random transformers
  Llama, its tokenizer, and lm-eval's per-item numbers on a local JSON task per variety of the
  Global PIQA-format fixture (full context, and max_length=80 so contexts get truncated).
* Live (``oracle``, needs lm-eval + torch): reruns lm-eval now and compares the same way.

Tolerance 1e-4 on summed log-likelihoods (the issue's bound): both sides run float32 forwards
(torch vs XLA) and sum 20..60 token log-probs of magnitude ~6; measured max difference ~4e-5.
Metrics must match exactly.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from jaxstack.evals import evaluate_multiple_choice
from jaxstack.evals.global_piqa import load_global_piqa

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
GLOBAL_PIQA = FIXTURES / "global_piqa"
EVAL_MODEL = FIXTURES / "evals" / "model"
LM_EVAL_RESULTS = FIXTURES / "evals" / "lm_eval_results.json"

ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:loglikelihood.*truncated from the left")


def _compare(model, tokenizer, reference: dict, max_length):
    data = load_global_piqa(GLOBAL_PIQA)
    assert sorted(data) == sorted(reference)
    truncated = 0
    for variety, items in data.items():
        expected = reference[variety]
        result = evaluate_multiple_choice(model, tokenizer, items, progress=False, max_length=max_length)
        ours = np.array([r["loglikelihoods"] for r in result["records"]])
        np.testing.assert_allclose(ours, np.array(expected["loglikelihoods"]), rtol=0, atol=ATOL, err_msg=variety)
        assert [r["is_greedy"] for r in result["records"]] == expected["is_greedy"]
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert [r[metric] for r in result["records"]] == expected[metric], (variety, metric)
            assert result[metric] == pytest.approx(np.mean(expected[metric]), abs=1e-12)
            stderr = expected["metrics"].get(f"{metric}_stderr")
            if isinstance(stderr, float):
                assert result[f"{metric}_stderr"] == pytest.approx(stderr, abs=1e-12)
        truncated += result["n_truncated"]
    return truncated


def test_matches_lm_eval_golden_fixture(fixture_model, tokenizer):
    golden = json.loads(LM_EVAL_RESULTS.read_text(encoding="utf-8"))
    assert _compare(fixture_model, tokenizer, golden["full"]["varieties"], None) == 0
    # the truncated run: lm-eval cut contexts from the left; we must have cut the same requests
    assert _compare(fixture_model, tokenizer, golden["truncated"]["varieties"], golden["truncated"]["max_length"]) > 0


@pytest.mark.oracle
def test_transformers_loads_the_fixture_tokenizer(tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(EVAL_MODEL))
    text = "Чтобы быстро высушить валенки, 想让饺子 and ASCII."
    assert hf.encode(text) == tokenizer.encode(text)  # no BOS on either side


@pytest.mark.oracle
@pytest.mark.slow
def test_matches_live_lm_eval(fixture_model, tokenizer):
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "make_eval_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_eval_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    live = module.run_lm_eval(EVAL_MODEL)
    _compare(fixture_model, tokenizer, live, None)


@pytest.mark.oracle
@pytest.mark.slow
def test_bos_tokenizer_matches_live_lm_eval(tmp_path):
    """A tokenizer whose post-processor adds BOS (Llama-3 style): BOS-led contexts, an empty context
    (prefix = BOS) and a string already starting with BOS agree with lm-eval's HF backend."""
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    import shutil

    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import processors

    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.inference.scoring import loglikelihoods
    from jaxstack.models.checkpoint import load_pretrained

    model_dir = tmp_path / "bos_model"
    shutil.copytree(EVAL_MODEL, model_dir)
    backend = BackendTokenizer.from_file(str(model_dir / "tokenizer.json"))
    bos = backend.token_to_id("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A",
                                                           special_tokens=[("<|im_start|>", bos)])
    backend.save(str(model_dir / "tokenizer.json"))
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), eos_token="<|endoftext|>",
                                         bos_token="<|im_start|>", pad_token="<|endoftext|>").save_pretrained(model_dir)
    requests = [("To keep a pan dry,", " wipe it."), ("", " hello world"), ("Чтобы ", "высушить валенки"),
                ("<|im_start|>Hi", " there")]
    lm = HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), device="cpu", dtype="float32", batch_size=4)
    expected = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)],
                                disable_tqdm=True)
    got = loglikelihoods(load_pretrained(model_dir), load_tokenizer(model_dir), requests, progress=False)
    np.testing.assert_allclose([g[0] for g in got], [e[0] for e in expected], rtol=0, atol=ATOL)
    assert [g[1] for g in got] == [e[1] for e in expected]
