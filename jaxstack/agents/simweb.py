"""SimWeb: a seeded, offline simulated web for agent experiments.

Everything here is a pure function of ``(WorldConfig, seed)``: the entity graph, the pages, the
BM25 index, the questions with their gold answers / evidence / dependency graphs, and the tool
latencies. Nothing is downloaded.

World: people, organisations, cities, works and awards with typed relations (``born_in``,
``birth_year``, ``employer``, ``award``, ``founded_by``, ``located_in``, ``founded_year``,
``authored_by``, ``published_by``, ``published_year``). Each entity has a page at
``sim://wiki/<slug>`` stating its facts as canonical sentences (:attr:`Fact.sentence`) mixed with
distractor sentences; hub pages ("People born in X", "List of Y laureates") and near-duplicate
decoy pages (same name, different facts) make naive search hit dead ends.

Tools, with the output *shapes* of the public AgentFold tools (a Serper-style search and a
goal-conditioned extractive visit) and of GAP's wiki search:

* :meth:`SimWeb.search` ``(query: list[str]) -> str``: BM25 top-10 per query.
* :meth:`SimWeb.visit` ``(url: list[str], goal: str) -> str``: the page's sentences ranked by BM25
  against the goal (extractive "Evidence" and "Summary"); ``raw=True`` returns whole pages.
* :meth:`SimWeb.wiki_search` ``(query: str) -> str``: top-3 ``Doc i(Title: "...") ...``.
* :meth:`SimWeb.lookup` ``(subject: str, relation: str) -> str``: a structured knowledge-base tool
  returning the object of a relation; it is what the GAP plan graphs call so placeholders such
  as ``$1`` can be substituted with an entity name.

Latency: :class:`LatencyModel` gives every call a log-normal latency that is a deterministic
hash of ``(seed, tool, arguments)``, independent of call order; :class:`VirtualClock` and
:meth:`SimWeb.acall` (real ``asyncio.sleep`` scaled by a factor) use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from jaxstack.agents.gap import PlanGraph, PlanNode

__all__ = [
    "WorldConfig",
    "Entity",
    "Fact",
    "Page",
    "Question",
    "BM25",
    "LatencyModel",
    "VirtualClock",
    "ToolError",
    "SimWeb",
    "VISIT_FAILURE",
    "ENTITY_RELATIONS",
]

VISIT_FAILURE = "The webpage cannot be accessed. Please check the URL or file format."

#: relation -> (subject kind, object kind or "year")
_RELATIONS = {
    "born_in": ("person", "city"),
    "birth_year": ("person", "year"),
    "employer": ("person", "org"),
    "founded_by": ("org", "person"),
    "located_in": ("org", "city"),
    "founded_year": ("org", "year"),
    "authored_by": ("work", "person"),
    "published_by": ("work", "org"),
    "published_year": ("work", "year"),
}
#: relations whose object is another entity (usable as a bridge hop)
ENTITY_RELATIONS = {r: k for r, k in _RELATIONS.items() if k[1] != "year"}

_SENTENCE = {
    "born_in": "{s} was born in {o}.",
    "birth_year": "{s} was born in the year {o}.",
    "employer": "{s} worked for {o}.",
    "award": "{s} received the {o} in {y}.",
    "founded_by": "{s} was founded by {o}.",
    "located_in": "{s} is headquartered in {o}.",
    "founded_year": "{s} was founded in the year {o}.",
    "authored_by": "{s} was written by {o}.",
    "published_by": "{s} was published by {o}.",
    "published_year": "{s} was published in the year {o}.",
}
_PHRASE = {
    "born_in": "the birthplace of {x}",
    "employer": "the employer of {x}",
    "founded_by": "the founder of {x}",
    "located_in": "the city where {x} is headquartered",
    "authored_by": "the author of {x}",
    "published_by": "the publisher of {x}",
}
_GOAL = {
    "born_in": "Where was {x} born?",
    "birth_year": "In which year was {x} born?",
    "employer": "Which organisation did {x} work for?",
    "founded_by": "By whom was {x} founded?",
    "located_in": "Where is {x} headquartered?",
    "founded_year": "In which year was {x} founded?",
    "authored_by": "By whom was {x} written?",
    "published_by": "By whom was {x} published?",
    "published_year": "In which year was {x} published?",
}

_SYL = ("ka", "lo", "mi", "ren", "tha", "vor", "el", "dan", "sia", "bru", "no", "qui", "fel",
        "ar", "tes", "mon", "ly", "gar", "pe", "zu", "hal", "bri", "sto", "ve", "rin", "cal")
_CITY_SUFFIX = ("ton", "ford", "grad", "haven", "mouth", "burg", "field", "port")
_ORG_SUFFIX = ("Institute", "Press", "Group", "Foundation", "Laboratories", "Company", "Society")
_ADJ = ("Silent", "Golden", "Broken", "Hidden", "Northern", "Crimson", "Last", "Distant", "Quiet",
        "Iron", "Pale", "Wandering", "Burning", "Hollow", "Bright", "Lost")
_NOUN = ("River", "Garden", "Mirror", "Harbor", "Lantern", "Forest", "Machine", "Archive", "Tide",
         "Bridge", "Orchard", "Compass", "Signal", "Tower", "Winter", "Theorem")
_FIELDS = ("chemistry", "architecture", "poetry", "economics", "astronomy", "music", "medicine",
           "linguistics", "sculpture", "mathematics")
_OCCUPATIONS = ("painter", "footballer", "politician", "singer", "engineer", "actor")
_FILLER_SUBJ = ("A local committee", "The regional archive", "A travelling exhibition",
                "An annual festival", "A later biography", "A documentary", "The city council",
                "A newspaper column", "A university course", "An online forum")
_FILLER_VERB = ("discussed", "briefly mentioned", "celebrated", "questioned", "reviewed",
                "compared", "revisited", "catalogued")
_FILLER_OBJ = ("the history of {t}", "early debates about {t}", "a collection of letters on {t}",
               "the influence of {t} on the region", "several anecdotes about {t}",
               "an exhibition on {t}", "a dispute over {t}")
_COUNTRIES = ("Averland", "Brisonia", "Caldora", "Dunmere", "Estravia")


@dataclass(frozen=True)
class WorldConfig:
    """Size and noise of a SimWeb world; every artifact is a pure function of this config.

    Attributes:
        seed: master seed.
        n_people, n_orgs, n_cities, n_works, n_awards: entity counts.
        distractors_min, distractors_max: distractor sentences per entity page (page length).
        decoy_fraction: fraction of people and organisations with a near-duplicate decoy page.
        year_range: (first, last) year for birth / founding / publication years.
    """

    seed: int = 0
    n_people: int = 160
    n_orgs: int = 48
    n_cities: int = 24
    n_works: int = 120
    n_awards: int = 6
    distractors_min: int = 4
    distractors_max: int = 24
    decoy_fraction: float = 0.3
    year_range: tuple[int, int] = (1900, 2020)

    def __post_init__(self):
        for name in ("n_people", "n_orgs", "n_cities", "n_works", "n_awards"):
            if getattr(self, name) < 2:
                raise ValueError(f"WorldConfig.{name} must be >= 2, got {getattr(self, name)}")
        if not 0 <= self.distractors_min <= self.distractors_max:
            raise ValueError(
                "WorldConfig.distractors_min/distractors_max must satisfy 0 <= min <= max, got "
                f"{self.distractors_min}, {self.distractors_max}"
            )
        if not 0.0 <= self.decoy_fraction <= 1.0:
            raise ValueError(f"WorldConfig.decoy_fraction must be in [0, 1], got {self.decoy_fraction}")
        if self.year_range[1] - self.year_range[0] < 30:
            raise ValueError(f"WorldConfig.year_range must span >= 30 years, got {self.year_range}")


@dataclass(frozen=True)
class Entity:
    """One entity: ``attrs`` maps relation -> object id (entities) or int (years);
    ``awards`` lists ``(award id, year)``."""

    id: str
    kind: str
    name: str
    url: str
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    awards: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Fact:
    """A gold fact: ``sentence`` is stated verbatim on the page at ``url``."""

    subject: str
    relation: str
    object: str
    sentence: str
    url: str


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    sentences: tuple[str, ...]
    kind: str  # "entity", "decoy" or "hub"
    entity_id: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


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


class ToolError(RuntimeError):
    """A SimWeb tool was called with arguments it cannot serve."""


# --------------------------------------------------------------------------- BM25

_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class BM25:
    """Okapi BM25 over a list of documents (k1=1.2, b=0.75), with a deterministic tie-break
    on document index."""

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75):
        if not docs:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b = k1, b
        self.n = len(docs)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, d in enumerate(docs):
            tf = Counter(_terms(d))
            self.lengths.append(sum(tf.values()))
            for t, c in tf.items():
                self.postings[t].append((i, c))
        self.avgdl = max(1e-9, sum(self.lengths) / self.n)
        self.idf = {
            t: math.log(1 + (self.n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()
        }

    def scores(self, query: str) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for t in set(_terms(query)):
            idf = self.idf.get(t)
            if idf is None:
                continue
            for i, c in self.postings[t]:
                norm = c + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avgdl)
                out[i] += idf * c * (self.k1 + 1) / norm
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        s = self.scores(query)
        return sorted(s.items(), key=lambda x: (-x[1], x[0]))[:k]


# --------------------------------------------------------------------------- latency / clock


def _unit_hash(*parts: Any) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return (int.from_bytes(h[:8], "big") + 0.5) / 2**64


@dataclass(frozen=True)
class LatencyModel:
    """Log-normal tool latencies (seconds), a deterministic hash of ``(seed, tool, args)``.

    ``means`` maps tool name -> mean latency; ``sigma`` is the log-space standard deviation;
    ``llm_turn`` is the (fixed) latency charged per LLM call by the experiments.
    """

    seed: int = 0
    means: tuple[tuple[str, float], ...] = (
        ("search", 0.3), ("visit", 1.2), ("wiki_search", 0.3), ("lookup", 0.3),
        ("compare", 0.0), ("filter", 0.0), ("join", 0.0),
    )
    sigma: float = 0.5
    llm_turn: float = 1.0

    def __post_init__(self):
        if self.sigma < 0:
            raise ValueError(f"LatencyModel.sigma must be >= 0, got {self.sigma}")
        for name, m in self.means:
            if m < 0:
                raise ValueError(f"LatencyModel.means[{name!r}] must be >= 0, got {m}")

    def mean(self, tool: str) -> float:
        d = dict(self.means)
        if tool not in d:
            raise KeyError(f"LatencyModel has no latency for tool {tool!r}; known: {sorted(d)}")
        return d[tool]

    def latency(self, tool: str, args: Any) -> float:
        """Seconds for one call of ``tool`` with ``args``; same inputs, same latency."""
        mean = self.mean(tool)
        if mean == 0:
            return 0.0
        z = NormalDist().inv_cdf(_unit_hash(self.seed, tool, args))
        mu = math.log(mean) - self.sigma**2 / 2
        return math.exp(mu + self.sigma * z)


class VirtualClock:
    """A deterministic clock: ``now`` only moves when :meth:`advance_to` / :meth:`advance` is
    called. Used by the virtual-time executor and the experiments' makespan accounting."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.now += seconds
        return self.now

    def advance_to(self, t: float) -> float:
        if t < self.now:
            raise ValueError(f"cannot move the virtual clock back from {self.now} to {t}")
        self.now = float(t)
        return self.now


