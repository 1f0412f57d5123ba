"""The agents' prompts, now rendered by jaxstack.data.chat, are byte-identical to the hand-built ChatML
strings they replaced (spelled out literally here)."""

import json
from types import SimpleNamespace

from jaxstack.agents import oracle
from jaxstack.agents.fold import FINAL_TURN_SUFFIX, FoldContext, Step

CALL = {"name": "search", "arguments": {"query": ["a b"]}}
TOOLS = [{"name": "search", "description": "Search the web."}]


def test_fold_prompt_segments_are_the_former_chatml_strings():
    ctx = FoldContext("Who wrote X?", tuple(TOOLS)).append_step(Step("look", CALL, "R0"))
    for final_turn in (False, True):
        segments = ctx.prompt_segments(final_turn)
        assert segments[0] == (f"<|im_start|>system\n{ctx.system_prompt()}<|im_end|>\n<|im_start|>user\n"
                               "### Question\nWho wrote X?\n\n### Previous Steps\n")
        assert segments[-1] == (FINAL_TURN_SUFFIX if final_turn else "") + "<|im_end|>\n<|im_start|>assistant\n"
        assert ctx.render(final_turn) == (f"<|im_start|>system\n{ctx.system_prompt()}<|im_end|>\n"
                                          f"<|im_start|>user\n{ctx.user_message(final_turn)}<|im_end|>\n"
                                          "<|im_start|>assistant\n")


def _trajectory():
    actions = [oracle.OracleAction(f"think {i}", f"why {i}", CALL, f"observation {i}") for i in range(3)]
    return oracle.OracleTrajectory(SimpleNamespace(qid="q0", text="Who wrote X?"), actions, "A", "done", [])


def test_react_and_summary_segments_are_the_former_chatml_strings():
    traj = _trajectory()
    system = oracle.REACT_SYSTEM_PROMPT.format(tools=json.dumps(TOOLS, ensure_ascii=False))
    call = json.dumps(CALL, ensure_ascii=False)

    def step(i):
        return (f"<|im_start|>assistant\n<think>think {i}</think>\n<tool_call>\n{call}\n</tool_call><|im_end|>\n",
                f"<|im_start|>user\n<tool_response>\nobservation {i}\n</tool_response><|im_end|>\n")

    head = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWho wrote X?<|im_end|>\n"
    assert oracle.react_segments(traj, TOOLS, 2) == [head, *step(0), *step(1), "<|im_start|>assistant\n"]

    seen = []
    oracle.summary_accounting(traj, TOOLS, lambda text: seen.append(text) or len(text), p=0.0)
    summary = "Below is a summary of the previous conversation...Summary: <|im_end|>\n"
    turn_1 = [f"<|im_start|>system\n{system}<|im_end|>\n", "<|im_start|>user\nQuestion: Who wrote X?\n", summary,
              *step(0), "<|im_start|>assistant\n"]
    assert seen[4:4 + len(turn_1)] == turn_1  # turn 0 has 4 segments (no latest step)


def test_sft_token_mask_prompt_is_the_former_chatml_string():
    example = SimpleNamespace(system="S", user="U", response="R")
    texts = []

    class _Counter:  # records the text; one token per character
        def encode(self, text):
            texts.append(text)
            return SimpleNamespace(ids=list(range(len(text))), offsets=[(i, i + 1) for i in range(len(text))])

    ids, mask = oracle.sft_token_mask(example, _Counter())
    prompt = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert texts == [prompt + "R<|im_end|>"]
    assert sum(mask) == len("R<|im_end|>") and mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0
