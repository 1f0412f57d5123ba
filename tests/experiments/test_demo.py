"""The main job runs end to end (shortened) and leaves its record."""

import dataclasses
import json

import experiments.demo as demo


def test_demo_leaves_a_complete_record(tmp_path):
    preset = demo.PRESETS["tiny"]
    config = dataclasses.replace(
        preset,
        model=preset.model.replace(num_layers=1),
        train=dataclasses.replace(preset.train, steps=4, log_every=2, eval_every=2, checkpoint_every=4),
        sample_tokens=8,
        out_dir=str(tmp_path),
        run_name="smoke",
    )
    run_dir = demo.run(config)
    for name in ("config.json", "metrics.jsonl", "summary.json", "loss.png", "samples.txt",
                 "tokenizer.json", "hf/config.json", "hf/model.safetensors"):
        assert (run_dir / name).exists(), name
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert "eval_loss" in metrics[-1] and metrics[-1]["loss"] < 8.0  # ln(2048) = 7.6 at init
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["samples"]) == len(config.prompts)
    assert json.loads((run_dir / "config.json").read_text())["model"]["num_layers"] == 1
