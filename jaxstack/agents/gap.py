"""GAP plan graphs: parsing, validation, topological levels, a parallel executor, EM reward.

One intermediate representation, :class:`PlanGraph` (a tuple of :class:`PlanNode`
``{id, tool, args, depends_on}``), is produced by three parsers:

* :func:`parse_gap_plan`: GAP's released textual ``<plan>`` (``T1: ...`` / ``- Dependencies: none``);
* :func:`parse_batched_calls`: GAP's ``|``-batched tool tags (``<wiki_search>a|b</wiki_search>``),
  one turn-level batch of independent calls;
* :func:`parse_llmcompiler_plan`: LLMCompiler's numbered plan (``1. search("...")``,
  ``2. lookup("$1", ...)``, ``3. join()``, ``<END_OF_PLAN>``) with ``$k`` / ``${k}`` placeholders;
* plus :func:`parse_graph_xml` for the paper's ``<graph><node id= depends=>`` notation
  (placeholders ``{s1}``).

:func:`validate` raises :class:`PlanValidationError` naming the offending node for a cycle, an
unknown or self dependency, a duplicate id, an unknown tool, or a placeholder that refers to a
node that is not a parent. :func:`topological_levels` is Kahn's algorithm with ties broken by
(natural) id.

:func:`execute` runs a graph under three schedules:

* ``"sequential"``: one node at a time (ReAct-like);
* ``"level"``: all nodes of a topological level, then a barrier (the GAP paper's Algorithm 1);
* ``"eager"``: each node starts as soon as its inputs are ready (LLMCompiler's Task Fetching Unit);

with ``max_concurrency``, per-node timeouts, and failure propagation (a failed node's
descendants are skipped with an error observation, independent branches finish). Time is either
*virtual* (a discrete-event simulation, exact makespans: sequential = sum, level = sum of level
maxima, eager = critical path for unbounded concurrency) or *real* (asyncio tasks sleeping
``latency * time_scale`` seconds).

:func:`em_reward` is the binary exact-match reward of GAP's multi-hop QA RL (last ``<answer>``,
split on ``|``, every prediction must be in the normalised gold set).
"""

from __future__ import annotations

import ast
import asyncio
import heapq
import inspect
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "PlanNode",
    "PlanGraph",
    "PlanValidationError",
    "PlanParseError",
    "LOCAL_TOOLS",
    "parse_gap_plan",
    "render_gap_plan",
    "parse_batched_calls",
    "parse_llmcompiler_plan",
    "render_llmcompiler_plan",
    "parse_graph_xml",
    "stop_strings",
    "placeholders",
    "substitute",
    "validate",
    "topological_levels",
    "critical_path",
    "NodeResult",
    "ExecutionReport",
    "execute",
    "execute_async",
    "GapCompatSession",
    "DUPLICATE_QUERY_RESPONSE",
    "normalize_answer",
    "em_reward",
    "llm_turns",
    "tool_nodes",
]

#: node tools that are reasoning steps done by the LLM itself (zero latency, not tool calls)
LOCAL_TOOLS = frozenset({"join", "compare", "filter"})

DUPLICATE_QUERY_RESPONSE = (
    "I have performed a web search with the same query before. To find new information, "
    "I should try a more diverse or specific search query."
)


class PlanParseError(ValueError):
    """Raised when plan text cannot be parsed; the message names the line or node."""


