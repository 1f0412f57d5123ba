"""AgentFold context: golden rendering, parser round trips, enforced invariants, properties."""

import json

import pytest

from jaxstack.agents.fold import (
    FINAL_TURN_SUFFIX,
    AgentFoldResponse,
    Block,
    FoldContext,
    FoldDirective,
    FoldError,
    ResponseParseError,
    Step,
    check_invariants,
    parse_response,
    render_previous_steps,
    render_response,
    render_response_paper,
    run_agentfold,
)
from jaxstack.agents.llm import ScriptedPolicy
from jaxstack.data.chat import render_chat

CALL = {"name": "search", "arguments": {"query": ["a b"]}}


def _ctx_after(n_steps, folds):
    """Context after ``n_steps`` steps; ``folds[t]`` = fold start k applied at turn t."""
    ctx = FoldContext("Q?", ())
    for t in range(n_steps):
        if t > 0:
            ctx, _ = ctx.fold(FoldDirective(folds.get(t, t - 1), t - 1, f"s{t}"))
        ctx = ctx.append_step(Step(f"m{t}", CALL, f"r{t}"))
    return ctx


def test_golden_public_prompt_format_byte_exact():
    ctx = FoldContext("Who wrote X?", ())
    assert ctx.user_message() == "### Question\nWho wrote X?\n\n### Previous Steps\nEMPTY"
    ctx = ctx.append_step(Step("look", CALL, "R0"))
    ctx, _ = ctx.fold(FoldDirective(0, 0, "S0"))
    ctx = ctx.append_step(Step("", CALL, "R1"))
    ctx, _ = ctx.fold(FoldDirective(0, 1, "S01"))
    ctx = ctx.append_step(Step("why", CALL, "R2"))
    ctx, _ = ctx.fold(FoldDirective(2, 2, "S2"))
    ctx = ctx.append_step(Step("m3", CALL, "R3"))
    expected = (
        "### Question\nWho wrote X?\n\n### Previous Steps\n"
        "**[Compressed Step 0 to 1]**\nS01\n\n"
        "**[Compressed Step 2]**\nS2\n\n"
        "**[Step 3]**\n**Motivation:** m3\n"
        '**Tool call:** {"name": "search", "arguments": {"query": ["a b"]}}\n'
        "**Tool response:** R3\n\n"
    )
    assert ctx.user_message() == expected
    assert ctx.user_message(final_turn=True) == expected + "\n\nNow, provide your final answer without any other tool call."
    # an empty motivation omits the line
    assert render_previous_steps([Block(0, 0, "**Tool call:** x", raw=True)]) == "**[Step 0]**\n**Tool call:** x\n\n"
    sys = ctx.system_prompt()
    assert sys.startswith("You are an intelligent agent that can simultaneously invoke appropriate tools")
    assert sys.endswith("(either tool call or final answer).\n\nAvailable tools:\n[]")
    assert "".join(ctx.prompt_segments(True)) == render_chat(ctx.messages(True), add_generation_prompt=True)


def test_paper_renderer_names_summaries_and_latest():
    ctx = _ctx_after(3, {2: 0})
    text = ctx.render_paper()
    assert "s_{0,1}: s2" in text and "I_{2}:" in text


def test_response_round_trip_and_forms():
    r = AgentFoldResponse("t", FoldDirective(2, 5, 'x "quoted"'), "m", CALL, None)
    assert parse_response(render_response(r), 6) == r
    a = AgentFoldResponse("done", FoldDirective(5, 5, "s"), "m", None, "Paris")
    assert parse_response(render_response(a), 6) == a
    # explicit list range and paper form parse to the same directive
    listed = '<think>t</think>\n<compress>{"compress_range": [2, 3, 4, 5], "compress_text": "x \\"quoted\\""}</compress>\n<motivation>m</motivation>\n<tool_call>' + json.dumps(CALL) + "</tool_call>"
    assert parse_response(listed, 6) == r
    assert parse_response(render_response_paper(r), 6) == r
    # turn 0 needs no directive
    assert parse_response("<think>t</think><tool_call>" + json.dumps(CALL) + "</tool_call>", 0).compress is None


@pytest.mark.parametrize("text,match", [
    ("<think>t</think><compress>{bad</compress><tool_call>{}</tool_call>", "compress"),
    ("<think>t</think><tool_call>" + json.dumps(CALL) + "</tool_call>", "compress"),
    ("<think>t</think><compress>{\"compress_range\": [1], \"compress_text\": \"s\"}</compress>", "tool_call"),
    ("<think>t</think><compress>{\"compress_range\": [], \"compress_text\": \"s\"}</compress><tool_call>{}</tool_call>", "compress_range"),
    ("<think>t</think><compress>{\"compress_range\": [1]}</compress><tool_call>{}</tool_call>", "compress_text"),
    ("<think>t</think><compress>{\"compress_range\": [1], \"compress_text\": \"s\"}</compress><tool_call>{\"name\": 1}</tool_call>", "tool_call"),
])
def test_parse_errors_name_the_tag(text, match):
    with pytest.raises(ResponseParseError, match=match):
        parse_response(text, 2)


