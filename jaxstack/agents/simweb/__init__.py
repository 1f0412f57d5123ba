"""SimWeb: a seeded, offline simulated web for agent experiments.

Everything here is a pure function of ``(WorldConfig, seed)``: the entity graph, the pages, the
BM25 index, the questions with their gold answers / evidence / dependency graphs, and the tool
latencies. Nothing is downloaded.

* ``world.py``: :class:`WorldConfig` and :class:`World`, the entity graph (people, organisations,
  cities, works and awards with typed relations) and its pages: entity pages stating facts as
  canonical sentences (:attr:`Fact.sentence`) among distractors, hub pages ("People born in X", "List
  of Y laureates") and near-duplicate decoy pages (same name, different facts);
* ``search.py``: :class:`BM25`, the index behind ``search`` / ``visit`` / ``wiki_search``;
* ``questions.py``: bridge, comparison and constraint :class:`Question` generators;
* ``latency.py``: :class:`LatencyModel` (log-normal latency, a deterministic hash of
  ``(seed, tool, arguments)``, independent of call order) and :class:`VirtualClock`;
* ``tools.py``: :class:`SimWeb`, a world with its tools, with the output *shapes* of the public
  AgentFold tools (a Serper-style search and a goal-conditioned extractive visit) and of GAP's wiki
  search:

  - :meth:`SimWeb.search` ``(query: list[str]) -> str``: BM25 top-10 per query;
  - :meth:`SimWeb.visit` ``(url: list[str], goal: str) -> str``: the page's sentences ranked by BM25
    against the goal (extractive "Evidence" and "Summary"); ``raw=True`` returns whole pages;
  - :meth:`SimWeb.wiki_search` ``(query: str) -> str``: top-3 ``Doc i(Title: "...") ...``;
  - :meth:`SimWeb.lookup` ``(subject: str, relation: str) -> str``: a structured knowledge-base tool
    returning the object of a relation; it is what the GAP plan graphs call so placeholders such
    as ``$1`` can be substituted with an entity name;
  - :meth:`SimWeb.acall`: real ``asyncio.sleep`` of the latency scaled by a factor, then the call.
"""

from jaxstack.agents.simweb.latency import LatencyModel, VirtualClock
from jaxstack.agents.simweb.questions import Question
from jaxstack.agents.simweb.search import BM25
from jaxstack.agents.simweb.tools import VISIT_FAILURE, SimWeb
from jaxstack.agents.simweb.world import ENTITY_RELATIONS, GOALS, Entity, Fact, Page, ToolError, World, WorldConfig

__all__ = [
    "WorldConfig",
    "World",
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
    "GOALS",
]
