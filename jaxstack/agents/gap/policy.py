"""A planning policy that can be wrong: the gold plan of a question, written with a stated error model.

:class:`NoisyPlanner` is an :class:`~jaxstack.agents.llm.LLMClient` for :func:`~.loop.run_episode`. It
knows how to decompose the question (the gold :class:`~.plan.PlanGraph`) but not the answers of its
sub-questions: it learns those only from the observations the loop sends back, and it answers from
them. It makes three kinds of error, at the rates of :class:`PolicyErrors`:

* **missed dependency** (per dependency edge of the plan): the planner believes the child task does
  not need the parent. A policy that plans ahead (the ``gap`` and ``graph_*`` regimes) then issues the
  child before the parent's result is in, with a guessed (hallucinated) argument; once it sees the
  parent's result it notices the mismatch with probability ``notice`` and re-issues the child (and
  what was built on it), otherwise it keeps the wrong value. A ReAct policy issues every call after
  reading the previous observation, so this error cannot bite it;
* **wrong tool argument** (per call issued, retries included): the relation argument is garbled, the
  tool raises, the observation says so, and the policy re-issues the call on a later turn;
* **premature answer** (per LLM call made while sub-questions are unresolved): the policy answers with
  a guess from what it has (a resolved entity, or a hallucinated one).

Every random draw is a hash of ``(seed, kind, node, attempt)`` (or of the call index for premature
answers), so the *same* errors hit the same tasks under every regime.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from jaxstack.agents.gap.formats import render_gap_plan
from jaxstack.agents.gap.loop import SCHEDULES, parse_observations
from jaxstack.agents.gap.plan import LOCAL_TOOLS, PlanGraph, placeholders, substitute, topo_order
from jaxstack.agents.llm import Completion
from jaxstack.data.chat import validate_messages


@dataclass(frozen=True)
class PolicyErrors:
    """Error rates of :class:`NoisyPlanner` (probabilities in [0, 1]; see the module docstring).

    Attributes:
        missed_dependency: per dependency edge, the planner drops it.
        wrong_argument: per tool call issued, its relation argument is garbled (the tool errors).
        premature_answer: per LLM call with unresolved tasks, the policy answers with a guess.
        notice: chance that a guessed argument is caught once the parent's real result is observed.
    """

    missed_dependency: float = 0.0
    wrong_argument: float = 0.0
    premature_answer: float = 0.0
    notice: float = 0.5

    def __post_init__(self):
        for name in ("missed_dependency", "wrong_argument", "premature_answer", "notice"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PolicyErrors.{name} must be a probability in [0, 1], got {value}")

    def scaled(self, factor: float) -> PolicyErrors:
        """The three error rates times ``factor`` (clipped to 1); ``notice`` unchanged."""
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        return replace(self, missed_dependency=min(1.0, self.missed_dependency * factor),
                       wrong_argument=min(1.0, self.wrong_argument * factor),
                       premature_answer=min(1.0, self.premature_answer * factor))


def _draw(seed, *key) -> float:
    """A uniform number in [0, 1) that is a pure function of ``(seed, key)``."""
    digest = hashlib.sha256(json.dumps([seed, *key], default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _rng(seed, *key) -> random.Random:
    """A generator that is a pure function of ``(seed, key)``."""
    return random.Random(json.dumps([seed, *key], default=str))


class NoisyPlanner:
    """The gold plan, executed by a policy with :class:`PolicyErrors` (see the module docstring).

    Args:
        graph: the question's gold plan (``lookup`` tool nodes; the sink may be a local
            ``compare`` / ``filter`` node, which the policy evaluates itself when it answers).
        regime: a key of :data:`~.loop.SCHEDULES`: ``react`` issues one call per turn; ``gap`` writes
            a ``<plan>`` first and then issues every task whose believed dependencies are resolved;
            ``graph_level`` / ``graph_eager`` write the whole remaining plan (``$k`` placeholders,
            ``join()``) in one response and re-plan failed tasks.
        errors: the error rates.
        seed: the seed of every draw.
        reason: the local reasoning tools (``compare``, ``filter``) the policy applies when answering.
        guess: ``(node id, rng) -> str``: a plausible but hallucinated argument for the placeholder
            of node ``node id`` (or, for the sink, a hallucinated answer).
    """

    def __init__(self, graph: PlanGraph, regime: str, errors: PolicyErrors, *, seed,
                 reason: Mapping[str, Callable], guess: Callable[[str, random.Random], str]):
        if regime not in SCHEDULES:
            raise ValueError(f"regime must be one of {sorted(SCHEDULES)}, got {regime!r}")
        if not all(i.isdigit() for i in graph.ids):
            raise ValueError(f"graph ids must be digits (LLMCompiler numbering), got {graph.ids}")
        self.graph, self.regime, self.errors, self.seed = graph, regime, errors, seed
        self.reason, self.guess = reason, guess
        self.order = topo_order(graph)
        self.tasks = [n for n in (graph.node(i) for i in self.order) if n.tool not in LOCAL_TOOLS]
        self.sink = graph.node(self.order[-1])
        # the planner's belief: dependency edges it did not drop
        self.believed = {n.id: tuple(d for d in n.depends_on if _draw(seed, "missed_dependency", n.id, d)
                                     >= errors.missed_dependency) for n in graph.nodes}
        self.values: dict[str, str] = {}       # resolved task -> the output the policy accepted
        self.attempts: dict[str, int] = {}     # task -> calls issued so far
        self.guessed: dict[str, str] = {}      # task issued or resolved with a hallucinated argument
        self.calls = 0
        self.counts = {"guessed_arguments": 0, "noticed_guesses": 0, "garbled_arguments": 0, "premature": 0}

    # ------------------------------------------------------------------ state
    def _observe(self, messages) -> None:
        last = messages[-1]["content"] if messages[-1]["role"] == "user" else ""
        for nid, (ok, out) in parse_observations(last).items():
            if ok:
                self.values[nid] = out
            else:
                self.guessed.pop(nid, None)
        # a guessed argument is checked once the real parent result is known
        for nid in sorted(self.guessed, key=self.order.index):
            if nid not in self.values:
                continue
            parents = self.graph.node(nid).depends_on
            if not all(p in self.values for p in parents):
                continue
            attempt = self.attempts[nid]
            if _draw(self.seed, "notice", nid, attempt) < self.errors.notice:
                self.counts["noticed_guesses"] += 1
                self._reset(nid)
            else:
                del self.guessed[nid]  # accepted: the wrong value stays

    def _reset(self, nid: str) -> None:
        """Forgets ``nid`` and every resolved task computed from it."""
        self.values.pop(nid, None)
        self.guessed.pop(nid, None)
        children = self.graph.children()
        for c in children[nid]:
            if c in self.values:
                self._reset(c)

    def _pending(self) -> list:
        return [n for n in self.tasks if n.id not in self.values]

    # ------------------------------------------------------------------ actions
    def _answer(self) -> str:
        if self.sink.tool in LOCAL_TOOLS:
            return str(self.reason[self.sink.tool](**substitute(self.sink.args, self.values)))
        return self.values[self.sink.id]

    def _guess_answer(self, rng: random.Random) -> str:
        entities = sorted({v for v in self.values.values() if not v.isdigit() and "|" not in v})
        return rng.choice(entities) if entities else self.guess(self.sink.id, rng)

    def _call_args(self, node, use_placeholders: bool) -> tuple[dict, bool]:
        """Arguments for issuing ``node`` now: resolved parents substituted; an unresolved parent
        that the planner believes in stays a ``$k`` placeholder (graph regimes only); an unresolved
        parent it dropped is replaced by a hallucinated value. Returns (args, guessed)."""
        guessed = False
        out = {}
        for key, value in node.args.items():
            if isinstance(value, str):
                for p in placeholders(value):
                    if p in self.values:
                        value = substitute(value, {p: self.values[p]})
                    elif p in self.believed[node.id] and use_placeholders:
                        continue
                    else:
                        value = substitute(value, {p: self.guess(node.id, _rng(self.seed, "guess", node.id))})
                        guessed = True
            out[key] = value
        attempt = self.attempts.get(node.id, 0)
        if "relation" in out and _draw(self.seed, "wrong_argument", node.id, attempt) < self.errors.wrong_argument:
            out["relation"] = out["relation"] + "_of"  # no such relation: the tool raises
            self.counts["garbled_arguments"] += 1
        return out, guessed

    def _issue(self) -> list[tuple[str, dict]]:
        pending = self._pending()
        if self.regime == "react":
            ready = [n for n in pending if all(p in self.values for p in n.depends_on)]
            chosen = ready[:1]
        elif self.regime == "gap":
            chosen = [n for n in pending if all(p in self.values for p in self.believed[n.id])]
        else:  # whole remaining plan
            chosen = pending
        use_placeholders = self.regime.startswith("graph")
        issued = []
        for n in chosen:
            args, guessed = self._call_args(n, use_placeholders)
            self.attempts[n.id] = self.attempts.get(n.id, 0) + 1
            if guessed:
                self.guessed[n.id] = args.get("subject", "")
                self.counts["guessed_arguments"] += 1
            issued.append((n.id, args))
        return issued

    def _render_calls(self, issued) -> str:
        lines = []
        for nid, args in issued:
            node = self.graph.node(nid)
            lines.append(f"{nid}. {node.tool}({', '.join(json.dumps(v) for v in args.values())})")
        if self.regime.startswith("graph"):
            last = max(int(i) for i in self.graph.ids) + 1
            lines.append(f"{last}. join()")
            lines.append("<END_OF_PLAN>")
        return "\n".join(lines)

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        validate_messages(messages)
        call_index = self.calls
        self.calls += 1
        self._observe(messages)
        if not self._pending():
            return Completion(f"<think>All tasks are resolved.</think>\n<answer>{self._answer()}</answer>")
        if _draw(self.seed, "premature_answer", call_index) < self.errors.premature_answer:
            self.counts["premature"] += 1
            guess = self._guess_answer(_rng(self.seed, "premature_guess", call_index))
            return Completion(f"<think>I can answer already.</think>\n<answer>{guess}</answer>")
        head = ""
        if self.regime == "gap" and call_index == 0:
            believed = PlanGraph(tuple(replace(n, id=f"T{n.id}", depends_on=tuple(f"T{d}" for d in self.believed[n.id]))
                                       for n in self.tasks))
            head = render_gap_plan(believed) + "\n"
        issued = self._issue()
        if self.regime == "react":  # one task per call: its reasoning is the task itself
            think = f"<think>{self.graph.node(issued[0][0]).description}</think>\n"
        else:  # the plan holds the reasoning; a batch only says what runs together
            think = f"<think>Run tasks {', '.join(i for i, _ in issued)} now.</think>\n"
        return Completion(head + think + self._render_calls(issued))