# --------------------------------------------------------------------------- the world


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class SimWeb:
    """The simulated web. Build with ``SimWeb(WorldConfig(seed=...))``.

    Attributes:
        config: the :class:`WorldConfig`.
        entities: id -> :class:`Entity`.
        pages: url -> :class:`Page` (entity, decoy and hub pages).
        latency: the :class:`LatencyModel` used by :meth:`acall` and the executors.
    """

    def __init__(self, config: WorldConfig | None = None, latency: LatencyModel | None = None):
        self.config = config or WorldConfig()
        self.latency = latency or LatencyModel(seed=self.config.seed)
        self._rng = random.Random(self.config.seed)
        self.entities: dict[str, Entity] = {}
        self._by_name: dict[str, str] = {}
        self._build_entities()
        self.pages: dict[str, Page] = {}
        self._build_pages()
        self._urls = list(self.pages)
        self._index = BM25([f"{self.pages[u].title} {self.pages[u].title} {self.pages[u].text}" for u in self._urls])
        self._sentence_index: dict[str, BM25] = {}

    # ------------------------------------------------------------------ generation
    def _unique(self, make, used: set[str]) -> str:
        for _ in range(10_000):
            name = make()
            if name not in used:
                used.add(name)
                return name
        raise RuntimeError("could not generate a unique name; enlarge the syllable lists")

    def _word(self, n_syl: int) -> str:
        return "".join(self._rng.choice(_SYL) for _ in range(n_syl)).capitalize()

    def _build_entities(self):
        c, rng = self.config, self._rng
        used: set[str] = set()
        y0, y1 = c.year_range

        def add(kind, i, name, **attrs):
            eid = f"{kind}{i}"
            ent = Entity(eid, kind, name, f"sim://wiki/{_slug(name)}", attrs)
            self.entities[eid] = ent
            self._by_name[name] = eid
            return ent

        cities = [add("city", i, self._unique(lambda: self._word(2) + rng.choice(_CITY_SUFFIX), used),
                      country=rng.choice(_COUNTRIES)) for i in range(c.n_cities)]
        awards = [add("award", i, self._unique(lambda: f"{self._word(2)} Prize", used))
                  for i in range(c.n_awards)]
        people = []
        for i in range(c.n_people):
            name = self._unique(lambda: f"{self._word(2)} {self._word(2)}", used)
            people.append(add("person", i, name, born_in=rng.choice(cities).id,
                              birth_year=rng.randint(y0, y1 - 30), field=rng.choice(_FIELDS)))
        orgs = []
        for i in range(c.n_orgs):
            name = self._unique(lambda: f"{self._word(2)} {rng.choice(_ORG_SUFFIX)}", used)
            orgs.append(add("org", i, name, founded_by=rng.choice(people).id,
                            located_in=rng.choice(cities).id, founded_year=rng.randint(y0, y1)))
        for p in people:
            p.attrs["employer"] = rng.choice(orgs).id
        for i in range(c.n_works):
            name = self._unique(lambda: f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)} of {self._word(2)}", used)
            add("work", i, name, authored_by=rng.choice(people).id, published_by=rng.choice(orgs).id,
                published_year=rng.randint(y0 + 20, y1))
        # awards: each person has 0-2 awards, years after birth
        for p in people:
            k = rng.choice((0, 0, 1, 1, 2))
            aw = tuple(sorted({(rng.choice(awards).id, rng.randint(p.attrs["birth_year"] + 25, y1))
                               for _ in range(k)}))
            self.entities[p.id] = Entity(p.id, p.kind, p.name, p.url, p.attrs, aw)

    def name(self, eid: str) -> str:
        return self.entities[eid].name

    def entity_by_name(self, name: str) -> Entity:
        if name not in self._by_name:
            raise ToolError(f"unknown entity {name!r}")
        return self.entities[self._by_name[name]]

    def fact(self, subject_id: str, relation: str) -> Fact:
        """The canonical :class:`Fact` for ``relation`` of entity ``subject_id``."""
        ent = self.entities[subject_id]
        if relation not in ent.attrs or relation not in _SENTENCE:
            raise ToolError(f"entity {ent.name!r} has no relation {relation!r}")
        v = ent.attrs[relation]
        obj = self.name(v) if isinstance(v, str) else str(v)
        return Fact(ent.name, relation, obj, _SENTENCE[relation].format(s=ent.name, o=obj), ent.url)

    def award_facts(self, subject_id: str) -> list[Fact]:
        ent = self.entities[subject_id]
        return [Fact(ent.name, "award", self.name(a),
                     _SENTENCE["award"].format(s=ent.name, o=self.name(a), y=y), ent.url)
                for a, y in ent.awards]

    def works_of(self, person_id: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == "work" and e.attrs["authored_by"] == person_id]

    def _filler(self, rng: random.Random, topic: str) -> str:
        obj = rng.choice(_FILLER_OBJ).format(t=topic)
        year = rng.randint(*self.config.year_range)
        return f"In {year}, {rng.choice(_FILLER_SUBJ).lower()} {rng.choice(_FILLER_VERB)} {obj}."

    def _entity_sentences(self, ent: Entity) -> list[str]:
        out = [self.fact(ent.id, r).sentence for r in ent.attrs if r in _SENTENCE]
        if ent.kind == "person":
            out += [f.sentence for f in self.award_facts(ent.id)]
            out.append(f"{ent.name} is known for work in {ent.attrs['field']}.")
        if ent.kind == "city":
            out.append(f"{ent.name} is a city in {ent.attrs['country']}.")
        if ent.kind == "award":
            out.append(f"The {ent.name} is awarded annually for distinguished achievement.")
        return out

    def _build_pages(self):
        c = self.config
        rng = random.Random(c.seed * 7919 + 1)
        topics = [e.name for e in self.entities.values()]
        for ent in self.entities.values():
            sents = self._entity_sentences(ent)
            fill = [self._filler(rng, rng.choice(topics)) for _ in range(rng.randint(c.distractors_min, c.distractors_max))]
            sents = sents + fill
            rng.shuffle(sents)
            self.pages[ent.url] = Page(ent.url, ent.name, tuple(sents), "entity", ent.id)
        # near-duplicate decoys: same name, different (false) facts about a different namesake
        for ent in list(self.entities.values()):
            if ent.kind not in ("person", "org") or rng.random() >= c.decoy_fraction:
                continue
            occ = rng.choice(_OCCUPATIONS)
            title = f"{ent.name} ({occ})"
            city = self.name(rng.choice([e.id for e in self.entities.values() if e.kind == "city"]))
            year = rng.randint(*c.year_range)
            if ent.kind == "person":
                facts = [f"{ent.name} was a {occ} from {city}.",
                         f"The {occ} {ent.name} was born around {year}.",
                         f"Not to be confused with the {ent.attrs['field']} figure of the same name."]
            else:
                facts = [f"{ent.name} was a small {occ} collective in {city}.",
                         f"The collective called {ent.name} disbanded in {year}."]
            fill = [self._filler(rng, rng.choice(topics)) for _ in range(rng.randint(c.distractors_min, c.distractors_max))]
            sents = facts + fill
            rng.shuffle(sents)
            url = f"sim://wiki/{_slug(ent.name)}_{occ}"
            self.pages[url] = Page(url, title, tuple(sents), "decoy", None)
        # hub pages
        by_city: dict[str, list[str]] = defaultdict(list)
        laureates: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for e in self.entities.values():
            if e.kind == "person":
                by_city[e.attrs["born_in"]].append(e.name)
                for a, y in e.awards:
                    laureates[a].append((e.name, y))
        for cid, names in sorted(by_city.items()):
            title = f"People born in {self.name(cid)}"
            url = f"sim://wiki/people_born_in_{_slug(self.name(cid))}"
            sents = [f"{title} include the following."] + [f"{n} is listed among people born in {self.name(cid)}." for n in sorted(names)]
            self.pages[url] = Page(url, title, tuple(sents), "hub", None)
        for aid, lst in sorted(laureates.items()):
            title = f"List of {self.name(aid)} laureates"
            url = f"sim://wiki/list_of_{_slug(self.name(aid))}_laureates"
            sents = [f"{title} by year."] + [f"{y}: the {self.name(aid)} went to {n}." for n, y in sorted(lst, key=lambda x: (x[1], x[0]))]
            self.pages[url] = Page(url, title, tuple(sents), "hub", None)

    def hub_url(self, kind: str, entity_id: str) -> str:
        """URL of the "born_in" hub of a city or the laureate list of an award."""
        n = _slug(self.name(entity_id))
        return f"sim://wiki/people_born_in_{n}" if kind == "born_in" else f"sim://wiki/list_of_{n}_laureates"

    # ------------------------------------------------------------------ tools
    @staticmethod
    def tool_specs() -> list[dict]:
        """JSON tool specs of ``search`` and ``visit`` (the public AgentFold parameter schemas)."""
        return [
            {"name": "search",
             "description": "Perform web searches then return the top 10 results for each query in one call.",
             "parameters": {"type": "object",
                            "properties": {"query": {"type": "array", "items": {"type": "string"},
                                                     "description": "A list of search queries."}},
                            "required": ["query"]}},
            {"name": "visit",
             "description": "Visit webpage(s) and return the summary of the content relevant to the goal.",
             "parameters": {"type": "object",
                            "properties": {"url": {"type": "array", "items": {"type": "string"},
                                                   "description": "The URL(s) of the webpage(s) to visit."},
                                           "goal": {"type": "string",
                                                    "description": "The goal of the visit for webpage(s)."}},
                            "required": ["url", "goal"]}},
        ]

    def _snippet(self, page: Page, query: str) -> str:
        idx = self._sentences(page.url)
        top = idx.top(query, 2)
        chosen = sorted(i for i, _ in top) or [0]
        return " ".join(page.sentences[i] for i in chosen)

    def _sentences(self, url: str) -> BM25:
        if url not in self._sentence_index:
            self._sentence_index[url] = BM25(list(self.pages[url].sentences))
        return self._sentence_index[url]

    def search_results(self, query: str, k: int = 10) -> list[str]:
        """URLs of the BM25 top-``k`` pages for one query."""
        return [self._urls[i] for i, _ in self._index.top(query, k)]

    def search(self, query: list[str], k: int = 10) -> str:
        """Batched web search: BM25 top-``k`` per query, Serper-like text, queries joined by
        ``\\n=======\\n``."""
        if isinstance(query, str) or not isinstance(query, (list, tuple)) or not query:
            raise ToolError("search: argument 'query' must be a non-empty list of strings")
        outs = []
        for q in query:
            if not isinstance(q, str):
                raise ToolError(f"search: every query must be a string, got {type(q).__name__}")
            urls = self.search_results(q, k)
            if not urls:
                outs.append(f"No results found for '{q}'. Try with a more general query.")
                continue
            items = []
            for i, u in enumerate(urls, 1):
                p = self.pages[u]
                items.append(f"{i}. [{p.title}]({u})\n{self._snippet(p, q)}")
            outs.append(f"A Google search for '{q}' found {len(items)} results:\n\n## Web Results\n" + "\n\n".join(items))
        return "\n=======\n".join(outs)

    def visit(self, url: list[str], goal: str, *, raw: bool = False, n_evidence: int = 5) -> str:
        """Goal-conditioned extractive visit: for each URL the sentences that best match ``goal``
        (BM25; at most ``n_evidence``, ten times that on hub pages, and only those scoring at
        least half the best; in page order) and a one-sentence summary; ``raw=True`` returns the
        full page text instead. Unknown URLs give the public code's failure message."""
        if isinstance(url, str) or not isinstance(url, (list, tuple)) or not url:
            raise ToolError("visit: argument 'url' must be a non-empty list of strings")
        if not isinstance(goal, str) or not goal.strip():
            raise ToolError("visit: argument 'goal' must be a non-empty string")
        outs = []
        for u in url:
            page = self.pages.get(u)
            if page is None:
                outs.append(VISIT_FAILURE)
                continue
            if raw:
                outs.append(f"# {page.title}\n\n{page.text}")
                continue
            cap = n_evidence if page.kind != "hub" else 10 * n_evidence
            top = self._sentences(u).top(goal, cap)
            top = [(i, sc) for i, sc in top if sc >= 0.5 * top[0][1]] if top else top
            if not top:
                outs.append(f"The useful information in {u} for user goal {goal} as follows: \n\n"
                            f"Evidence in page: \nThe page does not contain information relevant to the goal.\n\n"
                            f"Summary: \nNo relevant information about the goal was found on {page.title}.\n\n")
                continue
            evidence = "\n".join(page.sentences[i] for i in sorted(i for i, _ in top))
            summary = f"The page {page.title} states: {page.sentences[top[0][0]]}"
            outs.append(f"The useful information in {u} for user goal {goal} as follows: \n\n"
                        f"Evidence in page: \n{evidence}\n\nSummary: \n{summary}\n\n")
        return "\n=======\n".join(outs)

    def wiki_search(self, query: str, k: int = 3) -> str:
        """GAP-compat retrieval: top-``k`` ``Doc i(Title: "...") text`` (Search-R1 shape)."""
        if not isinstance(query, str) or not query.strip():
            raise ToolError("wiki_search: argument 'query' must be a non-empty string")
        docs = []
        for i, u in enumerate(self.search_results(query, k), 1):
            p = self.pages[u]
            docs.append(f'Doc {i}(Title: "{p.title}") {self._snippet(p, query)}')
        return "\n".join(docs)

    def lookup(self, subject: str, relation: str) -> str:
        """Structured KB lookup: the object (entity name or year) of ``relation`` for the entity
        named ``subject`` (for a person, ``"publishers"`` gives the ``|``-joined publishers of
        their works). Raises :class:`ToolError` naming the bad argument."""
        ent = self.entity_by_name(subject)
        if relation == "publishers" and ent.kind == "person":
            return "|".join(sorted({self.name(w.attrs["published_by"]) for w in self.works_of(ent.id)}))
        if relation not in ent.attrs or relation not in _SENTENCE:
            raise ToolError(f"lookup: entity {subject!r} has no relation {relation!r}")
        return self.fact(ent.id, relation).object

    def call(self, name: str, arguments: dict) -> str:
        """Dispatches a tool call ``{"name", "arguments"}`` to the matching tool."""
        tools = {"search": self.search, "visit": self.visit, "wiki_search": self.wiki_search,
                 "lookup": self.lookup}
        if name not in tools:
            raise ToolError(f"unknown tool {name!r}; known: {sorted(tools)}")
        if not isinstance(arguments, dict):
            raise ToolError(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
        try:
            return tools[name](**arguments)
        except TypeError as e:
            raise ToolError(f"{name}: bad arguments {sorted(arguments)}: {e}") from None

    async def acall(self, name: str, arguments: dict, *, time_scale: float = 0.01) -> str:
        """Asyncio mode: sleeps ``latency * time_scale`` real seconds, then returns ``call``."""
        await asyncio.sleep(self.latency.latency(name, arguments) * time_scale)
        return self.call(name, arguments)

    # ------------------------------------------------------------------ questions
    def questions(self, n: int, *, seed: int = 0, kinds=("bridge", "comparison", "constraint"),
                  hops: tuple[int, int] = (2, 4), fan_out: tuple[int, int] = (2, 3)) -> list[Question]:
        """``n`` questions cycling through ``kinds`` (deterministic in ``seed``)."""
        for k in kinds:
            if k not in ("bridge", "comparison", "constraint"):
                raise ValueError(f"unknown question kind {k!r}")
        rng = random.Random(f"simweb-questions-{self.config.seed}-{seed}")
        out = []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            if kind == "bridge":
                q = self.bridge_question(rng.randint(*hops), rng, qid=f"q{i}")
            elif kind == "comparison":
                q = self.comparison_question(rng.randint(*fan_out), rng, qid=f"q{i}")
            else:
                q = self.constraint_question(rng, qid=f"q{i}")
            out.append(q)
        return out

    def bridge_question(self, k: int, rng: random.Random, qid: str = "q") -> Question:
        """A k-hop chain: "What is the birthplace of the founder of the publisher of X?"."""
        if k < 1:
            raise ValueError(f"k (hops) must be >= 1, got {k}")
        for _ in range(1000):
            start = rng.choice([e for e in self.entities.values() if e.kind in ("work", "org", "person")])
            chain, cur, seen = [], start, {start.id}
            for _h in range(k):
                rels = [r for r, (sk, _) in ENTITY_RELATIONS.items() if sk == cur.kind
                        and cur.attrs.get(r) not in seen]
                if not rels:
                    break
                r = rng.choice(sorted(rels))
                chain.append((cur.id, r))
                cur = self.entities[cur.attrs[r]]
                seen.add(cur.id)
            if len(chain) == k:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"could not build a {k}-hop chain")
        phrase = start.name
        for _, r in chain:
            phrase = _PHRASE[r].format(x=phrase)
        facts = tuple(self.fact(s, r) for s, r in chain)
        nodes = []
        for j, (s, r) in enumerate(chain):
            subj = self.name(s) if j == 0 else f"${j}"
            nodes.append(PlanNode(str(j + 1), "lookup", {"subject": subj, "relation": r},
                                  tuple([] if j == 0 else [str(j)]),
                                  _GOAL[r].format(x=self.name(s) if j == 0 else f"the answer of T{j}")))
        return Question(qid, "bridge", f"What is {phrase}?", cur.name,
                        tuple(f.url for f in facts), facts, PlanGraph(tuple(nodes)),
                        hops=tuple((self.name(s), r) for s, r in chain))

    def comparison_question(self, m: int, rng: random.Random, qid: str = "q") -> Question:
        """Fan-out then join: "Who was born earlier: the author of A or the founder of B?".

        Each of the ``m`` branches resolves a person through one hop (or names them
        directly), then looks up ``birth_year``; a ``compare`` node picks the earliest.
        """
        if m < 2:
            raise ValueError(f"m (fan-out) must be >= 2, got {m}")
        for _ in range(1000):
            starts = rng.sample([e for e in self.entities.values() if e.kind in ("work", "org")], m)
            rel = {"work": "authored_by", "org": "founded_by"}
            persons = [s.attrs[rel[s.kind]] for s in starts]
            years = [self.entities[p].attrs["birth_year"] for p in persons]
            if len(set(persons)) == m and len(set(years)) == m:
                break
        else:  # pragma: no cover
            raise RuntimeError("could not build a comparison question")
        phrases = [_PHRASE[rel[s.kind]].format(x=s.name) for s in starts]
        text = f"Who was born earliest: {', '.join(phrases[:-1])} or {phrases[-1]}?" if m > 2 else \
            f"Who was born earlier: {phrases[0]} or {phrases[1]}?"
        answer = self.name(persons[years.index(min(years))])
        nodes, facts, cand_ids, year_ids = [], [], [], []
        for s, p in zip(starts, persons):
            a = str(len(nodes) + 1)
            nodes.append(PlanNode(a, "lookup", {"subject": s.name, "relation": rel[s.kind]}, (),
                                  _GOAL[rel[s.kind]].format(x=s.name)))
            b = str(len(nodes) + 1)
            nodes.append(PlanNode(b, "lookup", {"subject": f"${a}", "relation": "birth_year"}, (a,),
                                  f"In which year was the answer of T{a} born?"))
            facts += [self.fact(s.id, rel[s.kind]), self.fact(p, "birth_year")]
            cand_ids.append(a)
            year_ids.append(b)
        j = str(len(nodes) + 1)
        nodes.append(PlanNode(j, "compare", {"items": [f"${a}" for a in cand_ids],
                                             "values": [f"${b}" for b in year_ids], "op": "min"},
                              tuple(cand_ids + year_ids), "Compare the birth years"))
        return Question(qid, "comparison", text, answer, tuple(f.url for f in facts), tuple(facts),
                        PlanGraph(tuple(nodes)))

    def constraint_question(self, rng: random.Random, qid: str = "q") -> Question:
        """BrowseComp-style inverted constraints with dead-end candidates:
        "Which person who received the A Prize was born in C and wrote a work published by O?"

        The candidates are the award's other laureates, each failing at least one constraint.
        """
        people = [e for e in self.entities.values() if e.kind == "person" and e.awards]
        for _ in range(2000):
            p = rng.choice(people)
            works = self.works_of(p.id)
            if not works:
                continue
            award = rng.choice(p.awards)[0]
            work = rng.choice(works)
            org = work.attrs["published_by"]
            city = p.attrs["born_in"]
            laureates = [e for e in self.entities.values() if e.kind == "person"
                         and any(a == award for a, _ in e.awards) and e.id != p.id]

            def fails(e):
                if e.attrs["born_in"] != city:
                    return "born_in"
                if not any(w.attrs["published_by"] == org for w in self.works_of(e.id)):
                    return "published_by"
                return None

            cands = [(e.name, fails(e)) for e in laureates]
            if len(cands) >= 2 and all(f is not None for _, f in cands):
                break
        else:  # pragma: no cover
            raise RuntimeError("could not build a constraint question")
        text = (f"Which person who received the {self.name(award)} was born in {self.name(city)} "
                f"and wrote a work published by {self.name(org)}?")
        hub = self.hub_url("award", award)
        facts = (Fact(self.name(award), "laureates", p.name, next(s for s in self.pages[hub].sentences if p.name in s), hub),
                 self.fact(p.id, "born_in"), self.fact(work.id, "authored_by"), self.fact(work.id, "published_by"))
        names = sorted([p.name] + [c for c, _ in cands])
        nodes = []
        for i, n in enumerate(names):
            nodes.append(PlanNode(str(2 * i + 1), "lookup", {"subject": n, "relation": "born_in"}, (),
                                  _GOAL["born_in"].format(x=n)))
            nodes.append(PlanNode(str(2 * i + 2), "lookup", {"subject": n, "relation": "publishers"}, (),
                                  f"Which organisations published the works of {n}?"))
        j = str(len(nodes) + 1)
        conditions = [[[f"${2 * i + 1}" for i in range(len(names))], "equals", self.name(city)],
                      [[f"${2 * i + 2}" for i in range(len(names))], "contains", self.name(org)]]
        nodes.append(PlanNode(j, "filter", {"items": names, "conditions": conditions},
                              tuple(n.id for n in nodes), "Keep the candidate meeting every constraint"))
        return Question(qid, "constraint", text, p.name, tuple(dict.fromkeys(f.url for f in facts)), facts,
                        PlanGraph(tuple(nodes)), candidates=tuple(cands),
                        constraints=(("award", self.name(award)), ("born_in", self.name(city)),
                                     ("published_by", self.name(org))))

    def local_tools(self) -> dict:
        """Tool functions for the GAP executor: ``lookup`` (SimWeb KB), ``wiki_search``, and the
        zero-latency reasoning nodes ``compare`` (argmin/argmax over values) and ``filter``."""

        def compare(items, values, op="min"):
            if op not in ("min", "max"):
                raise ToolError(f"compare: op must be 'min' or 'max', got {op!r}")
            if len(items) != len(values) or not items:
                raise ToolError("compare: items and values must be non-empty and of equal length")
            nums = [float(v) for v in values]
            best = (min if op == "min" else max)(range(len(items)), key=lambda i: (nums[i], i))
            return str(items[best])

        def filter_(items, conditions):
            kept = []
            for i, item in enumerate(items):
                ok = True
                for values, op, target in conditions:
                    if len(values) != len(items):
                        raise ToolError("filter: every condition needs one value per item")
                    if op == "equals":
                        ok &= str(values[i]) == str(target)
                    elif op == "contains":
                        ok &= str(target) in str(values[i]).split("|")
                    else:
                        raise ToolError(f"filter: op must be 'equals' or 'contains', got {op!r}")
                if ok:
                    kept.append(str(item))
            return "|".join(kept)

        return {"lookup": self.lookup, "wiki_search": self.wiki_search, "search": self.search,
                "visit": self.visit, "compare": compare, "filter": filter_}
