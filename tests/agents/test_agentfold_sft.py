"""The tiny-model SFT run on AgentFold oracle examples (experiments/agentfold.py, preset ``sft``)."""

import dataclasses
import json

import pytest

from jaxstack.agents.fold import ResponseParseError


def test_classify_response_and_sft_config_checks():
    from experiments.agentfold import PRESETS, Config, classify_response

    call = '<think>x</think>\n<tool_call>{"name": "search", "arguments": {"query": ["a"]}}</tool_call>'
    assert classify_response(call, {"turn": 0}) == "search"
    assert classify_response("<think>done</think>\n<answer>Lisbon</answer>", {"turn": 5}) == "answer"
    with pytest.raises(ResponseParseError, match="compress"):
        classify_response(call, {"turn": 3})  # after turn 0 a tool call needs a <compress> directive
    with pytest.raises(ValueError, match="neither"):
        classify_response("hello", {"turn": 0})
    assert PRESETS["sft"].sft_train and PRESETS["sft"].sft_heldout < PRESETS["sft"].sft_trajectories
    with pytest.raises(ValueError, match="sft_heldout"):
        Config(sft_train=True, sft_trajectories=2, sft_heldout=2)


@pytest.mark.slow
def test_sft_preset_trains_and_scores_responses(tmp_path):
    from experiments.agentfold import PRESETS, run

    config = PRESETS["sft"]
    config = dataclasses.replace(config, out_dir=str(tmp_path), sft_max_prompts=3, sft_max_new_tokens=16,
                                 sft_trainer=dataclasses.replace(config.sft_trainer, steps=10, batch_size=8))
    out = run(config)
    s = json.loads((out / "summary.json").read_text())["sft_train"]
    assert s["steps"] == 10 and s["train_loss_last"] < s["train_loss_first"]
    assert s["data"]["heldout_ids"] >= 1 and s["parse_after"]["heldout"]["n"] == 3
    assert (out / "sft_train" / "loss.png").exists() and (out / "sft_train" / "samples.jsonl").exists()
