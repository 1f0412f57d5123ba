"""The mae experiment: presets, validation, the pre-registered verdict, three MAE steps of the tiny
preset end to end (every metric logged) and the can-fail control (a judge that scores at random).

The end-to-end run (one run of the tiny preset cut to three MAE steps, shared by two tests) is slow
(~40-60 s on 2 cores, nearly all compilation); the fast variants on a smaller model are
tests/rl/test_mae_engine.py::test_three_mae_steps_log_every_metric_and_update_once and
::test_a_judge_that_scores_at_random_agrees_with_truth_at_chance.
"""

import dataclasses
import importlib.metadata
import json

import numpy as np
import pytest

from experiments import mae

#: Every per-step metric of an MAE step (ground truth ones included) and of an evaluation.
TRAIN_METRICS = {
    "proposer/reward", "proposer/format", "proposer/has_question", "proposer/gate_pass", "proposer/quality",
    "proposer/judged_difficulty", "proposer/reference_share", "proposer/well_formed", "proposer/true_difficulty",
    "proposer/digits", "proposer/carries", "proposer/kept_well_formed", "solver/reward", "solver/format",
    "solver/true_accuracy", "judge/reward", "judge/accept_rate", "judge/agreement", "judge/false_accept",
    "judge/false_reject", "judge/question_agreement", "buffer/size", "buffer/evolved", "loss", "grad_norm", "finite",
    "loss_scale", "skipped_steps", "wall_s",
    *(f"{role}/{m}" for role in ("proposer", "solver", "judge")
      for m in ("entropy", "length", "adv_mean", "rows", "abs_diff_mean", "k3")),
}
EVAL_METRICS = {"id_accuracy", "ood_accuracy", "judge_agreement", "judge_accept_rate", "judge_false_accept",
                "judge_false_reject"}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The tiny preset cut to three MAE steps: one seed, a short SFT, small evaluation sets (256 judge
    probes for the chance test); arms base, MAE half reference and MAE with a random judge."""
    tiny = mae.PRESETS["tiny"]
    config = dataclasses.replace(
        tiny, seeds=(0,), arms=("base", "mae_half_reference"), judge_noise_sweep=(1.0,), sft_steps=30,
        sft_eval_every=30, sft_target=None, eval_every=3, eval_questions=32, judge_probe_count=256,
        show_progress=False, mae=dataclasses.replace(tiny.mae, steps=3),
        out_dir=str(tmp_path_factory.mktemp("mae")), run_name="micro")
    out = mae.run(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows, json.loads((out / "summary.json").read_text())


def test_presets_and_entry_point():
    tiny, paper = mae.PRESETS["tiny"], mae.PRESETS["paper"]
    assert tiny.model.num_params() < 200_000 and len(tiny.seeds) >= 3
    assert set(mae.ARMS) <= set(tiny.arms) and tiny.mae.steps > 0
    assert paper.mae.learning_rate == 1e-6 and paper.mae.entropy_coef == (0.001, 0.001, 0.001)
    assert paper.init_from.startswith("REQUIRED") and "grpo_true_checker" not in paper.arms
    entries = importlib.metadata.entry_points(group="jaxstack.experiments", name="mae")
    for entry in entries:  # registered by pyproject.toml once the integrator adds the line
        assert entry.value == "experiments.mae"


def test_config_validates():
    with pytest.raises(ValueError, match="Config.arms"):
        mae.Config(arms=("base", "mae_quarter_reference"))
    with pytest.raises(ValueError, match="Config.eval_files"):
        mae.Config(init_from="/some/model", arms=("base",))
    with pytest.raises(ValueError, match="grpo_true_checker"):
        mae.Config(init_from="/some/model", eval_files=("a.jsonl",))
    with pytest.raises(ValueError, match="judge_noise_sweep"):
        mae.Config(judge_noise_sweep=(2.0,))
    with pytest.raises(ValueError, match="mae.include_references"):
        mae.MAEConfig(include_references=0.7 + 1)
    with pytest.raises(ValueError, match="init_from"):
        mae.run(dataclasses.replace(mae.PRESETS["paper"], init_from="/no/such/dir", eval_files=("x",)))


def _gain(mean, se):
    return {"mean": mean, "se": se, "n": 3}


@pytest.mark.parametrize("id_gain, ood_gain, other, expected", [
    (_gain(0.05, 0.01), _gain(0.0, 0.01), _gain(0.0, 0.01), "reproduced"),
    (_gain(0.05, 0.01), _gain(-0.05, 0.01), _gain(0.0, 0.01), "partially"),  # OOD fell
    (_gain(0.02, 0.02), _gain(0.0, 0.01), _gain(0.04, 0.01), "partially"),  # another MAE arm gains
    (_gain(0.02, 0.02), _gain(0.0, 0.01), _gain(0.0, 0.01), "not reproduced"),  # within 2 SE
    (_gain(0.005, 0.0), _gain(0.0, 0.0), _gain(0.0, 0.0), "not reproduced"),  # below one point
    (_gain(-0.05, 0.01), _gain(0.0, 0.01), _gain(0.0, 0.01), "not reproduced"),
])
def test_verdict_criterion(id_gain, ood_gain, other, expected):
    gains = {"mae_half_reference": {"id": id_gain, "ood": ood_gain},
             "mae_no_reference": {"id": other, "ood": _gain(0.0, 0.01)}}
    result = mae.verdict(gains)
    assert result["result"] == expected and result["criterion"] == mae.CRITERION
    assert result["mae_beats_base"] == (expected == "reproduced" or id_gain["mean"] > max(2 * id_gain["se"], 0.01))


@pytest.mark.slow
def test_three_mae_steps_of_the_tiny_preset_log_every_metric(micro_run):
    out, rows, summary = micro_run
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    for arm in ("mae_half_reference", "mae_judge_noise_1"):
        mine = [r for r in train if r["arm"] == arm]
        assert [r["step"] for r in mine] == [1, 2, 3]
        for r in mine:
            assert TRAIN_METRICS <= set(r), TRAIN_METRICS - set(r)
            assert r["finite"] and r["proposer/rows"] == 16 and r["solver/rows"] == 48
    assert {(r["arm"], r["step"]) for r in evals} == {("base", 0), ("mae_half_reference", 3),
                                                      ("mae_judge_noise_1", 3)}
    assert all(EVAL_METRICS <= set(r) for r in evals)
    assert summary["verdict"]["criterion"] == mae.CRITERION
    assert summary["verdict"]["result"] in ("reproduced", "partially", "not reproduced")
    for metric in ("id", "ood", "judge_agreement"):
        assert {"mean", "se", "n"} <= set(summary["accuracy"]["mae_half_reference"][metric])
    assert {"id", "ood"} <= set(summary["gain_vs_base"]["mae_half_reference"])
    dynamics = summary["dynamics"]["mae_half_reference"]
    for key in ("judge_agreement", "proposer_gate_pass", "proposer_true_difficulty", "judge_agreement_probe"):
        assert len(dynamics[key]["mean"]) == len(dynamics[key]["se"]) > 0
    assert summary["gain_vs_judge_error"]["points"]
    assert summary["paper"]["table"][-1]["setting"] == "MAE (half reference)"
    for name in ("accuracy.png", "dynamics.png", "summary.md", "sft.jsonl", "config.json"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_a_judge_that_scores_at_random_is_at_chance_and_the_verdict_says_no(micro_run):
    """The can-fail control: with every judge score a uniform draw, the judge's agreement with the
    ground truth is at chance on the probes and on the live answers, at most 21/100 of the questions
    pass the gate (two uniform 1-10 scores summing to >= 15), and the pre-registered verdict applied
    to that arm says no."""
    _, _, summary = micro_run
    arm = "mae_judge_noise_1"
    probe = summary["accuracy"][arm]["judge_agreement"]["mean"]
    live = np.mean(summary["dynamics"][arm]["judge_agreement"]["mean"])
    assert abs(probe - 0.5) < 0.1, probe  # 256 balanced probes: chance +- ~3 SE
    assert abs(live - 0.5) < 0.25, live  # 48 live answers per step: a random accept is ~chance
    assert summary["gate_pass_share"][arm]["mean"] < 0.45
    verdict = mae.verdict({"mae_half_reference": summary["gain_vs_base"][arm]})
    assert verdict["result"] != "reproduced" and not verdict["mae_beats_base"]


# ----------------------------------------------------------------------------------------------------
# the paper preset's code path on a tiny random Hugging Face model


def _tiny_hf_model(path):
    import jax
    from flax import nnx

    from jaxstack.data.tokenizer import train_bpe
    from jaxstack.models import LlamaForCausalLM
    from jaxstack.models.checkpoint import save_pretrained
    from jaxstack.models.configs import LlamaConfig
    from jaxstack.rl.mae import INSTRUCT_TEMPLATES

    texts = [INSTRUCT_TEMPLATES.proposer, INSTRUCT_TEMPLATES.solver, INSTRUCT_TEMPLATES.judge_answer,
             INSTRUCT_TEMPLATES.judge_question, "<question>12+07</question><answer>19</answer><score>7</score>"] * 3
    tokenizer = train_bpe(texts, 400)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=2, num_kv_heads=1, max_position_embeddings=512, tie_word_embeddings=True)
    # numpy weights into an abstract model: no compiled initialisers
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: np.ones(s.shape, s.dtype) if len(s.shape) == 1 else
                         (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), state)
    save_pretrained(nnx.merge(graphdef, state), path)
    tokenizer.save(path / "tokenizer.json")
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml}))
    return path


@pytest.mark.slow  # (no fast variant: the toy path's fast tests cover the shared MAE step)
def test_paper_path_runs_on_a_tiny_hf_model(tmp_path):
    """The paper preset's path end to end: a local HF checkpoint and chat template, the natural-language
    templates, a seed file, exact match on a local benchmark file, one MAE step, the summary."""
    model_dir = _tiny_hf_model(tmp_path / "hf")
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": f"{a}+{a}", "answer": str(2 * a)}) + "\n" for a in range(3)))
    paper = mae.PRESETS["paper"]
    config = dataclasses.replace(
        paper, init_from=str(model_dir), eval_files=(str(bench),), arms=("base", "mae_half_reference"), eval_every=1,
        out_dir=str(tmp_path / "runs"), run_name="paper",
        mae=dataclasses.replace(paper.mae, steps=1, proposer_prompts=2, solver_prompts=2, quality_samples=1,
                                difficulty_samples=1, train_policy="fp32", rollout_rows=4, micro_rows=4,
                                prompt_width=400, max_new_tokens=8, max_question_tokens=8, max_answer_tokens=8))
    out = mae.run(config)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"base/s0", "mae_half_reference/s0"}
    assert all(0.0 <= r["bench"] <= 1.0 and r["average"] == r["bench"] for r in summary["results"].values())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["finite"] and "solver/true_accuracy" not in train[0]  # no ground truth