def test_strict_mode_rejects_and_lenient_repairs_violations():
    ctx = _ctx_after(4, {2: 0})  # blocks [0,1], [2], [3 raw]; turn 4
    with pytest.raises(FoldError, match="end at the latest step 3"):
        ctx.fold(FoldDirective(2, 2, "s"))
    with pytest.raises(FoldError, match="inside block"):
        ctx.fold(FoldDirective(1, 3, "s"))  # would split block [0,1]
    with pytest.raises(FoldError, match="outside"):
        ctx.fold(FoldDirective(-1, 3, "s"))
    new, rec = ctx.fold(FoldDirective(1, 2, "s"), mode="lenient")
    assert rec.violations == ("end_not_latest", "start_not_on_boundary")
    assert [(b.start, b.end) for b in new.blocks] == [(0, 3)]
    with pytest.raises(FoldError, match="before appending"):
        ctx.append_step(Step("m", CALL, "r"))
    with pytest.raises(FoldError, match="turn 0"):
        FoldContext("Q?", ()).fold(FoldDirective(0, 0, "s"))


def test_deep_consolidation_over_m_blocks_removes_m_minus_1():
    ctx = _ctx_after(6, {})  # 5 compressed single blocks + raw step 5
    assert len(ctx.blocks) == 6
    new, rec = ctx.fold(FoldDirective(2, 5, "merged"))
    assert rec.kind == "deep" and rec.merged == 4
    assert len(new.blocks) == len(ctx.blocks) - (4 - 1)


def test_invariants_property_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
    def prop(choices):
        ctx = FoldContext("Q?", ())
        ctx = ctx.append_step(Step("", CALL, "r"))
        for t, u in enumerate(choices, start=1):
            starts = [b.start for b in ctx.blocks]
            k = starts[int(u * len(starts)) % len(starts)]
            m = sum(1 for s in starts if s >= k)
            before = len(ctx.blocks)
            ctx, rec = ctx.fold(FoldDirective(k, t - 1, "s"))
            assert len(ctx.blocks) == before - (m - 1)
            check_invariants(ctx.blocks, t)
            assert [b.start for b in ctx.blocks] == sorted(b.start for b in ctx.blocks)
            covered = [i for b in ctx.blocks for i in range(b.start, b.end + 1)]
            assert covered == list(range(t))
            ctx = ctx.append_step(Step("", CALL, "r"))
            assert len(ctx.blocks) <= t + 1

    prop()


def test_invariants_property_seeded_fallback():
    import random

    rng = random.Random(0)
    for _ in range(200):
        ctx = FoldContext("Q?", ()).append_step(Step("", CALL, "r"))
        for t in range(1, rng.randint(2, 30)):
            k = rng.choice([b.start for b in ctx.blocks])
            ctx, _ = ctx.fold(FoldDirective(k, t - 1, "s"))
            check_invariants(ctx.blocks, t)
            ctx = ctx.append_step(Step("", CALL, "r"))


def test_agent_loop_final_turn_suffix_and_accounting():
    def fn(messages):
        user = messages[1]["content"]
        t = user.count("**[")
        if user.endswith(FINAL_TURN_SUFFIX):
            return render_response(AgentFoldResponse("last", FoldDirective(t - 1, t - 1, "s"), None, None, "42"))
        comp = FoldDirective(t - 1, t - 1, f"c{t}") if t else None
        return render_response(AgentFoldResponse("go", comp, "m", CALL, None))

    policy = ScriptedPolicy(fn)
    run = run_agentfold(policy, "Q?", [], lambda call: "obs " * 50, max_turns=5)
    assert run.status == "answered" and run.answer == "42"
    assert len(run.turns) == 5
    suffixed = [FINAL_TURN_SUFFIX in h[1]["content"] for h in policy.history]
    assert suffixed == [False, False, False, False, True]
    assert [r.blocks for r in run.turns] == [0, 1, 2, 3, 4]
    for r in run.turns:
        assert r.prompt_tokens == r.cached_tokens + r.reprefill_tokens
        assert r.stable_prefix_tokens <= r.cached_tokens or r.turn == 0


def test_agent_loop_parse_failure_and_lenient_counts():
    bad = ScriptedPolicy(["not a response"])
    run = run_agentfold(bad, "Q?", [], lambda c: "", max_turns=3)
    assert run.status == "parse_error" and run.parse_failures == 1
    responses = [render_response(AgentFoldResponse("a", None, "m", CALL, None)),
                 render_response(AgentFoldResponse("b", FoldDirective(0, 7, "s"), "m", CALL, None)),
                 render_response(AgentFoldResponse("c", FoldDirective(1, 1, "s"), None, None, "x"))]
    run = run_agentfold(ScriptedPolicy(responses), "Q?", [], lambda c: "o", max_turns=5, mode="lenient")
    assert run.status == "answered" and run.violations["end_not_latest"] == 1
    with pytest.raises(FoldError):
        run_agentfold(ScriptedPolicy(responses), "Q?", [], lambda c: "o", max_turns=5, mode="strict")
