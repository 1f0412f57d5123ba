"""AgentFold's folding context as a pure data structure, its prompt format and the agent loop.

Context at turn ``t`` (0-based, as in the public code): the question, the tool list, and a
block list that is an ordered, contiguous, disjoint cover of steps ``[0, t-1]``. Every block but
the newest is a *state summary* (``[Compressed Step i]`` or ``[Compressed Step i to j]``); the
newest is the full *latest interaction* ``[Step t-1]`` (motivation, tool call, tool response).

Each response (turn ``t > 0``) carries a fold directive ``compress_range = [k, t-1]`` with a
``compress_text``: every block starting in ``[k, t-1]`` is replaced by one summary block
``[k, t-1]`` (granular condensation when ``k = t-1``, deep consolidation when ``k < t-1``), then
the new step ``t`` is appended. The public code leaves three invariants unchecked; here they are
enforced:

* the fold ends at ``t-1`` (``end_not_latest``),
* the fold starts on a block boundary (``start_not_on_boundary``), so a block - and with it a
  tool call and its result, which always live in one block - is never split,
* ``0 <= k <= t-1`` (``start_out_of_range``).

``mode="strict"`` raises :class:`FoldError` on a violation; ``mode="lenient"`` repairs it (end
-> ``t-1``, start snapped to the start of the block containing it, clamped into range) and
counts it in :attr:`FoldRecord.violations`.

Wire format (public ``WebAgent/AgentFold/infer.py`` of Alibaba-NLP/DeepResearch): the prompt
is ``[system, user]`` rebuilt every turn; the user message is ``### Question\\n{q}\\n\\n###
Previous Steps\\n{steps}`` with ``EMPTY`` at turn 0 and a final-turn suffix; the response is
``<think>..</think>`` ``<compress>{json}</compress>`` ``<motivation>..</motivation>`` then
``<tool_call>{json}</tool_call>`` or ``<answer>..</answer>``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jaxstack.agents.llm import LLMClient
from jaxstack.data.chat import CHATML, render_chat

__all__ = [
    "SYSTEM_PROMPT",
    "FINAL_TURN_SUFFIX",
    "Block",
    "Step",
    "FoldDirective",
    "AgentFoldResponse",
    "FoldError",
    "ResponseParseError",
    "FoldRecord",
    "FoldContext",
    "check_invariants",
    "render_step_content",
    "render_previous_steps",
    "render_response",
    "render_response_paper",
    "parse_response",
    "TurnRecord",
    "AgentRun",
    "run_agentfold",
    "segment_tokens",
    "common_prefix_tokens",
]

SYSTEM_PROMPT = (
    "You are an intelligent agent that can simultaneously invoke appropriate tools and dynamically "
    "manage the context (i.e., previous steps) throughout answering the user question. Unless the "
    "previous steps are EMPTY, you should generate four blocks: think, compress, motivation, action "
    "(either tool call or final answer).\n\nAvailable tools:\n{tools}"
)
FINAL_TURN_SUFFIX = "\n\nNow, provide your final answer without any other tool call."


class FoldError(ValueError):
    """A fold directive violates an invariant (strict mode) or is unusable."""


class ResponseParseError(ValueError):
    """A model response does not follow the AgentFold format; the message names the tag."""


@dataclass(frozen=True)
class Block:
    """Steps ``[start, end]`` (inclusive) and their text. ``raw`` marks a full, uncompressed step."""

    start: int
    end: int
    content: str
    raw: bool = False


@dataclass(frozen=True)
class Step:
    """One completed interaction: motivation (the paper's explanation), tool call, tool response."""

    motivation: str
    tool_call: dict
    tool_response: str


@dataclass(frozen=True)
class FoldDirective:
    """``compress_range = [start, end]`` with ``compress_text = summary``."""

    start: int
    end: int
    summary: str


@dataclass(frozen=True)
class AgentFoldResponse:
    """A parsed response. Exactly one of ``tool_call`` / ``answer`` is set; ``compress`` is
    required for tool-call turns after turn 0."""

    think: str
    compress: FoldDirective | None = None
    motivation: str | None = None
    tool_call: dict | None = field(default=None, hash=False)
    answer: str | None = None


@dataclass(frozen=True)
class FoldRecord:
    """What one fold did: ``kind`` "granular" or "deep", ``merged`` = blocks replaced, and the
    invariant ``violations`` found (repaired in lenient mode)."""

    kind: str
    start: int
    end: int
    merged: int
    violations: tuple[str, ...] = ()


def check_invariants(blocks: Sequence[Block], turn: int) -> None:
    """Raises :class:`FoldError` unless ``blocks`` are sorted, contiguous, disjoint and cover
    ``[0, turn-1]`` (empty at turn 0), with only the newest block possibly raw."""
    if turn == 0:
        if blocks:
            raise FoldError(f"turn 0 must have no blocks, got {len(blocks)}")
        return
    if not blocks or blocks[0].start != 0:
        raise FoldError("blocks must start at step 0")
    for a, b in zip(blocks, blocks[1:]):
        if b.start != a.end + 1:
            raise FoldError(f"blocks [{a.start},{a.end}] and [{b.start},{b.end}] are not contiguous/disjoint")
    for b in blocks:
        if b.end < b.start:
            raise FoldError(f"block [{b.start},{b.end}] has end < start")
    if blocks[-1].end != turn - 1:
        raise FoldError(f"blocks must cover up to step {turn - 1}, last block ends at {blocks[-1].end}")
    if any(b.raw for b in blocks[:-1]):
        raise FoldError("only the newest block may be a raw (uncompressed) step")


def render_step_content(step: Step) -> str:
    """Public-code step text: ``**Motivation:**`` (omitted if empty), ``**Tool call:**`` (JSON),
    ``**Tool response:**``."""
    call = json.dumps(step.tool_call, ensure_ascii=False)
    head = f"**Motivation:** {step.motivation}\n" if step.motivation else ""
    return f"{head}**Tool call:** {call}\n**Tool response:** {step.tool_response}"


def _block_text(block: Block, newest_start: int) -> str:
    if block.start == block.end:
        header = f"[Step {block.start}]" if block.start == newest_start else f"[Compressed Step {block.start}]"
    else:
        header = f"[Compressed Step {block.start} to {block.end}]"
    return f"**{header}**\n{block.content}\n\n"


def render_previous_steps(blocks: Sequence[Block]) -> str:
    """The ``### Previous Steps`` body, byte-compatible with the public ``format_previous_steps``;
    ``EMPTY`` when there are no blocks."""
    if not blocks:
        return "EMPTY"
    newest = max(b.start for b in blocks)
    return "".join(_block_text(b, newest) for b in sorted(blocks, key=lambda b: b.start))


@dataclass(frozen=True)
class FoldContext:
    """The AgentFold context ``C_t = (Q, T, S_{t-2}, I_{t-1})`` as an immutable value.

    Attributes:
        question: the user question.
        tools: JSON tool specs rendered into the system prompt.
        blocks: the block list (summaries, then the latest raw step).
        turn: the next turn index ``t``; ``blocks`` cover ``[0, t-1]``.
    """

    question: str
    tools: tuple = ()
    blocks: tuple[Block, ...] = ()
    turn: int = 0

    def __post_init__(self):
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("question must be a non-empty string")
        check_invariants(self.blocks, self.turn)

    # ------------------------------------------------------------------ state transitions
    def fold(self, directive: FoldDirective, mode: str = "strict") -> tuple[FoldContext, FoldRecord]:
        """Applies a fold directive at turn ``t = self.turn`` (requires ``t > 0``)."""
        if mode not in ("strict", "lenient"):
            raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
        t = self.turn
        if t == 0:
            raise FoldError("no fold at turn 0: there are no previous steps")
        if not isinstance(directive, FoldDirective):
            raise TypeError(f"directive must be a FoldDirective, got {type(directive).__name__}")
        if not isinstance(directive.summary, str):
            raise FoldError("compress_text must be a string")
        k, end = directive.start, directive.end
        violations = []
        if end != t - 1:
            violations.append("end_not_latest")
            if mode == "strict":
                raise FoldError(f"compress_range must end at the latest step {t - 1}, got end={end}")
            end = t - 1
        if not 0 <= k <= t - 1:
            violations.append("start_out_of_range")
            if mode == "strict":
                raise FoldError(f"compress_range start {k} outside [0, {t - 1}]")
            k = min(max(k, 0), t - 1)
        starts = [b.start for b in self.blocks]
        if k not in starts:
            violations.append("start_not_on_boundary")
            containing = next(b for b in self.blocks if b.start <= k <= b.end)
            if mode == "strict":
                raise FoldError(
                    f"compress_range start {k} is inside block [{containing.start},{containing.end}]; "
                    f"it must be one of the block starts {starts}")
            k = containing.start
        kept = tuple(b for b in self.blocks if b.start < k)
        merged = len(self.blocks) - len(kept)
        new = FoldContext(self.question, self.tools, kept + (Block(k, end, directive.summary),), t)
        kind = "granular" if k == t - 1 else "deep"
        return new, FoldRecord(kind, k, end, merged, tuple(violations))

    def append_step(self, step: Step) -> FoldContext:
        """Appends step ``t`` (the new latest interaction) and advances to turn ``t + 1``.

        Every earlier block must already be compressed (i.e. a fold happened this turn), except
        at turn 0."""
        if self.blocks and self.blocks[-1].raw:
            raise FoldError(f"turn {self.turn}: fold the latest step {self.turn - 1} before appending a new one")
        block = Block(self.turn, self.turn, render_step_content(step), raw=True)
        return FoldContext(self.question, self.tools, self.blocks + (block,), self.turn + 1)

    # ------------------------------------------------------------------ rendering
    @property
    def summaries(self) -> tuple[Block, ...]:
        """The multi-scale state summaries (all blocks but the latest raw step)."""
        return self.blocks[:-1] if self.blocks and self.blocks[-1].raw else self.blocks

    @property
    def latest(self) -> Block | None:
        return self.blocks[-1] if self.blocks and self.blocks[-1].raw else None

    def system_prompt(self) -> str:
        return SYSTEM_PROMPT.format(tools=json.dumps(list(self.tools), ensure_ascii=False))

    def user_message(self, final_turn: bool = False) -> str:
        msg = f"### Question\n{self.question}\n\n### Previous Steps\n{render_previous_steps(self.blocks)}"
        return msg + (FINAL_TURN_SUFFIX if final_turn else "")

    def messages(self, final_turn: bool = False) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt()},
                {"role": "user", "content": self.user_message(final_turn)}]

    def prompt_segments(self, final_turn: bool = False) -> list[str]:
        """The chat-templated prompt split on whitespace/special-token boundaries:
        ``"".join(segments) == self.render(final_turn)``. Segment 0 is the stable
        prefix (system prompt + question)."""
        head = (render_chat([{"role": "system", "content": self.system_prompt()}]) + CHATML.header("user")
                + f"### Question\n{self.question}\n\n### Previous Steps\n")
        if not self.blocks:
            body = ["EMPTY"]
        else:
            newest = max(b.start for b in self.blocks)
            body = [_block_text(b, newest) for b in self.blocks]
        tail = (FINAL_TURN_SUFFIX if final_turn else "") + CHATML.footer() + CHATML.header("assistant")
        return [head, *body, tail]

    def render(self, final_turn: bool = False) -> str:
        return render_chat(self.messages(final_turn), add_generation_prompt=True)

    def render_paper(self) -> str:
        """The paper's notation ``C_t = (Q, T, S_{t-2}, I_{t-1})``."""
        lines = [f"Question (Q): {self.question}", f"Tools (T): {json.dumps(list(self.tools), ensure_ascii=False)}",
                 "Multi-Scale State Summaries (S):"]
        lines += [f"  s_{{{b.start},{b.end}}}: {b.content}" for b in self.summaries] or ["  (none)"]
        lines.append("Latest Interaction (I):")
        lines.append(f"  I_{{{self.latest.start}}}: {self.latest.content}" if self.latest else "  (none)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- responses


def render_response(resp: AgentFoldResponse) -> str:
    """Public-code wire format of a response (inverse of :func:`parse_response`)."""
    parts = [f"<think>{resp.think}</think>"]
    if resp.compress is not None:
        c = {"compress_range": [resp.compress.start, resp.compress.end], "compress_text": resp.compress.summary}
        parts.append(f"<compress>{json.dumps(c, ensure_ascii=False)}</compress>")
    if resp.motivation is not None:
        parts.append(f"<motivation>{resp.motivation}</motivation>")
    if resp.answer is not None:
        parts.append(f"<answer>{resp.answer}</answer>")
    else:
        parts.append(f"<tool_call>{json.dumps(resp.tool_call, ensure_ascii=False)}</tool_call>")
    return "\n".join(parts)


def render_response_paper(resp: AgentFoldResponse) -> str:
    """The paper's notation: ``{"range": [k, t-1], "summary": ...}`` and an explanation."""
    parts = [f"<think>{resp.think}</think>"]
    if resp.compress is not None:
        parts.append("<compress>" + json.dumps({"range": [resp.compress.start, resp.compress.end],
                                                "summary": resp.compress.summary}, ensure_ascii=False) + "</compress>")
    if resp.motivation is not None:
        parts.append(f"<motivation>{resp.motivation}</motivation>")
    parts.append(f"<answer>{resp.answer}</answer>" if resp.answer is not None
                 else f"<tool_call>{json.dumps(resp.tool_call, ensure_ascii=False)}</tool_call>")
    return "\n".join(parts)


def _tag(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return m.group(1) if m else None


def _parse_directive(raw: str) -> FoldDirective:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ResponseParseError(f"<compress> is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ResponseParseError("<compress> must hold a JSON object")
    if "compress_range" in obj:
        rng, text = obj["compress_range"], obj.get("compress_text")
        key = "compress_text"
    elif "range" in obj:
        rng, text = obj["range"], obj.get("summary")
        key = "summary"
    else:
        raise ResponseParseError("<compress> JSON needs 'compress_range' (or the paper's 'range')")
    if not isinstance(rng, list) or not rng or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng):
        raise ResponseParseError(f"compress_range must be a non-empty list of integers, got {rng!r}")
    if not isinstance(text, str):
        raise ResponseParseError(f"<compress> JSON needs a string {key!r}")
    if rng[0] > rng[-1]:
        raise ResponseParseError(f"compress_range must be ascending, got {rng!r}")
    return FoldDirective(rng[0], rng[-1], text)


def parse_response(text: str, turn: int) -> AgentFoldResponse:
    """Parses a response as the public code does, with clear errors.

    * ``<think>`` content is taken up to the last ``</think>``; the action part follows it.
    * ``<answer>`` in the action part -> final answer (no fold is applied on that turn).
    * Otherwise ``<tool_call>`` must hold JSON ``{"name": str, "arguments": object}``, and for
      ``turn > 0`` ``<compress>`` must hold ``{"compress_range": [k, ..., t-1], "compress_text"}``
      (only the first and last range entries are used) or the paper's ``{"range", "summary"}``.
    * ``<motivation>`` is optional.
    """
    if not isinstance(text, str):
        raise ResponseParseError(f"response must be a string, got {type(text).__name__}")
    if "</think>" in text:
        idx = text.rfind("</think>")
        head, action = text[:idx], text[idx + len("</think>"):]
        think = head.split("<think>", 1)[1] if "<think>" in head else head
    else:
        think, action = "", text
    motivation = _tag(action, "motivation")
    answer = _tag(action, "answer")
    compress_raw = _tag(action, "compress")
    compress = _parse_directive(compress_raw) if compress_raw is not None else None
    if answer is not None:
        return AgentFoldResponse(think, compress, motivation, None, answer)
    raw_call = _tag(action, "tool_call")
    if raw_call is None:
        raise ResponseParseError("response has neither <tool_call> nor <answer>")
    try:
        call = json.loads(raw_call)
    except json.JSONDecodeError as e:
        raise ResponseParseError(f"<tool_call> is not valid JSON: {e}") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments"), dict):
        raise ResponseParseError('<tool_call> must be {"name": str, "arguments": object}')
    if turn > 0 and compress is None:
        raise ResponseParseError(f"turn {turn}: a tool-call response needs a <compress> directive")
    return AgentFoldResponse(think, compress, motivation, call, None)


# --------------------------------------------------------------------------- accounting + loop


def segment_tokens(segments: Sequence[str], count: Callable[[str], int]) -> list[int]:
    return [count(s) for s in segments]


def common_prefix_tokens(prev: Sequence[str] | None, cur: Sequence[str], cur_counts: Sequence[int]) -> int:
    """Tokens of the longest run of identical leading segments (a lower bound on what a prefix
    cache can reuse: partial-segment matches are not counted)."""
    if not prev:
        return 0
    n = 0
    for i, (a, b) in enumerate(zip(prev, cur)):
        if a != b:
            break
        n += cur_counts[i]
    return n


@dataclass(frozen=True)
class TurnRecord:
    """Per-turn accounting: prompt tokens, block count, stable-prefix tokens (system + question,
    reusable every turn), cached tokens (shared leading segments with the previous prompt) and
    re-prefilled tokens (``prompt_tokens - cached_tokens``)."""

    turn: int
    prompt_tokens: int
    blocks: int
    stable_prefix_tokens: int
    cached_tokens: int
    reprefill_tokens: int
    fold: FoldRecord | None = None
    response: str = ""


@dataclass
class AgentRun:
    """The result of :func:`run_agentfold`."""

    answer: str | None
    turns: list[TurnRecord]
    context: FoldContext
    status: str  # "answered", "no_answer" (final turn used a tool), "max_turns", "parse_error"
    violations: Counter = field(default_factory=Counter)
    parse_failures: int = 0
    steps: list[Step] = field(default_factory=list)
    responses: list[AgentFoldResponse] = field(default_factory=list)
    contexts: list[FoldContext] = field(default_factory=list)


def run_agentfold(policy: LLMClient, question: str, tools: Sequence[dict], call_tool: Callable[[dict], str], *,
                  max_turns: int = 100, mode: str = "strict", count: Callable[[str], int] | None = None,
                  max_parse_retries: int = 0, keep_contexts: bool = False) -> AgentRun:
    """The AgentFold loop: render ``[system, user]``, call ``policy``, parse, fold, run the tool.

    Args:
        policy: any :class:`~jaxstack.agents.llm.LLMClient`.
        question: the user question.
        tools: JSON tool specs for the system prompt.
        call_tool: executes ``{"name", "arguments"}`` and returns the tool response text.
        max_turns: the last turn (``max_turns - 1``) gets :data:`FINAL_TURN_SUFFIX`.
        mode: fold mode, ``"strict"`` or ``"lenient"`` (see :meth:`FoldContext.fold`).
        count: token counter for the per-turn accounting (default: whitespace split).
        max_parse_retries: re-samples after a malformed response before giving up.
        keep_contexts: also return the context of every turn (for SFT export).
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    count = count or (lambda s: len(s.split()))
    ctx = FoldContext(question, tuple(tools))
    run = AgentRun(None, [], ctx, "max_turns")
    prev_segments: list[str] | None = None
    for t in range(max_turns):
        final = t == max_turns - 1
        segments = ctx.prompt_segments(final)
        counts = segment_tokens(segments, count)
        cached = common_prefix_tokens(prev_segments, segments, counts)
        prev_segments = segments
        if keep_contexts:
            run.contexts.append(ctx)
        resp = None
        for _attempt in range(max_parse_retries + 1):
            completion = policy.complete(ctx.messages(final), stop=["</tool_call>", "</answer>"])
            try:
                resp = parse_response(completion.text, t)
                break
            except ResponseParseError:
                run.parse_failures += 1
        record = dict(turn=t, prompt_tokens=sum(counts), blocks=len(ctx.blocks), stable_prefix_tokens=counts[0],
                      cached_tokens=cached, reprefill_tokens=sum(counts) - cached)
        if resp is None:
            run.turns.append(TurnRecord(**record))
            run.status = "parse_error"
            break
        run.responses.append(resp)
        if resp.answer is not None:
            run.turns.append(TurnRecord(**record, response=completion.text))
            run.answer, run.status = resp.answer, "answered"
            break
        fold_rec = None
        if t > 0:
            ctx, fold_rec = ctx.fold(resp.compress, mode)
            run.violations.update(fold_rec.violations)
        run.turns.append(TurnRecord(**record, fold=fold_rec, response=completion.text))
        if final:
            run.status = "no_answer"
            break
        obs = call_tool(resp.tool_call)
        step = Step(resp.motivation or "", resp.tool_call, obs)
        run.steps.append(step)
        ctx = ctx.append_step(step)
    run.context = ctx
    return run

