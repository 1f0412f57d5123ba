"""SimWeb's tools over a :class:`~.world.World`, with the output *shapes* of the public AgentFold tools
(a Serper-style search and a goal-conditioned extractive visit) and of GAP's wiki search."""

from __future__ import annotations

import asyncio

from jaxstack.agents.simweb import questions as _questions
from jaxstack.agents.simweb.latency import LatencyModel
from jaxstack.agents.simweb.search import BM25
from jaxstack.agents.simweb.world import SENTENCES, Page, ToolError, World, WorldConfig

VISIT_FAILURE = "The webpage cannot be accessed. Please check the URL or file format."


class SimWeb(World):
    """The simulated web: a :class:`World` plus its BM25 index, tools and question generators.
    Build with ``SimWeb(WorldConfig(seed=...))``.

    Attributes:
        config: the :class:`WorldConfig`.
        entities: id -> :class:`Entity`.
        pages: url -> :class:`Page` (entity, decoy and hub pages).
        latency: the :class:`LatencyModel` used by :meth:`acall` and the executors.
    """

    def __init__(self, config: WorldConfig | None = None, latency: LatencyModel | None = None):
        super().__init__(config)
        self.latency = latency or LatencyModel(seed=self.config.seed)
        self._urls = list(self.pages)
        self._index = BM25([f"{self.pages[u].title} {self.pages[u].title} {self.pages[u].text}" for u in self._urls])
        self._sentence_index: dict[str, BM25] = {}

    # The question generators (questions.py), as methods: ``world.questions(n)``.
    questions = _questions.questions
    bridge_question = _questions.bridge_question
    comparison_question = _questions.comparison_question
    constraint_question = _questions.constraint_question

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
        if relation not in ent.attrs or relation not in SENTENCES:
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
