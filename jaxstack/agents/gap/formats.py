"""GAP plan formats: parsers (and renderers) from plan text to a :class:`~.plan.PlanGraph`.

* :func:`parse_gap_plan`: GAP's released textual ``<plan>`` (``T1: ...`` / ``- Dependencies: none``);
* :func:`parse_batched_calls`: GAP's ``|``-batched tool tags (``<wiki_search>a|b</wiki_search>``),
  one turn-level batch of independent calls;
* :func:`parse_llmcompiler_plan`: LLMCompiler's numbered plan (``1. search("...")``,
  ``2. lookup("$1", ...)``, ``3. join()``, ``<END_OF_PLAN>``) with ``$k`` / ``${k}`` placeholders;
* :func:`parse_graph_xml`: the paper's ``<graph><node id= depends=>`` notation (placeholders ``{s1}``).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterable, Mapping

from jaxstack.agents.gap.plan import DOLLAR_RE, LOCAL_TOOLS, PlanGraph, PlanNode, placeholders


class PlanParseError(ValueError):
    """Raised when plan text cannot be parsed; the message names the line or node."""


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
        parts[i] = DOLLAR_RE.sub(lambda m: repr(m.group(0)), parts[i])
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
