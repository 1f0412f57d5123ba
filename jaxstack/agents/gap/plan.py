"""GAP plan graphs: the intermediate representation, placeholders, validation and graph queries.

One intermediate representation, :class:`PlanGraph` (a tuple of :class:`PlanNode`
``{id, tool, args, depends_on}``), is what every plan format parses into (``formats.py``) and what the
executor runs (``executor.py``).

:func:`validate` raises :class:`PlanValidationError` naming the offending node for a cycle, an
unknown or self dependency, a duplicate id, an unknown tool, or a placeholder that refers to a
node that is not a parent. :func:`topological_levels` is Kahn's algorithm with ties broken by
(natural) id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: node tools that are reasoning steps done by the LLM itself (zero latency, not tool calls)
LOCAL_TOOLS = frozenset({"join", "compare", "filter"})


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


def natural_key(s: str):
    """Sort key that orders digit runs numerically (``"T2" < "T10"``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", s))


# --------------------------------------------------------------------------- placeholders

#: ``$id`` / ``${id}`` placeholders (``{id}`` ones are matched only for known node ids)
DOLLAR_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
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
        for m in DOLLAR_RE.finditer(s):
            found.append(m.group(1) or m.group(2))
        if ids is not None:
            found.extend(m.group(1) for m in _BRACE.finditer(s) if m.group(1) in ids)
        return s

    _walk_strings(args, fn)
    return list(dict.fromkeys(found))


def substitute(args: Any, outputs: Mapping[str, str]) -> Any:
    """Replaces every placeholder of a known id in ``args`` by ``outputs[id]``."""

    def fn(s):
        s = DOLLAR_RE.sub(lambda m: outputs.get(m.group(1) or m.group(2), m.group(0)), s)
        return _BRACE.sub(lambda m: outputs.get(m.group(1), m.group(0)), s)

    return _walk_strings(args, fn)


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
        left = sorted((i for i, d in indeg.items() if d > 0), key=natural_key)
        raise PlanValidationError(f"dependency cycle through node {left[0]!r} (nodes left: {left})", left[0])
    return graph


def topological_levels(graph: PlanGraph) -> list[list[str]]:
    """Kahn's layering: level 0 = nodes without parents, level L = nodes whose parents are all in
    levels < L (so the level count is the longest path, in nodes); ids sorted naturally in
    each level. Validates the graph first."""
    validate(graph)
    level: dict[str, int] = {}
    for nid in topo_order(graph):
        n = graph.node(nid)
        level[nid] = 1 + max((level[d] for d in n.depends_on), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for nid, lv in level.items():
        out[lv].append(nid)
    return [sorted(lv, key=natural_key) for lv in out]


def topo_order(graph: PlanGraph) -> list[str]:
    """Node ids in topological order, ties broken by natural id (the graph must be valid)."""
    indeg = {n.id: len(n.depends_on) for n in graph.nodes}
    children = graph.children()
    ready = sorted((i for i, d in indeg.items() if d == 0), key=natural_key)
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for c in children[i]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
        ready.sort(key=natural_key)
    return order


def critical_path(graph: PlanGraph, weight: Mapping[str, float]) -> float:
    """Heaviest path weight through the DAG (sum of node weights)."""
    finish: dict[str, float] = {}
    for nid in topo_order(validate(graph)):
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
