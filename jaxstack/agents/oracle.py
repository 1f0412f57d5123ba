"""Scripted oracle policies on SimWeb and the Fold-Generator substitute.

From a question's gold facts, :func:`oracle_trajectory` emits a realistic action sequence:
gold-path ``search`` / ``visit`` steps, plus exploration branches (near-duplicate decoy pages,
wrong search hits, dead-end candidates of a constraint question) that are investigated for 2-8
steps and rejected. The *same* actions are then rendered three ways:

* **ReAct** (:func:`react_accounting`): the append-only chat history
  ``<think>..</think><tool_call>..</tool_call>`` / ``<tool_response>..</tool_response>``;
* **AgentFold** (:class:`OracleFoldPolicy` driven through :func:`~jaxstack.agents.fold.run_agentfold`):
  a rule-based fold policy - granular condensation of the latest step into a template summary
  of its relevant facts ("No relevant information" otherwise), deep consolidation of a rejected
  branch (merged with directly preceding rejections) or of an answered sub-question;
* **running summary** (:func:`summary_accounting`, ReSum/MEM1-like): one summary rewritten every
  turn, each rewrite passing every fact through :class:`FactNoise` (lost with probability ``p``).

Folding policies that can lose information: :class:`OracleFoldPolicy` keeps every gold fact verbatim
(the upper bound); :class:`NoisyOracleFoldPolicy` writes each fact into a fold through the same
:class:`FactNoise` (dropped with ``p_drop``, its object replaced by a wrong one with ``p_corrupt``,
every time a fold writes it: granular condensation, then each deep consolidation that merges it).

Retention is measured by *asking*: :func:`probe_retention` puts a probe question ("Where was X born?")
after the context a policy holds at the turn the fact is needed, and :class:`ContextReader` - an
extractive reader that sees only that prompt text - answers it; a probe counts when the answer
matches the fact's object.

Every AgentFold step becomes one SFT example ``(C_t, R_t)`` (:func:`sft_examples`), exported as
ShareGPT-style JSONL with the loss on the response only (:func:`write_sharegpt_jsonl`,
:func:`sft_token_mask`). The "rejection sampling" of the real Fold-Generator is replaced by
checks: format round trip, fold invariants (strict mode), correct final answer, every needed-fact
probe answered from the context.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxstack.agents.fold import (
    AgentFoldResponse,
    AgentRun,
    FoldDirective,
    parse_response,
    render_response,
    run_agentfold,
)
from jaxstack.agents.gap.reward import normalize_answer
from jaxstack.agents.llm import Completion
from jaxstack.agents.simweb import GOALS, Fact, Question, SimWeb
from jaxstack.agents.simweb.world import SENTENCES
from jaxstack.data.chat import CHATML, render_chat, validate_messages

__all__ = [
    "OracleAction",
    "OracleTrajectory",
    "oracle_trajectory",
    "OracleFoldPolicy",
    "NoisyOracleFoldPolicy",
    "FactNoise",
    "corrupt_fact",
    "run_oracle_agentfold",
    "REACT_SYSTEM_PROMPT",
    "react_segments",
    "react_window",
    "react_accounting",
    "summary_accounting",
    "PROBE_SYSTEM_PROMPT",
    "probe_question",
    "read_fact",
    "ContextReader",
    "probe_retention",
    "SFTExample",
    "sft_examples",
    "write_sharegpt_jsonl",
    "sft_token_mask",
]


@dataclass(frozen=True)
class OracleAction:
    """One oracle step.

    Attributes:
        think, motivation: the step's reasoning and the paper's "explanation".
        tool_call: ``{"name", "arguments"}``.
        observation: the SimWeb tool output (recorded once, replayed in every rendering).
        learned: gold facts first seen in this observation.
        branch: name of the candidate / decoy being explored (``None`` on the gold path).
        closes: ``"reject"`` when this step rejects its branch, ``"subanswer"`` when it answers
            a sub-question, else ``None``.
        opened_at: step index where the branch or sub-question started.
        note: one-line condensation used by the fold policy when nothing relevant was found.
    """

    think: str
    motivation: str
    tool_call: dict = field(hash=False)
    observation: str
    learned: tuple[Fact, ...] = ()
    branch: str | None = None
    closes: str | None = None
    opened_at: int | None = None
    note: str = ""


@dataclass
class OracleTrajectory:
    """Actions plus the final answer; ``needed`` lists ``(fact, learned_step, needed_turn)``."""

    question: Question
    actions: list[OracleAction]
    answer: str
    final_think: str
    needed: list[tuple[Fact, int, int]]

    @property
    def n_turns(self) -> int:
        """LLM turns: one per action plus the answer turn."""
        return len(self.actions) + 1


# --------------------------------------------------------------------------- generation


def _phrase(relation: str) -> str:
    return relation.replace("_", " ")


class _Builder:
    def __init__(self, world: SimWeb, rng: random.Random):
        self.w, self.rng = world, rng

    def search(self, query: str, **kw) -> OracleAction:
        obs = self.w.search([query])
        return OracleAction(f"I should search for {query}.", f"Search for {query}.",
                            {"name": "search", "arguments": {"query": [query]}}, obs,
                            note=kw.pop("note", f"Searched for '{query}'; no direct answer in the snippets."), **kw)

    def visit(self, url: str, goal: str, **kw) -> OracleAction:
        obs = self.w.visit([url], goal)
        return OracleAction(f"The page {url} may answer: {goal}", f"Visit {url} to learn: {goal}",
                            {"name": "visit", "arguments": {"url": [url], "goal": goal}}, obs,
                            note=kw.pop("note", f"Visited {url}; no relevant information for: {goal}"), **kw)

    def gold_hop(self, facts: Sequence[Fact], start: int) -> list[OracleAction]:
        """search then visit(s) learning ``facts`` (same subject page for all)."""
        f0 = facts[0]
        goal = (f"Who received the {f0.subject}?" if f0.relation == "laureates"
                else GOALS[f0.relation].format(x=f0.subject))
        query = f"{f0.subject} laureates" if f0.relation == "laureates" else f"{f0.subject} {_phrase(f0.relation)}"
        acts = [self.search(query)]
        for f in facts:
            g = goal if f is f0 else (GOALS[f.relation].format(x=f.subject) if f.relation in GOALS else goal)
            acts.append(self.visit(f.url, g, learned=(f,)))
        last = acts[-1]
        acts[-1] = OracleAction(last.think, last.motivation, last.tool_call, last.observation,
                                tuple(x for a in acts[1:] for x in a.learned), None, "subanswer", start)
        return acts

    def branch(self, name: str, start: int, reason: str, n_steps: int, pages: Sequence[str]) -> list[OracleAction]:
        """Explore candidate ``name`` for ``n_steps`` steps (>= 2) and reject it."""
        acts = [self.search(f"{name}", branch=name, opened_at=start)]
        visited = list(pages) or [self.w.search_results(name, 3)[-1]]
        i = 0
        while len(acts) < n_steps:
            if i % 3 == 2:
                acts.append(self.search(f"{name} {self.rng.choice(['biography', 'works', 'founder', 'history'])}",
                                        branch=name, opened_at=start))
            else:
                url = visited[i % len(visited)]
                acts.append(self.visit(url, f"Does {name} satisfy the constraints?", branch=name, opened_at=start,
                                       note=f"Visited {url} while checking {name}."))
            i += 1
        last = acts[-1]
        acts[-1] = OracleAction(f"{name} {reason}, so this is a dead end.", last.motivation, last.tool_call,
                                last.observation, (), name, "reject", start, f"{name} {reason}")
        return acts


def oracle_trajectory(world: SimWeb, question: Question, *, seed: int = 0, target_steps: int | None = None,
                      branch_steps: tuple[int, int] = (2, 8)) -> OracleTrajectory:
    """Builds the oracle action sequence for ``question``.

    Args:
        world: the SimWeb the question came from.
        seed: exploration randomness (which decoys, branch lengths, positions).
        target_steps: pad with extra rejected exploration branches until there are at least
            this many steps (``None``: only the question's own dead ends and decoys).
        branch_steps: (min, max) steps of an exploration branch.
    """
    if branch_steps[0] < 2 or branch_steps[1] < branch_steps[0]:
        raise ValueError(f"branch_steps must satisfy 2 <= min <= max, got {branch_steps}")
    rng = random.Random(f"oracle-{question.qid}-{seed}")
    b = _Builder(world, rng)
    decoys = {p.title.split(" (")[0]: u for u, p in world.pages.items() if p.kind == "decoy"}
    people = sorted(e.name for e in world.entities.values() if e.kind == "person")

    # gold segments (each a list of fact groups learned on one page)
    if question.kind == "constraint":
        laureate, born, authored, published = question.facts
        gold_groups = [[laureate], [born], [authored, published]]
        dead = [(c, reason) for c, reason in question.candidates]
    else:
        gold_groups = [[f] for f in question.facts]
        dead = []
    segments: list[tuple[str, object]] = [("gold", g) for g in gold_groups]
    # question-intrinsic exploration: decoy namesakes of gold subjects, dead-end candidates
    extra: list[tuple[str, object]] = []
    for g in gold_groups:
        subj = g[0].subject
        if subj in decoys and rng.random() < 0.7:
            extra.append(("branch", (subj, "refers to a different namesake", [decoys[subj]], rng.randint(*branch_steps))))
    for c, reason in dead:
        why = "was not born in the required city" if reason == "born_in" else "has no work with the required publisher"
        extra.append(("branch", (c, why, [world.entity_by_name(c).url], rng.randint(*branch_steps))))
    rng.shuffle(extra)
    # constraint dead ends come after the laureate list is known; others anywhere before the last gold hop
    for item in extra:
        lo = 1 if question.kind == "constraint" else 0
        segments.insert(rng.randint(lo, len(segments) - 1), item)

    def steps_of(seg_list):
        n = 0
        for kind, payload in seg_list:
            n += (1 + len(payload)) if kind == "gold" else payload[3]
        return n

    if target_steps is not None:
        while steps_of(segments) < target_steps:
            cand = rng.choice(people)
            url = world.entity_by_name(cand).url
            n = min(rng.randint(*branch_steps), max(branch_steps[0], target_steps - steps_of(segments)))
            pos = rng.randint(1 if question.kind == "constraint" else 0, len(segments) - 1)
            segments.insert(pos, ("branch", (cand, "does not match the question's constraints", [url], n)))

    actions: list[OracleAction] = []
    learned_at: dict[str, int] = {}
    needed: list[tuple[Fact, int, int]] = []
    gold_seen = 0
    for kind, payload in segments:
        start = len(actions)
        if kind == "gold":
            # the facts of earlier gold groups are needed when this hop starts (bridge entity)
            if gold_seen and question.kind in ("bridge", "constraint"):
                for f in gold_groups[gold_seen - 1]:
                    needed.append((f, learned_at[f.sentence], start))
            acts = b.gold_hop(payload, start)
            for j, a in enumerate(acts):
                for f in a.learned:
                    learned_at.setdefault(f.sentence, start + j)
            actions += acts
            gold_seen += 1
        else:
            name, reason, pages, n = payload
            actions += b.branch(name, start, reason, n, pages)
    final_turn = len(actions)
    for g in gold_groups:
        for f in g:
            needed.append((f, learned_at[f.sentence], final_turn))
    think = f"All sub-questions are resolved; the answer to '{question.text}' is {question.answer}."
    return OracleTrajectory(question, actions, question.answer, think, needed)


# --------------------------------------------------------------------------- AgentFold rendering


def _fact_text(facts: Sequence[Fact]) -> str:
    return " ".join(f"{f.sentence} (source: {f.url})" for f in facts)


class OracleFoldPolicy:
    """An :class:`~jaxstack.agents.llm.LLMClient` that replays an oracle trajectory in the
    AgentFold format, choosing fold directives with the rule-based fold policy.

    It keeps a shadow of the block list (with each block's facts and rejected candidates), so
    consolidated summaries keep every gold fact verbatim and list rejected candidates by name.
    """

    def __init__(self, traj: OracleTrajectory):
        self.traj = traj
        self.turn = 0
        # shadow blocks: start -> (end, facts, rejected names)
        self.shadow: list[tuple[int, int, tuple[Fact, ...], tuple[str, ...]]] = []
        self.responses: list[AgentFoldResponse] = []

    def directive(self, t: int) -> FoldDirective:
        a = self.traj.actions[t - 1]
        blocks = self.shadow
        if a.closes in ("reject", "subanswer"):
            k = a.opened_at
            if a.closes == "reject":  # merge directly preceding rejection-only blocks too
                idx = next(i for i, blk in enumerate(blocks) if blk[0] == k)
                while idx > 0 and blocks[idx - 1][3] and not blocks[idx - 1][2]:
                    idx -= 1
                k = blocks[idx][0]
        else:
            k = t - 1
        merged = [blk for blk in blocks if blk[0] >= k]
        facts = tuple(f for blk in merged for f in blk[2]) + tuple(f for f in a.learned if all(f != g for blk in merged for g in blk[2]))
        facts = self._write(facts)
        rejected = tuple(n for blk in merged for n in blk[3]) + ((a.branch,) if a.closes == "reject" else ())
        parts = []
        if facts:
            parts.append(("Sub-question resolved. " if a.closes == "subanswer" else "Found: ") + _fact_text(facts))
        if rejected:
            parts.append(f"Ruled out candidates: {', '.join(rejected)} (checked in steps {k} to {t - 1}); "
                         f"none satisfies the question.")
        if not parts:
            parts.append(a.note or "No relevant information.")
        self.shadow = [blk for blk in blocks if blk[0] < k] + [(k, t - 1, facts, rejected)]
        return FoldDirective(k, t - 1, " ".join(parts))

    def _write(self, facts: tuple[Fact, ...]) -> tuple[Fact, ...]:
        """The facts a fold summary states: all of them, verbatim (the noisy subclass loses some)."""
        return facts

    def response(self, t: int) -> AgentFoldResponse:
        acts = self.traj.actions
        compress = self.directive(t) if 0 < t <= len(acts) else None
        if t >= len(acts):
            return AgentFoldResponse(self.traj.final_think, compress, "Answer the question.", None, self.traj.answer)
        a = acts[t]
        return AgentFoldResponse(a.think, compress, a.motivation, a.tool_call, None)

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        validate_messages(messages)
        resp = self.response(self.turn)
        if resp.answer is None:
            self.shadow.append((self.turn, self.turn, (), ()))  # the new raw step
        self.responses.append(resp)
        self.turn += 1
        return Completion(render_response(resp), finish_reason="stop")


def corrupt_fact(world: SimWeb, fact: Fact, rng: random.Random) -> Fact:
    """``fact`` with its object replaced by a wrong one of the same kind (another entity name, or a
    year off by 1-5), in the sentence too."""
    if fact.object.isdigit():
        new = str(int(fact.object) + rng.choice((-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)))
    else:
        kind = world.entity_by_name(fact.object).kind
        new = rng.choice(sorted(e.name for e in world.entities.values() if e.kind == kind and e.name != fact.object))
    head, _, tail = fact.sentence.rpartition(fact.object)  # the object comes last in every sentence
    return dataclasses.replace(fact, object=new, sentence=head + new + tail)


class FactNoise:
    """The stated error model of a lossy summariser: each time a fact is (re)written into a summary,
    it is dropped with probability ``p_drop``, else its object is replaced by a wrong one
    (:func:`corrupt_fact`) with probability ``p_corrupt``. Draws come from one generator seeded by
    ``key``, so a run is a pure function of its inputs."""

    def __init__(self, p_drop: float, p_corrupt: float = 0.0, *, world: SimWeb | None = None, key: str = ""):
        if not (0.0 <= p_drop <= 1.0 and 0.0 <= p_corrupt <= 1.0 and p_drop + p_corrupt <= 1.0):
            raise ValueError(f"p_drop and p_corrupt must be probabilities with p_drop + p_corrupt <= 1, "
                             f"got {p_drop}, {p_corrupt}")
        if p_corrupt > 0 and world is None:
            raise ValueError("FactNoise: p_corrupt > 0 needs the world to draw wrong objects from")
        self.p_drop, self.p_corrupt, self.world = p_drop, p_corrupt, world
        self.rng = random.Random(f"fact-noise-{key}")
        self.dropped = self.corrupted = 0

    def rewrite(self, facts: Sequence[Fact]) -> tuple[Fact, ...]:
        """The facts that survive one rewrite (some possibly corrupted), in order."""
        out = []
        for f in facts:
            u = self.rng.random()
            if u < self.p_drop:
                self.dropped += 1
                continue
            if u < self.p_drop + self.p_corrupt:
                self.corrupted += 1
                f = corrupt_fact(self.world, f, self.rng)
            out.append(f)
        return tuple(out)


class NoisyOracleFoldPolicy(OracleFoldPolicy):
    """:class:`OracleFoldPolicy` whose folds write facts through ``noise`` (:class:`FactNoise`): a fact
    can be lost or corrupted when it is first condensed and again at every deep consolidation that
    rewrites it; what was lost stays lost (later folds rewrite what the earlier ones wrote)."""

    def __init__(self, traj: OracleTrajectory, noise: FactNoise):
        super().__init__(traj)
        self.noise = noise

    def _write(self, facts: tuple[Fact, ...]) -> tuple[Fact, ...]:
        return self.noise.rewrite(facts)


def run_oracle_agentfold(traj: OracleTrajectory, tools: Sequence[dict], *, count=None,
                         keep_contexts: bool = False, max_turns: int | None = None,
                         policy: OracleFoldPolicy | None = None) -> AgentRun:
    """Drives :func:`run_agentfold` with ``policy`` (default :class:`OracleFoldPolicy`) and a replaying
    tool."""
    policy = policy or OracleFoldPolicy(traj)
    it = iter(traj.actions)

    def call_tool(call: dict) -> str:
        a = next(it)
        if call != a.tool_call:
            raise RuntimeError(f"replay mismatch: {call} != {a.tool_call}")
        return a.observation

    return run_agentfold(policy, traj.question.text, tools, call_tool, max_turns=max_turns or traj.n_turns + 1,
                         mode="strict", count=count, keep_contexts=keep_contexts)


# --------------------------------------------------------------------------- ReAct / summary


REACT_SYSTEM_PROMPT = (
    "You are a deep research assistant. Answer the question by calling tools. Think inside "
    "<think></think>, call a tool with <tool_call>{{\"name\": ..., \"arguments\": ...}}</tool_call>, "
    "read the <tool_response>, and give the final answer inside <answer></answer>.\n\n"
    "Available tools:\n{tools}"
)


def _react_system_message(tools: Sequence[dict]) -> dict:
    return {"role": "system", "content": REACT_SYSTEM_PROMPT.format(tools=json.dumps(list(tools), ensure_ascii=False))}


def _react_step_segments(a: OracleAction) -> tuple[str, str]:
    call = json.dumps(a.tool_call, ensure_ascii=False)
    asst = f"<think>{a.think}</think>\n<tool_call>\n{call}\n</tool_call>"
    user = f"<tool_response>\n{a.observation}\n</tool_response>"
    return render_chat([{"role": "assistant", "content": asst}]), render_chat([{"role": "user", "content": user}])


def react_segments(traj: OracleTrajectory, tools: Sequence[dict], turn: int) -> list[str]:
    """ReAct prompt at ``turn`` as segments (``"".join`` == the chat-templated prompt)."""
    head = render_chat([_react_system_message(tools), {"role": "user", "content": traj.question.text}])
    segs = [head]
    for a in traj.actions[:turn]:
        segs += list(_react_step_segments(a))
    return segs + [CHATML.header("assistant")]


def react_accounting(traj: OracleTrajectory, tools: Sequence[dict], count: Callable[[str], int]) -> list[dict]:
    """Per-turn ReAct accounting, computed incrementally (additive segment counts).

    ``cached_tokens``: previous prompt + previous response (a prefix cache holds both);
    ``reprefill_tokens``: the new tool response and the generation prompt."""
    head = react_segments(traj, tools, 0)
    base = count(head[0])
    tail = count(head[1])
    rows, total = [], base
    for t in range(traj.n_turns):
        if t > 0:
            asst, user = _react_step_segments(traj.actions[t - 1])
            ca, cu = count(asst), count(user)
            total += ca + cu
            cached = total - cu
        else:
            cached = 0
        prompt = total + tail
        rows.append(dict(turn=t, prompt_tokens=prompt, blocks=t, stable_prefix_tokens=base,
                         cached_tokens=cached, reprefill_tokens=prompt - cached))
    return rows


def react_window(traj: OracleTrajectory, tools: Sequence[dict], turn: int, count: Callable[[str], int],
                 max_context: int) -> str:
    """The ReAct prompt at ``turn`` as a sliding-window agent holds it: when it exceeds ``max_context``
    tokens, the oldest (assistant, tool response) pairs are dropped until it fits (the system prompt and
    the question always stay)."""
    segs = react_segments(traj, tools, turn)
    head, pairs, tail = segs[0], segs[1:-1], segs[-1]
    total = sum(count(x) for x in segs)
    i = 0
    while total > max_context and i < len(pairs):
        total -= count(pairs[i]) + count(pairs[i + 1])
        i += 2
    return head + "".join(pairs[i:]) + tail


def summary_accounting(traj: OracleTrajectory, tools: Sequence[dict], count: Callable[[str], int], p: float,
                       seed: int = 0, *, p_corrupt: float = 0.0,
                       world: SimWeb | None = None) -> tuple[list[dict], dict[int, str]]:
    """Running-summary baseline: at turn ``t`` the prompt is system, question, a summary rewritten
    every turn, and the latest step verbatim. Facts of step ``t-2`` enter the summary at turn ``t``;
    every later rewrite passes the summary's facts through :class:`FactNoise` (``p`` = drop
    probability, ``p_corrupt`` = corruption probability, which needs ``world``; rejected candidates are
    dropped with ``p``).

    Returns:
        (per-turn accounting rows, ``{turn: prompt text}`` for the turns some fact is needed at: the
        contexts :func:`probe_retention` asks about).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    rng = random.Random(f"summary-{traj.question.qid}-{seed}")
    noise = FactNoise(p, p_corrupt, world=world, key=f"summary-{traj.question.qid}-{seed}")
    # one user message (question, then the summary) split into two segments: the question is cached
    sys_seg = render_chat([_react_system_message(tools)])
    q_seg = CHATML.header("user") + f"Question: {traj.question.text}\n"
    tail = CHATML.header("assistant")
    kept: tuple[Fact, ...] = ()  # the facts the summary states, in order
    rejected: list[str] = []
    rows, contexts = [], {}
    needed_turns = {u for _, _, u in traj.needed}
    for t in range(traj.n_turns):
        if t >= 1:
            kept = noise.rewrite(kept)
            rejected = [n for n in rejected if rng.random() >= p]
        if t >= 2:
            a = traj.actions[t - 2]
            kept += tuple(a.learned)
            if a.closes == "reject":
                rejected.append(a.branch)
        summary = ("Below is a summary of the previous conversation...Summary: " + _fact_text(kept) +
                   (f" Ruled out: {', '.join(rejected)}." if rejected else "") + CHATML.footer())
        latest = list(_react_step_segments(traj.actions[t - 1])) if t >= 1 else []
        segs = [sys_seg, q_seg, summary, *latest, tail]
        counts = [count(s) for s in segs]
        prompt = sum(counts)
        cached = counts[0] + counts[1]  # the summary changes every turn
        rows.append(dict(turn=t, prompt_tokens=prompt, blocks=1 + bool(latest), stable_prefix_tokens=cached,
                         cached_tokens=cached if t else 0, reprefill_tokens=prompt - (cached if t else 0)))
        if t in needed_turns:
            contexts[t] = "".join(segs)
    return rows, contexts


# --------------------------------------------------------------------------- probes


PROBE_SYSTEM_PROMPT = "Answer the probe question from the context above only. Reply <answer>...</answer>."
_PROBE_MARK = "\n\n### Probe\n"
_GOAL_RES = {r: re.compile(re.escape(g).replace(re.escape("{x}"), "(.+)")) for r, g in GOALS.items()}


def probe_question(fact: Fact) -> str | None:
    """The probe asking for ``fact``'s object ("Where was X born?"), or None when its relation has none
    (a laureate-list fact: the list names many laureates, so the question has no single answer)."""
    return GOALS[fact.relation].format(x=fact.subject) if fact.relation in GOALS else None


def read_fact(text: str, subject: str, relation: str) -> str | None:
    """The object of the *last* sentence in ``text`` that states ``relation`` of ``subject`` in SimWeb's
    canonical form (``"{s} was born in {o}."``), or None."""
    head, _, tail = SENTENCES[relation].partition("{o}")
    obj = r"((?!the year )[^.\n]+?)" if relation == "born_in" else r"([^.\n]+?)"
    pattern = r"(?<!\w)" + re.escape(head.format(s=subject)) + obj + re.escape(tail)
    hits = re.findall(pattern, text)
    return hits[-1] if hits else None


class ContextReader:
    """An :class:`~jaxstack.agents.llm.LLMClient` that answers a probe (the last user message: a context,
    ``### Probe``, a question from :func:`probe_question`) by :func:`read_fact` over that context only;
    ``<answer>unknown</answer>`` when the context does not state the fact."""

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        validate_messages(messages)
        context, mark, question = messages[-1]["content"].rpartition(_PROBE_MARK)
        if not mark:
            raise ValueError("ContextReader: the last message has no '### Probe' question")
        for relation, goal in _GOAL_RES.items():
            m = goal.fullmatch(question.strip())
            if m:
                return Completion(f"<answer>{read_fact(context, m.group(1), relation) or 'unknown'}</answer>")
        raise ValueError(f"ContextReader: cannot read the probe question {question.strip()!r}")


def probe_retention(traj: OracleTrajectory, context_at: Callable[[int], str], reader) -> list[dict]:
    """Asks ``reader`` (an LLMClient) for every needed fact that has a probe, given the context the
    policy holds at the turn the fact is needed (``context_at(turn)``: the rendered prompt).

    Returns one row per probe: ``fact``, ``relation``, ``learned`` (step), ``needed`` (turn), ``age``
    (``needed - learned``; at age 1 the fact's step is still the latest, verbatim), ``answer`` and
    ``correct`` (the answer equals the fact's object, normalised).
    """
    rows = []
    for f, s, u in traj.needed:
        question = probe_question(f)
        if question is None:
            continue
        messages = [{"role": "system", "content": PROBE_SYSTEM_PROMPT},
                    {"role": "user", "content": context_at(u) + _PROBE_MARK + question}]
        text = reader.complete(messages).text
        m = re.search(r"<answer>(.*?)</answer>", text, re.S)
        answer = m.group(1).strip() if m else ""
        rows.append(dict(fact=f.sentence, relation=f.relation, learned=s, needed=u, age=u - s, answer=answer,
                         correct=normalize_answer(answer) == normalize_answer(f.object)))
    return rows


# --------------------------------------------------------------------------- SFT export


@dataclass(frozen=True)
class SFTExample:
    """One AgentFold SFT example ``(C_t, R_t)``: the loss goes on ``response`` only."""

    id: str
    system: str
    user: str
    response: str
    turn: int

    def sharegpt(self) -> dict:
        return {"id": self.id, "system": self.system,
                "conversations": [{"from": "human", "value": self.user}, {"from": "gpt", "value": self.response}]}


def sft_examples(traj: OracleTrajectory, run: AgentRun) -> list[SFTExample]:
    """One example per AgentFold step of an oracle run (``keep_contexts=True``), after the
    Fold-Generator checks: every response round-trips through the parser, the run answered
    correctly, and every needed-fact probe is answered from the context (:func:`probe_retention`). Raises ``ValueError`` naming the
    failed check."""
    if run.status != "answered" or run.answer != traj.answer:
        raise ValueError(f"{traj.question.qid}: run did not answer correctly (status={run.status})")
    probes = probe_retention(traj, lambda u: run.contexts[u].render(), ContextReader())
    if not all(p["correct"] for p in probes):
        raise ValueError(f"{traj.question.qid}: a needed fact could not be read back from the context")
    out = []
    for t, (ctx, rec) in enumerate(zip(run.contexts, run.turns)):
        if parse_response(rec.response, t) != run.responses[t]:
            raise ValueError(f"{traj.question.qid} turn {t}: response does not round-trip through the parser")
        msgs = ctx.messages(False)  # oracle runs end before the final-turn suffix
        out.append(SFTExample(f"{traj.question.qid}-t{t}", msgs[0]["content"], msgs[1]["content"], rec.response, t))
    return out


def write_sharegpt_jsonl(examples: Sequence[SFTExample], path: str | Path) -> Path:
    """Writes ShareGPT-style JSONL (``{"id", "system", "conversations": [human, gpt]}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.sharegpt(), ensure_ascii=False) + "\n")
    return path


def sft_token_mask(example: SFTExample, counter) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated example and a loss mask that is 1 exactly on the
    response tokens (and the closing ``<|im_end|>``).

    Args:
        counter: a :class:`~jaxstack.agents.tokens.BPETokenCounter`.
    """
    prompt = render_chat([{"role": "system", "content": example.system}, {"role": "user", "content": example.user}],
                         add_generation_prompt=True)
    text = prompt + example.response + CHATML.end
    enc = counter.encode(text)
    mask = [1 if start >= len(prompt) else 0 for start, _end in enc.offsets]
    return list(enc.ids), mask
