"""Chat SFT (:mod:`jaxstack.train.chat_sft`): prompt selection and reply scoring with a stand-in
sampling client, and a short end-to-end fine-tuning run (loss falls, the replies are scored)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from jaxstack.agents.llm import JaxstackModelClient
from jaxstack.data.adp.sft import split_records
from jaxstack.models.configs import get_config
from jaxstack.train.chat_sft import assistant_prompts, sample_and_score, train_chat_sft
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig


@dataclass(frozen=True)
class _Completion:
    text: str
    finish_reason: str
    completion_tokens: int


class _ReplayClient:
    """A sampling client that answers each prompt with a fixed reply (what ``make_client`` returns)."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def complete_batch(self, prompts, max_tokens):
        self.prompts += prompts
        return [_Completion(text, reason, len(text)) for text, reason in self.replies[:len(prompts)]]


def _kind(text: str, record: dict, turn: int) -> str:
    if text.startswith("call:"):
        return "call"
    if text == "done":
        return "finish"
    raise ValueError(f"not an action: {text!r}")


def test_sample_and_score_uses_the_given_client():
    records = [{"id": "a", "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "call:x"},
                                        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]}]
    pairs = assistant_prompts(records + records, limit=8)  # the duplicate id counts once
    assert [k for _, k in pairs] == [1, 3]
    client = _ReplayClient([("call:x", "stop"), ("call:y", "length")])
    rates, rows = sample_and_score(client, pairs, _kind, max_new_tokens=4)
    assert client.prompts == [records[0]["messages"][:1], records[0]["messages"][:3]]
    assert rates == {"n": 2, "closed": 0.5, "parsed": 1.0, "valid": 0.5, "kind_match": 0.5, "exact": 0.5}
    assert rows[1]["kind"] == "call" and rows[1]["reference_kind"] == "finish"
    assert sample_and_score(client, [], _kind, 4) == ({"n": 0}, [])


def _records(n: int) -> list[dict]:
    """Synthetic chat records with a learnable reply format: the tool to call is named in the task."""
    tools = ("ls", "cat", "grep")
    out = []
    for i in range(n):
        tool = tools[i % 3]
        out.append({"id": f"rec{i}", "messages": [
            {"role": "system", "content": "Reply with one tool call."},
            {"role": "user", "content": f"Task {i}: use {tool} on file{i}.txt"},
            {"role": "assistant", "content": f'<tool_call>\n{{"name": "{tool}", "arguments": {{"path": "file{i}.txt"}}}}\n</tool_call>'},
            {"role": "tool", "content": f"contents of file{i}.txt"},
            {"role": "assistant", "content": f"<finish> done {i} </finish>"},
        ]})
    return out


@pytest.mark.slow
def test_train_chat_sft_learns_the_reply_format(tmp_path):
    from experiments.adp import classify_action

    train_records, eval_records = split_records(_records(24), 0.25, seed=0)
    summary = train_chat_sft(
        train_records, eval_records, model_config=get_config("llama-test", vocab_size=320),
        train_config=TrainConfig(steps=40, batch_size=8, seq_len=128, log_every=5, eval_every=20, checkpoint_every=40),
        optimizer_config=OptimizerConfig(learning_rate=1e-2, warmup_steps=5), run_dir=tmp_path / "sft",
        classify=classify_action, make_client=JaxstackModelClient, tokenizer_name="test-sft", max_new_tokens=40,
        max_prompts=6, show_progress=False)
    assert summary["data"]["heldout_ids"] == 6 and summary["data"]["train_ids"] == 18
    assert summary["train_loss_last"] < 0.5 * summary["train_loss_first"]
    assert summary["heldout_loss_final"] < 0.5 * summary["heldout_loss_initial"]
    before, after = summary["parse_before"]["heldout"], summary["parse_after"]["heldout"]
    assert after["n"] == before["n"] == 6
    assert after["valid"] > before["valid"] and after["kind_match"] >= 0.5
    for name in ("loss.png", "metrics.jsonl", "samples.jsonl", "summary.json", "tokenizer.json", "hf/config.json"):
        assert (tmp_path / "sft" / name).exists(), name
    written = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert written["sft"]["heldout_loss_final"] == summary["heldout_loss_final"]
    assert summary["heldout_loss_min"] <= summary["heldout_loss_final"]
    assert "steps_done" in written  # the trainer's own keys survive the merge
    samples = [json.loads(line) for line in (tmp_path / "sft" / "samples.jsonl").read_text().splitlines()]
    assert {s["model"] for s in samples} == {"initial", "trained"} and len(samples) == 24
