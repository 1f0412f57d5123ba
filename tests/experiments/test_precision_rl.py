"""The precision-rl experiment: registry, presets, validation (fast) and a micro end-to-end run (slow)."""

import importlib.metadata
import json

import pytest

from experiments import precision_rl


def test_registered_with_tiny_and_paper_presets():
    (entry,) = importlib.metadata.entry_points(group="jaxstack.experiments", name="precision-rl")
    assert entry.value == "experiments.precision_rl"
    tiny, paper = precision_rl.PRESETS["tiny"], precision_rl.PRESETS["paper"]
    assert tiny.model.num_params() < 200_000
    assert paper.model.hidden_size == 896 and paper.model.num_layers == 24 and paper.model.vocab_size == 151936
    assert set(tiny.e1_dtypes) == {"fp32", "bf16", "fp16"} and "none" in tiny.e1_knobs


def test_config_validates():
    with pytest.raises(ValueError, match="e2_dtypes"):
        precision_rl.Config(e2_dtypes=("fp8",))
    with pytest.raises(ValueError, match="experiments"):
        precision_rl.Config(experiments=("e9",))


@pytest.mark.slow
def test_micro_run_writes_the_record(tmp_path):
    config = precision_rl.Config(sft_steps=20, sft_eval_every=10, e1_lengths=(8,), e1_batch=4,
                                 e1_ablation=("kv_cache",), e2_dtypes=("bf16", "fp16"), e2_losses=("grpo",),
                                 e2_seeds=(0,), rl_steps=2, prompts_per_step=4, group_size=2,
                                 e3_sigmas=(0.0, 0.1), e4_steps=2, out_dir=str(tmp_path), run_name="micro")
    out = precision_rl.run(config)
    for name in ("e1_heatmap.png", "e1_token_scatter.png", "e1_knob_ablation.png", "e2_rl_curves.png",
                 "e3_dose_response.png", "e4_loss_scaling.png", "summary.md", "e1.jsonl"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert {"e1", "e2", "e3", "e4"} <= set(summary)
    assert len((out / "e2" / "bf16_grpo_s0.jsonl").read_text().splitlines()) == 2
