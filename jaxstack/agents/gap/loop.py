"""GAP's agent loop: an LLM policy writes tool calls (or a plan), the executor runs them, the loop counts.

:func:`run_episode` is the runtime every planning regime goes through. Each LLM call gets the chat so
far (system prompt, question, then the policy's earlier responses and the observations of their tool
calls) and answers with either ``<answer>...</answer>`` or calls in LLMCompiler's numbered syntax
(``2. lookup("The Silent River", "authored_by")``, ``3. lookup("$2", "born_in")``, optionally a
closing ``join()``), possibly after ``<think>`` and GAP's ``<plan>``. The loop parses the calls with
:func:`~.formats.parse_llmcompiler_plan`, runs them with :func:`~.executor.execute` under the
regime's schedule and returns one observation line per call, ``[id] output`` (failures read
``[id] Error: ...`` / ``[id] Skipped: ...``).

What is counted, not assumed: the LLM calls the loop makes (``turns``), the tool calls the executor
starts (retries included), the tool makespan of every batch (virtual clock, or real asyncio sleeps),
and the prompt / response tokens of every call. Model time is *simulated* with :class:`ModelTime`
(a stated per-call overhead plus per-token prefill and decode costs), unless the backend reports a
latency (``Completion.latency_s > 0``), which is then used as measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from jaxstack.agents.gap.executor import execute
from jaxstack.agents.gap.formats import PlanParseError, parse_llmcompiler_plan
from jaxstack.agents.gap.plan import LOCAL_TOOLS, PlanValidationError, validate
from jaxstack.agents.llm import LLMClient
from jaxstack.data.chat import render_chat

#: regime -> executor schedule of each batch of calls
SCHEDULES = {"react": "sequential", "gap": "level", "graph_level": "level", "graph_eager": "eager"}

SYSTEM_PROMPTS = {
    "react": "Answer the question with tools. Call exactly one tool per response, as 'k. tool(args)', "
             "read its observation, and finish with <answer>...</answer>.",
    "gap": "Answer the question with tools. First write a <plan> of tasks with their dependencies. In each "
           "response call every task whose dependencies are resolved, one 'k. tool(args)' per line (they run "
           "in parallel), and finish with <answer>...</answer>.",
    "graph_level": "Answer the question with tools. Write the whole plan as 'k. tool(args)' lines, using $k for "
                   "the output of task k, ending with join(). Re-plan the tasks that failed; finish with "
                   "<answer>...</answer>.",
}
SYSTEM_PROMPTS["graph_eager"] = SYSTEM_PROMPTS["graph_level"]

_OBS_LINE = re.compile(r"^\[(\w+)\] (.*)$")


@dataclass(frozen=True)
class ModelTime:
    """Simulated model latency of one LLM call, in seconds (an assumption, stated and labelled):
    ``per_call_s + per_prompt_token_s * prompt_tokens + per_output_token_s * response_tokens``."""

    per_call_s: float = 0.5
    per_prompt_token_s: float = 0.0002
    per_output_token_s: float = 0.02

    def __post_init__(self):
        for name in ("per_call_s", "per_prompt_token_s", "per_output_token_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelTime.{name} must be >= 0, got {getattr(self, name)}")

    def seconds(self, prompt_tokens: int, response_tokens: int) -> float:
        return self.per_call_s + self.per_prompt_token_s * prompt_tokens + self.per_output_token_s * response_tokens


@dataclass(frozen=True)
class TurnStats:
    """One LLM call: tokens, simulated (or reported) model seconds, and the tool batch it issued."""

    prompt_tokens: int
    response_tokens: int
    model_s: float
    tool_calls: int = 0
    tool_makespan: float = 0.0
    peak_concurrency: int = 0
    failed_calls: int = 0


@dataclass
class Episode:
    """The result of :func:`run_episode`. ``answer`` is None when the turn budget ran out."""

    answer: str | None
    turns: list[TurnStats] = field(default_factory=list)
    status: str = "max_turns"  # "answered" or "max_turns"

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    @property
    def tool_calls(self) -> int:
        return sum(t.tool_calls for t in self.turns)

    @property
    def tool_time(self) -> float:
        return sum(t.tool_makespan for t in self.turns)

    @property
    def model_time(self) -> float:
        return sum(t.model_s for t in self.turns)

    @property
    def time(self) -> float:
        """Tool makespans plus model time, turn after turn (a turn waits for its tools)."""
        return self.tool_time + self.model_time

    @property
    def response_tokens(self) -> int:
        return sum(t.response_tokens for t in self.turns)

    @property
    def peak_concurrency(self) -> int:
        return max((t.peak_concurrency for t in self.turns), default=0)


def render_observations(report, graph) -> str:
    """The observation message of one executed batch: ``[id] output`` per tool node of ``graph``
    (local reasoning nodes such as ``join()`` are not observed)."""
    lines = [f"[{n.id}] " + report.results[n.id].output.replace("\n", " ")
             for n in graph.nodes if n.tool not in LOCAL_TOOLS]
    return "<observation>\n" + "\n".join(lines) + "\n</observation>"


def parse_observations(text: str) -> dict[str, tuple[bool, str]]:
    """``node id -> (ok, output)`` from an observation message (``{}`` when there is none)."""
    m = re.search(r"<observation>\n(.*?)\n?</observation>", text, re.S)
    if not m:
        return {}
    out = {}
    for line in m.group(1).splitlines():
        hit = _OBS_LINE.match(line)
        if hit:
            body = hit.group(2)
            out[hit.group(1)] = (not body.startswith(("Error:", "Skipped:")), body)
    return out


def _strip_reasoning(text: str) -> str:
    return re.sub(r"<(think|plan)>.*?</\1>", "", text, flags=re.S).strip()


def run_episode(policy: LLMClient, question: str, tools: Mapping[str, Callable], *, regime: str,
                latency: Callable | None = None, model_time: ModelTime = ModelTime(),
                count: Callable[[str], int] | None = None, max_turns: int = 30, time_mode: str = "virtual",
                time_scale: float = 1.0) -> Episode:
    """Runs one question: LLM call, parse, execute the calls, observe; until ``<answer>`` or ``max_turns``.

    Args:
        policy: any :class:`~jaxstack.agents.llm.LLMClient`.
        question: the user question.
        tools: name -> callable (real tools and the local reasoning tools).
        regime: a key of :data:`SCHEDULES` (the executor schedule of every batch; the system prompt).
        latency: ``(tool, args) -> seconds`` for the executor (``None``: 0).
        model_time: the simulated model latency, used when the backend reports none.
        count: token counter (default: whitespace split).
        max_turns: LLM-call budget.
        time_mode, time_scale: the executor's ``mode`` ("virtual" or "real") and real-time scale;
            real makespans are reported in latency seconds (divided by ``time_scale``).
    """
    if regime not in SCHEDULES:
        raise ValueError(f"regime must be one of {sorted(SCHEDULES)}, got {regime!r}")
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    count = count or (lambda s: len(s.split()))
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[regime]}, {"role": "user", "content": question}]
    episode = Episode(None)
    for _ in range(max_turns):
        completion = policy.complete(messages, stop=["</answer>", "<END_OF_PLAN>"])
        text = completion.text
        prompt_tokens = completion.prompt_tokens or count(render_chat(messages, add_generation_prompt=True))
        response_tokens = completion.completion_tokens or count(text)
        model_s = completion.latency_s or model_time.seconds(prompt_tokens, response_tokens)
        answer = re.findall(r"<answer>(.*?)</answer>", text, re.S)
        if answer:
            episode.turns.append(TurnStats(prompt_tokens, response_tokens, model_s))
            episode.answer, episode.status = answer[-1].strip(), "answered"
            break
        try:
            graph = validate(parse_llmcompiler_plan(_strip_reasoning(text), tools), tools)
        except (PlanParseError, PlanValidationError) as error:
            episode.turns.append(TurnStats(prompt_tokens, response_tokens, model_s))
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"<observation>\nError: plan rejected: {error}\n</observation>"}]
            continue
        report = execute(graph, tools, schedule=SCHEDULES[regime], latency=latency, mode=time_mode,
                         time_scale=time_scale)
        makespan = report.makespan / time_scale if time_mode == "real" else report.makespan
        failed = sum(1 for n in graph.nodes if n.tool not in LOCAL_TOOLS and report.results[n.id].status != "ok")
        episode.turns.append(TurnStats(prompt_tokens, response_tokens, model_s, report.tool_calls, makespan,
                                       report.peak_concurrency, failed))
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": render_observations(report, graph)}]
    return episode