class PlanValidationError(ValueError):
    """Raised by :func:`validate`; ``node`` is the offending node id."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


@dataclass(frozen=True, eq=True)
class PlanNode:
    """One task of a plan graph.

    Attributes:
        id: unique node id (``"1"``, ``"T1"``, ``"s1"``).
        tool: tool name (``"lookup"``, ``"wiki_search"``; ``"join"`` / ``"compare"`` /
            ``"filter"`` are local reasoning nodes).
        args: keyword arguments; strings may hold placeholders ``$id``, ``${id}`` or ``{id}``.
        depends_on: parent ids, whose outputs this node needs.
        description: free-text description (GAP's ``T1: ...`` text).
    """

    id: str
    tool: str
    args: dict = field(default_factory=dict, hash=False)
    depends_on: tuple[str, ...] = ()
    description: str = ""

    def __hash__(self):
        return hash((self.id, self.tool, self.depends_on))


@dataclass(frozen=True)
class PlanGraph:
    """An ordered collection of :class:`PlanNode`; see :func:`validate` for the rules."""

    nodes: tuple[PlanNode, ...]

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))

    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def node(self, nid: str) -> PlanNode:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise KeyError(f"no node {nid!r} in plan; ids: {self.ids}")

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for d in n.depends_on:
                if d in out:
                    out[d].append(n.id)
        return out

    def to_dict(self) -> dict:
        return {"nodes": [{"id": n.id, "tool": n.tool, "args": n.args, "depends_on": list(n.depends_on),
                           "description": n.description} for n in self.nodes]}


def _natural_key(s: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", s))


# --------------------------------------------------------------------------- placeholders

_DOLLAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_BRACE = re.compile(r"\{(\w+)\}")


def _walk_strings(obj, fn):
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_walk_strings(x, fn) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_walk_strings(x, fn) for x in obj)
    if isinstance(obj, dict):
        return {k: _walk_strings(v, fn) for k, v in obj.items()}
    return obj


def placeholders(args: Any, node_ids: Iterable[str] | None = None) -> list[str]:
    """Ids referenced by ``$id`` / ``${id}`` (always) and ``{id}`` (only when ``id`` is in
    ``node_ids``) anywhere in ``args``, in order of first appearance."""
    ids = set(node_ids) if node_ids is not None else None
    found: list[str] = []

    def fn(s):
        for m in _DOLLAR.finditer(s):
            found.append(m.group(1) or m.group(2))
        if ids is not None:
            found.extend(m.group(1) for m in _BRACE.finditer(s) if m.group(1) in ids)
        return s

    _walk_strings(args, fn)
    return list(dict.fromkeys(found))


def substitute(args: Any, outputs: Mapping[str, str]) -> Any:
    """Replaces every placeholder of a known id in ``args`` by ``outputs[id]``."""

    def fn(s):
        s = _DOLLAR.sub(lambda m: outputs.get(m.group(1) or m.group(2), m.group(0)), s)
        return _BRACE.sub(lambda m: outputs.get(m.group(1), m.group(0)), s)

    return _walk_strings(args, fn)


# --------------------------------------------------------------------------- parsers

_TASK_RE = re.compile(r"^\s*(T\d+)\s*[:.]\s*(.*)$")
_DEPS_RE = re.compile(r"^\s*-?\s*Dependencies\s*:\s*(.*)$", re.IGNORECASE)


def parse_gap_plan(text: str, default_tool: str = "wiki_search") -> PlanGraph:
    """Parses GAP's textual plan (inside ``<plan>...</plan>`` if present)::

        T1: Search for A's occupation
        - Dependencies: none
        T3: Compare their occupations
        - Dependencies: T1, T2

    Each task becomes a node with ``tool=default_tool`` and ``args={"query": description}``
    (GAP's plan text names no tool; the queries themselves come in the tool tags).
    """
    m = re.search(r"<plan>(.*?)</plan>", text, re.S)
    body = m.group(1) if m else text
    nodes: list[dict] = []
    for lineno, line in enumerate(body.splitlines(), 1):
        if not line.strip():
            continue
        t = _TASK_RE.match(line)
        if t:
            nodes.append({"id": t.group(1), "desc": t.group(2).strip(), "deps": None, "line": lineno})
            continue
        d = _DEPS_RE.match(line)
        if d:
            if not nodes:
                raise PlanParseError(f"line {lineno}: 'Dependencies' before any task")
            if nodes[-1]["deps"] is not None:
                raise PlanParseError(f"line {lineno}: task {nodes[-1]['id']} has two Dependencies lines")
            raw = d.group(1).strip()
            deps = [] if raw.lower() in ("none", "", "-", "n/a") else [x.strip() for x in re.split(r"[,\s]+(?:and\s+)?", raw) if x.strip()]
            for x in deps:
                if not re.fullmatch(r"T\d+", x):
                    raise PlanParseError(f"line {lineno}: task {nodes[-1]['id']} has a bad dependency {x!r}")
            nodes[-1]["deps"] = deps
            continue
        if nodes:  # continuation of the description
            nodes[-1]["desc"] += " " + line.strip()
        else:
            raise PlanParseError(f"line {lineno}: expected 'T<k>: <task>', got {line.strip()!r}")
    if not nodes:
        raise PlanParseError("no tasks found in plan")
    return PlanGraph(tuple(PlanNode(n["id"], default_tool, {"query": n["desc"]}, tuple(n["deps"] or ()), n["desc"])
                           for n in nodes))


def render_gap_plan(graph: PlanGraph) -> str:
    """Renders a graph in GAP's ``<plan>`` text (inverse of :func:`parse_gap_plan` for ids
    ``T<k>``)."""
    lines = ["<plan>"]
    for n in graph.nodes:
        lines.append(f"{n.id}: {n.description or n.args.get('query', '')}")
        lines.append(f"- Dependencies: {', '.join(n.depends_on) if n.depends_on else 'none'}")
    lines.append("</plan>")
    return "\n".join(lines)


def stop_strings(tools: Iterable[str] = ("wiki_search",)) -> list[str]:
    """GAP-compat stop strings: each tool's closing tag plus ``</answer>``."""
    return [f"</{t}>" for t in tools] + ["</answer>"]


def parse_batched_calls(text: str, tools: Iterable[str] = ("wiki_search",)) -> list[tuple[str, str]]:
    """GAP-compat: every ``<tool>a|b||c</tool>`` in ``text`` -> ``[(tool, "a"), (tool, "b"),
    (tool, "c")]`` (split on ``|``, empty parts dropped, surrounding whitespace stripped)."""
    calls = []
    for tool in tools:
        for m in re.finditer(rf"<{re.escape(tool)}>(.*?)</{re.escape(tool)}>", text, re.S):
            calls += [(tool, q.strip()) for q in m.group(1).split("|") if q.strip()]
    return calls


_LLMC_LINE = re.compile(r"^\s*(\d+)\s*\.\s*(\w+)\s*\((.*)\)\s*$")


def _quote_bare_placeholders(argtext: str) -> str:
    # Quote `$1` / `${1}` that stand outside string literals so ast can read them.
    parts = re.split(r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')", argtext)
    for i in range(0, len(parts), 2):
        parts[i] = _DOLLAR.sub(lambda m: repr(m.group(0)), parts[i])
    return "".join(parts)


def _parse_call_args(tool: str, argtext: str, where: str, tools: Mapping[str, Callable] | None) -> dict:
    try:
        call = ast.parse(f"f({_quote_bare_placeholders(argtext)})", mode="eval").body
        pos = [ast.literal_eval(a) for a in call.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise PlanParseError(f"{where}: cannot parse arguments of {tool}(...): {e}") from None
    if tools is not None and tool in tools and tool not in LOCAL_TOOLS:
        try:
            bound = inspect.signature(tools[tool]).bind(*pos, **kw)
        except TypeError as e:
            raise PlanParseError(f"{where}: arguments do not fit {tool}: {e}") from None
        return dict(bound.arguments)
    if pos:
        if len(pos) == 1 and not kw:
            return {"query": pos[0]}
        return {"args": pos, **kw}
    return kw


def parse_llmcompiler_plan(text: str, tools: Mapping[str, Callable] | None = None) -> PlanGraph:
    """Parses an LLMCompiler plan::

        Thought: ...
        1. lookup("The Silent River", "authored_by")
        2. lookup("$1", "born_in")
        3. join()
        <END_OF_PLAN>

    Arguments are Python literals; positional arguments are bound to parameter names through
    ``inspect.signature`` of ``tools[name]`` when ``tools`` is given (else a single positional
    becomes ``{"query": ...}``). Dependencies are the ids referenced by ``$k`` / ``${k}``;
    ``join()`` depends on every earlier task and must be last.
    """
    text = text.split("<END_OF_PLAN>")[0]
    nodes: list[PlanNode] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.lower().startswith("thought"):
            continue
        m = _LLMC_LINE.match(s)
        if not m:
            raise PlanParseError(f"line {lineno}: expected 'k. tool(args)', got {s!r}")
        idx, tool, argtext = m.groups()
        where = f"task {idx} (line {lineno})"
        if nodes and nodes[-1].tool == "join":
            raise PlanParseError(f"{where}: join() must be the last task")
        if tool == "join":
            nodes.append(PlanNode(idx, "join", {}, tuple(n.id for n in nodes), "join"))
            continue
        args = _parse_call_args(tool, argtext, where, tools)
        deps = tuple(placeholders(args))
        nodes.append(PlanNode(idx, tool, args, deps, s))
    if not nodes:
        raise PlanParseError("no tasks found in LLMCompiler plan")
    return PlanGraph(tuple(nodes))


def render_llmcompiler_plan(graph: PlanGraph) -> str:
    """Renders a graph as an LLMCompiler numbered plan with keyword arguments."""
    lines = []
    for n in graph.nodes:
        if n.tool == "join":
            lines.append(f"{n.id}. join()")
        else:
            args = ", ".join(f"{k}={v!r}" for k, v in n.args.items())
            lines.append(f"{n.id}. {n.tool}({args})")
    return "\n".join(lines) + "\n<END_OF_PLAN>"


_XML_NODE = re.compile(r"<node\s+([^>]*)>(.*?)</node>", re.S)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def parse_graph_xml(text: str, tools: Mapping[str, Callable] | None = None) -> PlanGraph:
    """Parses the GAP paper's notation ``<graph><node id="s3" depends="s1">search("... {s1}")
    </node></graph>``; ``depends`` is comma-separated, empty for roots."""
    nodes = []
    for m in _XML_NODE.finditer(text):
        attrs = dict(_ATTR.findall(m.group(1)))
        if "id" not in attrs:
            raise PlanParseError(f"<node> without an id: {m.group(0)[:60]!r}")
        nid = attrs["id"]
        body = m.group(2).strip()
        c = re.fullmatch(r"(\w+)\s*\((.*)\)", body, re.S)
        if not c:
            raise PlanParseError(f"node {nid}: expected 'tool(args)', got {body!r}")
        args = _parse_call_args(c.group(1), c.group(2), f"node {nid}", tools)
        deps = tuple(x.strip() for x in attrs.get("depends", "").split(",") if x.strip())
        nodes.append(PlanNode(nid, c.group(1), args, deps, body))
    if not nodes:
        raise PlanParseError("no <node> elements found in graph")
    return PlanGraph(tuple(nodes))


# --------------------------------------------------------------------------- validation


def validate(graph: PlanGraph, tools: Iterable[str] | None = None) -> PlanGraph:
    """Checks a plan graph and returns it unchanged.

    Raises:
        PlanValidationError: naming the offending node, for a duplicate id, a self dependency,
            an unknown dependency, an unknown tool (when ``tools`` is given; local reasoning
            tools are always known), a placeholder that refers to a node that is not a parent,
            or a cycle.
    """
    if not isinstance(graph, PlanGraph):
        raise TypeError(f"graph must be a PlanGraph, got {type(graph).__name__}")
    if not graph.nodes:
        raise PlanValidationError("plan graph has no nodes")
    known_tools = None if tools is None else set(tools) | LOCAL_TOOLS
    seen: set[str] = set()
    for n in graph.nodes:
        if not isinstance(n.id, str) or not n.id:
            raise PlanValidationError(f"node id must be a non-empty string, got {n.id!r}", n.id)
        if n.id in seen:
            raise PlanValidationError(f"duplicate node id {n.id!r}", n.id)
        seen.add(n.id)
    for n in graph.nodes:
        if known_tools is not None and n.tool not in known_tools:
            raise PlanValidationError(f"node {n.id!r}: unknown tool {n.tool!r}; known: {sorted(known_tools)}", n.id)
        if len(set(n.depends_on)) != len(n.depends_on):
            raise PlanValidationError(f"node {n.id!r}: repeated dependency in {list(n.depends_on)}", n.id)
        for d in n.depends_on:
            if d == n.id:
                raise PlanValidationError(f"node {n.id!r} depends on itself", n.id)
            if d not in seen:
                raise PlanValidationError(f"node {n.id!r} depends on unknown node {d!r}", n.id)
        for p in placeholders(n.args, seen):
            if p not in n.depends_on:
                raise PlanValidationError(
                    f"node {n.id!r}: placeholder for {p!r}, which is not one of its parents {list(n.depends_on)}", n.id)
    # cycle detection (Kahn); report the lowest id left on a cycle
    indeg = {n.id: len(n.depends_on) for n in graph.nodes}
    children = graph.children()
    queue = [i for i, d in indeg.items() if d == 0]
    done = 0
    while queue:
        i = queue.pop()
        done += 1
        for c in children[i]:
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    if done != len(graph.nodes):
        left = sorted((i for i, d in indeg.items() if d > 0), key=_natural_key)
        raise PlanValidationError(f"dependency cycle through node {left[0]!r} (nodes left: {left})", left[0])
    return graph


def topological_levels(graph: PlanGraph) -> list[list[str]]:
    """Kahn's layering: level 0 = nodes without parents, level L = nodes whose parents are all in
    levels < L (so the level count is the longest path, in nodes); ids sorted naturally in
    each level. Validates the graph first."""
    validate(graph)
    level: dict[str, int] = {}
    for nid in _topo_order(graph):
        n = graph.node(nid)
        level[nid] = 1 + max((level[d] for d in n.depends_on), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for nid, lv in level.items():
        out[lv].append(nid)
    return [sorted(lv, key=_natural_key) for lv in out]


def _topo_order(graph: PlanGraph) -> list[str]:
    indeg = {n.id: len(n.depends_on) for n in graph.nodes}
    children = graph.children()
    ready = sorted((i for i, d in indeg.items() if d == 0), key=_natural_key)
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for c in children[i]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
        ready.sort(key=_natural_key)
    return order


def critical_path(graph: PlanGraph, weight: Mapping[str, float]) -> float:
    """Heaviest path weight through the DAG (sum of node weights)."""
    finish: dict[str, float] = {}
    for nid in _topo_order(validate(graph)):
        n = graph.node(nid)
        finish[nid] = weight[nid] + max((finish[d] for d in n.depends_on), default=0.0)
    return max(finish.values())


def tool_nodes(graph: PlanGraph) -> list[PlanNode]:
    """Nodes that are real tool calls (not local reasoning nodes)."""
    return [n for n in graph.nodes if n.tool not in LOCAL_TOOLS]


def llm_turns(graph: PlanGraph, mode: str) -> int:
    """LLM calls needed to answer with ``graph``'s tool calls.

    ``"react"``: one call per tool call plus the answer turn; ``"gap"`` (GAP-compat turn
    batching): one call per topological level of the tool nodes plus the answer turn;
    ``"graph"``: one planning call plus one answer (join) call.
    """
    tools = tool_nodes(graph)
    if mode == "react":
        return len(tools) + 1
    if mode == "gap":
        ids = {n.id for n in tools}
        sub = PlanGraph(tuple(replace(n, depends_on=tuple(d for d in n.depends_on if d in ids)) for n in tools))
        return (len(topological_levels(sub)) if tools else 0) + 1
    if mode == "graph":
        return 2
    raise ValueError(f"mode must be 'react', 'gap' or 'graph', got {mode!r}")


# --------------------------------------------------------------------------- executor


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
        return self.results[_topo_order(graph)[-1]]


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
        self.order = _topo_order(graph)
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
            node = graph.node(nid)
            plan.pending.remove(nid)
            plan.running.add(nid)
            args = substitute(node.args, plan.outputs())
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
            node = graph.node(nid)
            plan.pending.remove(nid)
            plan.running.add(nid)
            args = substitute(node.args, plan.outputs())
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
        for task in sorted(done, key=lambda t: _natural_key(tasks[t])):
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


# --------------------------------------------------------------------------- reward


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def em_reward(response: str, gold: str | Iterable[str]) -> float:
    """GAP's binary exact-match reward: take the *last* ``<answer>...</answer>``, split it on
    ``|``; 1.0 iff there is at least one prediction and every normalised prediction is in the
    normalised gold set; 0.0 without an answer."""
    matches = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    if not matches:
        return 0.0
    golds = {normalize_answer(g) for g in ([gold] if isinstance(gold, str) else gold)}
    preds = [normalize_answer(p) for p in matches[-1].split("|")]
    preds = [p for p in preds if p]
    if not preds:
        return 0.0
    return 1.0 if all(p in golds for p in preds) else 0.0


def wall_time() -> float:  # pragma: no cover - tiny helper for experiments
    return time.perf_counter()
