"""The SimWeb world: a seeded entity graph with typed relations and the pages that state it.

People, organisations, cities, works and awards with typed relations (``born_in``, ``birth_year``,
``employer``, ``award``, ``founded_by``, ``located_in``, ``founded_year``, ``authored_by``,
``published_by``, ``published_year``). Each entity has a page at ``sim://wiki/<slug>`` stating its
facts as canonical sentences (:attr:`Fact.sentence`) mixed with distractor sentences; hub pages
("People born in X", "List of Y laureates") and near-duplicate decoy pages (same name, different
facts) make naive search hit dead ends. :class:`World` is a pure function of :class:`WorldConfig`.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

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

#: relation -> the canonical sentence stating it on the subject's page
SENTENCES = {
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
#: relation -> the noun phrase of a bridge question ("the birthplace of {x}")
PHRASES = {
    "born_in": "the birthplace of {x}",
    "employer": "the employer of {x}",
    "founded_by": "the founder of {x}",
    "located_in": "the city where {x} is headquartered",
    "authored_by": "the author of {x}",
    "published_by": "the publisher of {x}",
}
#: relation -> the question / visit goal asking for it
GOALS = {
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


class ToolError(RuntimeError):
    """A SimWeb tool was called with arguments it cannot serve."""


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class World:
    """The entity graph and its pages, generated from ``config`` (deterministic in its seed).

    Attributes:
        config: the :class:`WorldConfig`.
        entities: id -> :class:`Entity`.
        pages: url -> :class:`Page` (entity, decoy and hub pages).
    """

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self._rng = random.Random(self.config.seed)
        self.entities: dict[str, Entity] = {}
        self._by_name: dict[str, str] = {}
        self._build_entities()
        self.pages: dict[str, Page] = {}
        self._build_pages()

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
        if relation not in ent.attrs or relation not in SENTENCES:
            raise ToolError(f"entity {ent.name!r} has no relation {relation!r}")
        v = ent.attrs[relation]
        obj = self.name(v) if isinstance(v, str) else str(v)
        return Fact(ent.name, relation, obj, SENTENCES[relation].format(s=ent.name, o=obj), ent.url)

    def award_facts(self, subject_id: str) -> list[Fact]:
        ent = self.entities[subject_id]
        return [Fact(ent.name, "award", self.name(a),
                     SENTENCES["award"].format(s=ent.name, o=self.name(a), y=y), ent.url)
                for a, y in ent.awards]

    def works_of(self, person_id: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == "work" and e.attrs["authored_by"] == person_id]

    def _filler(self, rng: random.Random, topic: str) -> str:
        obj = rng.choice(_FILLER_OBJ).format(t=topic)
        year = rng.randint(*self.config.year_range)
        return f"In {year}, {rng.choice(_FILLER_SUBJ).lower()} {rng.choice(_FILLER_VERB)} {obj}."

    def _entity_sentences(self, ent: Entity) -> list[str]:
        out = [self.fact(ent.id, r).sentence for r in ent.attrs if r in SENTENCES]
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

