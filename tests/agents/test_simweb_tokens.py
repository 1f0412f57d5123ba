"""SimWeb world, tools, questions, latency; offline token counters."""

import asyncio
import random
import time

import pytest

from jaxstack.agents import gap
from jaxstack.agents.simweb import GOALS, VISIT_FAILURE, LatencyModel, SimWeb, ToolError, VirtualClock, WorldConfig
from jaxstack.agents.tokens import ProxyTokenCounter, simweb_bpe_counter

SMALL = WorldConfig(seed=3, n_people=60, n_orgs=20, n_cities=10, n_works=40)


@pytest.fixture(scope="module")
def world():
    return SimWeb(SMALL)


def test_world_is_deterministic(world):
    other = SimWeb(SMALL)
    assert list(other.pages) == list(world.pages)
    assert [q.text for q in other.questions(9, seed=2)] == [q.text for q in world.questions(9, seed=2)]
    assert SimWeb(WorldConfig(seed=4, n_people=60, n_orgs=20, n_cities=10, n_works=40)).pages.keys() != world.pages.keys()
    kinds = {p.kind for p in world.pages.values()}
    assert kinds == {"entity", "decoy", "hub"}


def test_tool_output_shapes(world):
    assert world.search(["zzzz"]) == "No results found for 'zzzz'. Try with a more general query."
    out = world.search(["a", "prize"])
    first, second = out.split("\n=======\n")
    assert first.startswith("A Google search for 'a' found 10 results:\n\n## Web Results\n1. [")
    assert "](sim://wiki/" in first and second.startswith("A Google search for 'prize'")
    url = next(iter(world.pages))
    v = world.visit([url], "born")
    assert v.startswith(f"The useful information in {url} for user goal born as follows: \n\nEvidence in page: \n")
    assert "\n\nSummary: \n" in v
    assert world.visit(["sim://wiki/nowhere"], "x") == VISIT_FAILURE
    assert world.visit([url], "x", raw=True).startswith(f"# {world.pages[url].title}")
    assert world.wiki_search("prize").startswith('Doc 1(Title: "')
    with pytest.raises(ToolError, match="query"):
        world.search("not a list")
    with pytest.raises(ToolError, match="goal"):
        world.visit([url], "")
    with pytest.raises(ToolError, match="unknown tool"):
        world.call("fly", {})
    with pytest.raises(ToolError, match="no relation"):
        world.lookup(world.questions(1)[0].answer, "nope")


def test_questions_have_consistent_gold(world):
    for q in world.questions(30, seed=5):
        gap.validate(q.graph, world.local_tools())
        rep = gap.execute(q.graph, world.local_tools(), latency=world.latency.latency)
        assert rep.final(q.graph).output == q.answer, q.text
        assert set(q.evidence_urls) <= set(world.pages)
        for f in q.facts:
            assert f.sentence in world.pages[f.url].sentences
            goal = f"Who received the {f.subject}?" if f.relation == "laureates" else GOALS[f.relation].format(x=f.subject)
            assert f.sentence in world.visit([f.url], goal)
        if q.kind == "constraint":
            assert q.candidates and q.answer not in [c for c, _ in q.candidates]
        if q.kind == "bridge":
            assert gap.llm_turns(q.graph, "gap") == gap.llm_turns(q.graph, "react")
    with pytest.raises(ValueError, match="kind"):
        world.questions(1, kinds=("trivia",))


def test_latency_model_and_clocks(world):
    lm = LatencyModel(seed=1)
    a = lm.latency("visit", {"url": ["x"]})
    assert a == lm.latency("visit", {"url": ["x"]}) and a > 0
    xs = [lm.latency("search", i) for i in range(2000)]
    assert abs(sum(xs) / len(xs) - 0.3) < 0.03
    assert lm.latency("compare", 1) == 0.0
    with pytest.raises(KeyError, match="fly"):
        lm.latency("fly", 1)
    with pytest.raises(ValueError, match="sigma"):
        LatencyModel(sigma=-1)
    c = VirtualClock()
    c.advance(1.5)
    c.advance_to(2.0)
    assert c.now == 2.0
    with pytest.raises(ValueError):
        c.advance_to(1.0)

    async def two():
        t0 = time.perf_counter()
        await asyncio.gather(world.acall("search", {"query": ["a"]}, time_scale=0.01),
                             world.acall("search", {"query": ["b"]}, time_scale=0.01))
        return time.perf_counter() - t0

    assert asyncio.run(two()) < 1.0


def test_world_config_errors():
    with pytest.raises(ValueError, match="n_people"):
        WorldConfig(n_people=1)
    with pytest.raises(ValueError, match="decoy_fraction"):
        WorldConfig(decoy_fraction=2.0)


def test_token_counters_are_additive_on_whitespace(world):
    bpe = simweb_bpe_counter(world, vocab_size=1000)
    proxy = ProxyTokenCounter()
    text = world.search(["a"]) + "\n\n<|im_end|>\n<|im_start|>assistant\n"
    rng = random.Random(0)
    cuts = sorted(rng.sample([i for i, ch in enumerate(text) if ch in " \n"], 10))
    pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
    for counter in (bpe, proxy):
        assert counter.count(text) == sum(counter.count(p) for p in pieces)
    assert bpe.count("<|im_start|>") == 1 and proxy.count("<|im_start|>") == 1
    assert bpe.tokenizer.token_to_id("[UNK]") is not None
    with pytest.raises(TypeError):
        proxy.count(3)
