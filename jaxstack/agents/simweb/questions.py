"""SimWeb questions with gold answers, evidence and plan graphs, generated from a :class:`World`.

* :func:`bridge_question`: a k-hop chain ("the birthplace of the founder of the publisher of X");
* :func:`comparison_question`: fan-out then join ("who was born earlier: A's author or B's founder?");
* :func:`constraint_question`: BrowseComp-style inverted constraints with dead-end candidates.

Each function takes the world first; :class:`~.tools.SimWeb` has them as methods.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jaxstack.agents.gap.plan import PlanGraph, PlanNode
from jaxstack.agents.simweb.world import ENTITY_RELATIONS, GOALS, PHRASES, Fact, World


@dataclass(frozen=True)
class Question:
    """A question with its gold answer, evidence and dependency graph.

    Attributes:
        qid: stable id.
        kind: "bridge", "comparison" or "constraint".
        text: the question.
        answer: gold answer (an entity name).
        evidence_urls: pages that state the gold facts.
        facts: the gold facts in the order they are needed.
        graph: the gold :class:`~jaxstack.agents.gap.PlanGraph` over the ``lookup`` / ``compare``
            / ``filter`` tools; executing it on this world yields ``answer``.
        hops: for bridge questions the chain of ``(subject, relation)`` lookups.
        candidates: for constraint questions, the candidates a solver must rule out, each
            ``(name, failing relation)``; the gold answer is not among them.
        constraints: for constraint questions, ``relation -> required object``.
    """

    qid: str
    kind: str
    text: str
    answer: str
    evidence_urls: tuple[str, ...]
    facts: tuple[Fact, ...]
    graph: PlanGraph
    hops: tuple[tuple[str, str], ...] = ()
    candidates: tuple[tuple[str, str], ...] = ()
    constraints: tuple[tuple[str, str], ...] = ()


def questions(world: World, n: int, *, seed: int = 0, kinds=("bridge", "comparison", "constraint"),
              hops: tuple[int, int] = (2, 4), fan_out: tuple[int, int] = (2, 3)) -> list[Question]:
    """``n`` questions cycling through ``kinds`` (deterministic in ``seed``)."""
    for k in kinds:
        if k not in ("bridge", "comparison", "constraint"):
            raise ValueError(f"unknown question kind {k!r}")
    rng = random.Random(f"simweb-questions-{world.config.seed}-{seed}")
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "bridge":
            q = bridge_question(world, rng.randint(*hops), rng, qid=f"q{i}")
        elif kind == "comparison":
            q = comparison_question(world, rng.randint(*fan_out), rng, qid=f"q{i}")
        else:
            q = constraint_question(world, rng, qid=f"q{i}")
        out.append(q)
    return out


def bridge_question(world: World, k: int, rng: random.Random, qid: str = "q") -> Question:
    """A k-hop chain: "What is the birthplace of the founder of the publisher of X?"."""
    if k < 1:
        raise ValueError(f"k (hops) must be >= 1, got {k}")
    for _ in range(1000):
        start = rng.choice([e for e in world.entities.values() if e.kind in ("work", "org", "person")])
        chain, cur, seen = [], start, {start.id}
        for _h in range(k):
            rels = [r for r, (sk, _) in ENTITY_RELATIONS.items() if sk == cur.kind
                    and cur.attrs.get(r) not in seen]
            if not rels:
                break
            r = rng.choice(sorted(rels))
            chain.append((cur.id, r))
            cur = world.entities[cur.attrs[r]]
            seen.add(cur.id)
        if len(chain) == k:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"could not build a {k}-hop chain")
    phrase = start.name
    for _, r in chain:
        phrase = PHRASES[r].format(x=phrase)
    facts = tuple(world.fact(s, r) for s, r in chain)
    nodes = []
    for j, (s, r) in enumerate(chain):
        subj = world.name(s) if j == 0 else f"${j}"
        nodes.append(PlanNode(str(j + 1), "lookup", {"subject": subj, "relation": r},
                              tuple([] if j == 0 else [str(j)]),
                              GOALS[r].format(x=world.name(s) if j == 0 else f"the answer of T{j}")))
    return Question(qid, "bridge", f"What is {phrase}?", cur.name,
                    tuple(f.url for f in facts), facts, PlanGraph(tuple(nodes)),
                    hops=tuple((world.name(s), r) for s, r in chain))


def comparison_question(world: World, m: int, rng: random.Random, qid: str = "q") -> Question:
    """Fan-out then join: "Who was born earlier: the author of A or the founder of B?".

    Each of the ``m`` branches resolves a person through one hop (or names them
    directly), then looks up ``birth_year``; a ``compare`` node picks the earliest.
    """
    if m < 2:
        raise ValueError(f"m (fan-out) must be >= 2, got {m}")
    for _ in range(1000):
        starts = rng.sample([e for e in world.entities.values() if e.kind in ("work", "org")], m)
        rel = {"work": "authored_by", "org": "founded_by"}
        persons = [s.attrs[rel[s.kind]] for s in starts]
        years = [world.entities[p].attrs["birth_year"] for p in persons]
        if len(set(persons)) == m and len(set(years)) == m:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not build a comparison question")
    phrases = [PHRASES[rel[s.kind]].format(x=s.name) for s in starts]
    text = f"Who was born earliest: {', '.join(phrases[:-1])} or {phrases[-1]}?" if m > 2 else \
        f"Who was born earlier: {phrases[0]} or {phrases[1]}?"
    answer = world.name(persons[years.index(min(years))])
    nodes, facts, cand_ids, year_ids = [], [], [], []
    for s, p in zip(starts, persons):
        a = str(len(nodes) + 1)
        nodes.append(PlanNode(a, "lookup", {"subject": s.name, "relation": rel[s.kind]}, (),
                              GOALS[rel[s.kind]].format(x=s.name)))
        b = str(len(nodes) + 1)
        nodes.append(PlanNode(b, "lookup", {"subject": f"${a}", "relation": "birth_year"}, (a,),
                              f"In which year was the answer of T{a} born?"))
        facts += [world.fact(s.id, rel[s.kind]), world.fact(p, "birth_year")]
        cand_ids.append(a)
        year_ids.append(b)
    j = str(len(nodes) + 1)
    nodes.append(PlanNode(j, "compare", {"items": [f"${a}" for a in cand_ids],
                                         "values": [f"${b}" for b in year_ids], "op": "min"},
                          tuple(cand_ids + year_ids), "Compare the birth years"))
    return Question(qid, "comparison", text, answer, tuple(f.url for f in facts), tuple(facts),
                    PlanGraph(tuple(nodes)))


def constraint_question(world: World, rng: random.Random, qid: str = "q") -> Question:
    """BrowseComp-style inverted constraints with dead-end candidates:
    "Which person who received the A Prize was born in C and wrote a work published by O?"

    The candidates are the award's other laureates, each failing at least one constraint.
    """
    people = [e for e in world.entities.values() if e.kind == "person" and e.awards]
    for _ in range(2000):
        p = rng.choice(people)
        works = world.works_of(p.id)
        if not works:
            continue
        award = rng.choice(p.awards)[0]
        work = rng.choice(works)
        org = work.attrs["published_by"]
        city = p.attrs["born_in"]
        laureates = [e for e in world.entities.values() if e.kind == "person"
                     and any(a == award for a, _ in e.awards) and e.id != p.id]

        def fails(e):
            if e.attrs["born_in"] != city:
                return "born_in"
            if not any(w.attrs["published_by"] == org for w in world.works_of(e.id)):
                return "published_by"
            return None

        cands = [(e.name, fails(e)) for e in laureates]
        if len(cands) >= 2 and all(f is not None for _, f in cands):
            break
    else:  # pragma: no cover
        raise RuntimeError("could not build a constraint question")
    text = (f"Which person who received the {world.name(award)} was born in {world.name(city)} "
            f"and wrote a work published by {world.name(org)}?")
    hub = world.hub_url("award", award)
    facts = (Fact(world.name(award), "laureates", p.name, next(s for s in world.pages[hub].sentences if p.name in s), hub),
             world.fact(p.id, "born_in"), world.fact(work.id, "authored_by"), world.fact(work.id, "published_by"))
    names = sorted([p.name] + [c for c, _ in cands])
    nodes = []
    for i, n in enumerate(names):
        nodes.append(PlanNode(str(2 * i + 1), "lookup", {"subject": n, "relation": "born_in"}, (),
                              GOALS["born_in"].format(x=n)))
        nodes.append(PlanNode(str(2 * i + 2), "lookup", {"subject": n, "relation": "publishers"}, (),
                              f"Which organisations published the works of {n}?"))
    j = str(len(nodes) + 1)
    conditions = [[[f"${2 * i + 1}" for i in range(len(names))], "equals", world.name(city)],
                  [[f"${2 * i + 2}" for i in range(len(names))], "contains", world.name(org)]]
    nodes.append(PlanNode(j, "filter", {"items": names, "conditions": conditions},
                          tuple(n.id for n in nodes), "Keep the candidate meeting every constraint"))
    return Question(qid, "constraint", text, p.name, tuple(dict.fromkeys(f.url for f in facts)), facts,
                    PlanGraph(tuple(nodes)), candidates=tuple(cands),
                    constraints=(("award", world.name(award)), ("born_in", world.name(city)),
                                 ("published_by", world.name(org))))
