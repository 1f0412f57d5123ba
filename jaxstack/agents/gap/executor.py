"""GAP plan execution: a parallel executor over a :class:`~.plan.PlanGraph` and GAP's turn runtime.

:func:`execute` runs a graph under three schedules:

* ``"sequential"``: one node at a time (ReAct-like);
* ``"level"``: all nodes of a topological level, then a barrier (the GAP paper's Algorithm 1);
* ``"eager"``: each node starts as soon as its inputs are ready (LLMCompiler's Task Fetching Unit);

with ``max_concurrency``, per-node timeouts, and failure propagation (a failed node's
descendants are skipped with an error observation, independent branches finish). Time is either
*virtual* (a discrete-event simulation, exact makespans: sequential = sum, level = sum of level
maxima, eager = critical path for unbounded concurrency) or *real* (asyncio tasks sleeping
``latency * time_scale`` seconds).

:class:`GapCompatSession` is GAP's released runtime: one model turn = one batch of ``|``-split calls.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jaxstack.agents.gap.formats import parse_batched_calls, stop_strings
from jaxstack.agents.gap.plan import (LOCAL_TOOLS, PlanGraph, PlanNode, natural_key, substitute,
                                      topo_order, topological_levels, validate)

DUPLICATE_QUERY_RESPONSE = (
    "I have performed a web search with the same query before. To find new information, "
    "I should try a more diverse or specific search query."
)


@dataclass
class NodeResult:
    """Outcome of one node: ``status`` is "ok", "failed" or "skipped"; ``output`` is the tool
    output, or the error observation for failed / skipped nodes."""

    id: str
    status: str
    output: str
    start: float
    end: float
    args: Any = None
    error: str | None = None


@dataclass
class ExecutionReport:
    """Result of :func:`execute`: per-node results, ``makespan`` (seconds, virtual or real),
    ``peak_concurrency``, ``tool_calls`` (started non-local nodes), the schedule and mode."""

    results: dict[str, NodeResult]
    makespan: float
    peak_concurrency: int
    tool_calls: int
    schedule: str
    mode: str

    @property
    def outputs(self) -> dict[str, str]:
        return {k: r.output for k, r in self.results.items() if r.status == "ok"}

    @property
    def failed(self) -> list[str]:
        return [k for k, r in self.results.items() if r.status != "ok"]

    def final(self, graph: PlanGraph) -> NodeResult:
        """Result of the last node in topological order (the plan's answer / join node)."""
        return self.results[topo_order(graph)[-1]]


_SCHEDULES = ("sequential", "level", "eager")


class _Plan:
    """Shared scheduling state of the virtual and real executors."""

    def __init__(self, graph, schedule, max_concurrency):
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        validate(graph)
        self.graph, self.schedule = graph, schedule
        self.cap = max_concurrency if schedule != "sequential" else 1
        self.order = topo_order(graph)
        self.levels = {nid: lv for lv, ids in enumerate(topological_levels(graph)) for nid in ids}
        self.pending = list(self.order)
        self.running: set[str] = set()
        self.results: dict[str, NodeResult] = {}

    def skip_descendants(self, now: float) -> None:
        changed = True
        while changed:
            changed = False
            for nid in list(self.pending):
                n = self.graph.node(nid)
                bad = [d for d in n.depends_on if d in self.results and self.results[d].status != "ok"]
                if bad:
                    d = bad[0]
                    msg = f"Skipped: dependency {d} {self.results[d].status}: {self.results[d].error}"
                    self.results[nid] = NodeResult(nid, "skipped", msg, now, now, None, msg)
                    self.pending.remove(nid)
                    changed = True

    def startable(self) -> list[str]:
        if self.cap is not None and len(self.running) >= self.cap:
            return []
        ready = [nid for nid in self.pending
                 if all(d in self.results and self.results[d].status == "ok" for d in self.graph.node(nid).depends_on)]
        if self.schedule == "level":
            unfinished = [self.levels[i] for i in self.pending] + [self.levels[i] for i in self.running]
            current = min(unfinished) if unfinished else 0
            ready = [i for i in ready if self.levels[i] == current]
        elif self.schedule == "sequential" and self.running:
            return []
        room = len(ready) if self.cap is None else self.cap - len(self.running)
        return ready[:room]

    def outputs(self) -> dict[str, str]:
        return {k: r.output for k, r in self.results.items() if r.status == "ok"}

    def start(self, nid: str) -> tuple[PlanNode, dict]:
        """Move ``nid`` from pending to running; returns the node and its arguments with the
        placeholders of finished dependencies substituted."""
        node = self.graph.node(nid)
        self.pending.remove(nid)
        self.running.add(nid)
        return node, substitute(node.args, self.outputs())


def _call_tool(tools, node: PlanNode, args):
    if node.tool not in tools:
        raise KeyError(f"node {node.id!r}: no implementation for tool {node.tool!r}")
    fn = tools[node.tool]
    if node.tool == "join":
        return fn(**args) if args else fn()
    return fn(**args) if isinstance(args, dict) else fn(args)


def _default_tools(tools):
    t = dict(tools)
    t.setdefault("join", lambda **kw: "")
    return t


def execute(graph: PlanGraph, tools: Mapping[str, Callable], *, schedule: str = "eager",
            max_concurrency: int | None = None, latency: Callable[[str, Any], float] | None = None,
            timeout: float | None = None, mode: str = "virtual", time_scale: float = 1.0) -> ExecutionReport:
    """Executes ``graph`` with ``tools`` (name -> callable taking the node's keyword args).

    Args:
        schedule: ``"sequential"``, ``"level"`` (barrier between topological levels) or
            ``"eager"`` (start each node when its parents are done).
        max_concurrency: cap on simultaneously running nodes (``None`` = unbounded).
        latency: ``(tool, substituted_args) -> seconds``; ``None`` means 0 for every call.
        timeout: per-node limit in (unscaled) seconds; a node over it fails with a timeout.
        mode: ``"virtual"`` (discrete-event simulation on a virtual clock, exact and instant)
            or ``"real"`` (asyncio, sleeping ``latency * time_scale`` seconds per call).
        time_scale: real seconds per latency second in real mode.

    Placeholders in a node's args are substituted with its parents' outputs before the call.
    A raising or timed-out node is ``failed``; its descendants are ``skipped`` with an error
    observation; independent branches run to completion.
    """
    if mode == "virtual":
        return _execute_virtual(graph, tools, schedule, max_concurrency, latency, timeout)
    if mode == "real":
        return asyncio.run(execute_async(graph, tools, schedule=schedule, max_concurrency=max_concurrency,
                                         latency=latency, timeout=timeout, time_scale=time_scale))
    raise ValueError(f"mode must be 'virtual' or 'real', got {mode!r}")


def _execute_virtual(graph, tools, schedule, max_concurrency, latency, timeout) -> ExecutionReport:
    plan = _Plan(graph, schedule, max_concurrency)
    tools = _default_tools(tools)
    now, seq, peak, calls = 0.0, 0, 0, 0
    events: list[tuple[float, int, str]] = []
    staged: dict[str, NodeResult] = {}
    while plan.pending or plan.running:
        plan.skip_descendants(now)
        for nid in plan.startable():
            node, args = plan.start(nid)
            calls += node.tool not in LOCAL_TOOLS
            lat = float(latency(node.tool, args)) if latency is not None else 0.0
            if lat < 0:
                raise ValueError(f"latency for node {nid!r} is negative: {lat}")
            try:
                out, status, err = str(_call_tool(tools, node, args)), "ok", None
            except Exception as e:  # noqa: BLE001 - tool failures become observations
                out, status, err = f"Error: {type(e).__name__}: {e}", "failed", f"{type(e).__name__}: {e}"
            if timeout is not None and lat > timeout:
                lat, status, err = timeout, "failed", f"timed out after {timeout} s"
                out = f"Error: {err}"
            staged[nid] = NodeResult(nid, status, out, now, now + lat, args, err)
            heapq.heappush(events, (now + lat, seq, nid))
            seq += 1
        peak = max(peak, len(plan.running))
        if not events:
            if plan.pending:  # pragma: no cover - validate() rules this out
                raise RuntimeError(f"executor stalled with pending nodes {plan.pending}")
            break
        t, _, nid = heapq.heappop(events)
        now = t
        plan.running.discard(nid)
        plan.results[nid] = staged.pop(nid)
    plan.skip_descendants(now)
    makespan = max((r.end for r in plan.results.values()), default=0.0)
    return ExecutionReport(plan.results, makespan, peak, calls, schedule, "virtual")


async def execute_async(graph: PlanGraph, tools: Mapping[str, Callable], *, schedule: str = "eager",
                        max_concurrency: int | None = None, latency: Callable[[str, Any], float] | None = None,
                        timeout: float | None = None, time_scale: float = 1.0) -> ExecutionReport:
    """Real-time asyncio executor (see :func:`execute`). Tool callables may be plain functions
    or coroutine functions; each node sleeps ``latency * time_scale`` real seconds first."""
    plan = _Plan(graph, schedule, max_concurrency)
    tools = _default_tools(tools)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    peak, calls = 0, 0
    tasks: dict[asyncio.Task, str] = {}

    async def run_node(node: PlanNode, args):
        lat = float(latency(node.tool, args)) if latency is not None else 0.0
        if lat > 0:
            await asyncio.sleep(lat * time_scale)
        out = _call_tool(tools, node, args)
        if inspect.isawaitable(out):
            out = await out
        return str(out)

    while plan.pending or plan.running:
        now = loop.time() - t0
        plan.skip_descendants(now)
        for nid in plan.startable():
            node, args = plan.start(nid)
            calls += node.tool not in LOCAL_TOOLS
            coro = run_node(node, args)
            if timeout is not None:
                coro = asyncio.wait_for(coro, timeout * time_scale)
            task = asyncio.ensure_future(coro)
            task.jaxstack_meta = (nid, loop.time() - t0, args)  # type: ignore[attr-defined]
            tasks[task] = nid
        peak = max(peak, len(plan.running))
        if not tasks:
            break
        done, _ = await asyncio.wait(list(tasks), return_when=asyncio.FIRST_COMPLETED)
        end = loop.time() - t0
        for task in sorted(done, key=lambda t: natural_key(tasks[t])):
            nid, start, args = task.jaxstack_meta  # type: ignore[attr-defined]
            del tasks[task]
            plan.running.discard(nid)
            exc = task.exception()
            if exc is None:
                plan.results[nid] = NodeResult(nid, "ok", task.result(), start, end, args)
            elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                err = f"timed out after {timeout} s"
                plan.results[nid] = NodeResult(nid, "failed", f"Error: {err}", start, end, args, err)
            else:
                err = f"{type(exc).__name__}: {exc}"
                plan.results[nid] = NodeResult(nid, "failed", f"Error: {err}", start, end, args, err)
    plan.skip_descendants(loop.time() - t0)
    makespan = loop.time() - t0
    return ExecutionReport(plan.results, makespan, peak, calls, schedule, "real")


# --------------------------------------------------------------------------- GAP-compat turns


class GapCompatSession:
    """GAP's released runtime: one model turn = one batch of ``|``-split tool calls run
    concurrently; a repeated query is not executed and gets a canned response.

    Args:
        tools: name -> callable taking one query string (sync or async).
        latency: optional ``(tool, query) -> seconds`` (real sleeps ``latency * time_scale``).
    """

    def __init__(self, tools: Mapping[str, Callable[[str], Any]], latency=None, time_scale: float = 1.0):
        self.tools = dict(tools)
        self.latency, self.time_scale = latency, time_scale
        self.seen: set[tuple[str, str]] = set()
        self.turns = 0
        self.tool_calls = 0

    def stop(self) -> list[str]:
        return stop_strings(self.tools)

    async def _one(self, tool, query):
        if self.latency is not None:
            await asyncio.sleep(self.latency(tool, query) * self.time_scale)
        out = self.tools[tool](query)
        if inspect.isawaitable(out):
            out = await out
        return str(out)

    async def astep(self, model_text: str) -> list[tuple[str, str, str]]:
        """Runs every call in one model turn; returns ``[(tool, query, observation)]``."""
        self.turns += 1
        calls = parse_batched_calls(model_text, self.tools)
        results: list[Any] = [None] * len(calls)
        todo = []
        for i, (tool, q) in enumerate(calls):
            if (tool, q) in self.seen:
                results[i] = DUPLICATE_QUERY_RESPONSE
            else:
                self.seen.add((tool, q))
                todo.append(i)
        self.tool_calls += len(todo)
        outs = await asyncio.gather(*(self._one(*calls[i]) for i in todo))
        for i, o in zip(todo, outs):
            results[i] = o
        return [(t, q, r) for (t, q), r in zip(calls, results)]

    def step(self, model_text: str) -> list[tuple[str, str, str]]:
        return asyncio.run(self.astep(model_text))
