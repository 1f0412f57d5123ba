"""GAP plan graphs: parsers, validation, levels, executor makespans, failures, reward."""

import math
import random
import time

import pytest

from jaxstack.agents import gap
from jaxstack.agents.gap import PlanGraph, PlanNode, PlanValidationError

TOOLS = {"search": lambda query: f"R({query})", "lookup": lambda subject, relation: f"{relation}:{subject}"}


def _random_dag(rng, n):
    nodes = []
    for i in range(n):
        deps = tuple(str(j) for j in range(i) if rng.random() < 0.3)
        nodes.append(PlanNode(str(i), "search", {"query": f"q{i}"}, deps))
    return PlanGraph(tuple(nodes))


def test_parse_gap_plan_and_round_trip():
    text = ("<plan>\nT1: Search for A's career\n- Dependencies: none\nT2: Search for B's career\n"
            "- Dependencies: none\nT3: Compare their occupations\n- Dependencies: T1, T2\n</plan>")
    g = gap.parse_gap_plan(text)
    assert g.ids == ["T1", "T2", "T3"]
    assert g.node("T3").depends_on == ("T1", "T2")
    assert gap.topological_levels(g) == [["T1", "T2"], ["T3"]]
    assert gap.parse_gap_plan(gap.render_gap_plan(g)) == g
    with pytest.raises(gap.PlanParseError, match="line 1"):
        gap.parse_gap_plan("- Dependencies: none")


def test_parse_batched_calls_and_stop_strings():
    calls = gap.parse_batched_calls("<think>x</think><wiki_search>a|b||c </wiki_search>")
    assert calls == [("wiki_search", "a"), ("wiki_search", "b"), ("wiki_search", "c")]
    assert gap.stop_strings(["wiki_search"]) == ["</wiki_search>", "</answer>"]


def test_llmcompiler_and_xml_parsers_share_the_ir():
    plan = ('Thought: two lookups\n1. lookup("Book", "authored_by")\n2. lookup($1, relation="born_in")\n'
            '3. search("population of ${2}")\n4. join()\n<END_OF_PLAN>')
    g = gap.parse_llmcompiler_plan(plan, TOOLS)
    assert g.node("1").args == {"subject": "Book", "relation": "authored_by"}
    assert g.node("2").depends_on == ("1",) and g.node("3").depends_on == ("2",)
    assert g.node("4").depends_on == ("1", "2", "3")
    rep = gap.execute(g, TOOLS)
    assert rep.results["3"].output == "R(population of born_in:authored_by:Book)"
    xml = ('<graph><node id="s1">search("capital of France")</node>'
           '<node id="s2" depends="s1">search("population of {s1}")</node></graph>')
    gx = gap.parse_graph_xml(xml, TOOLS)
    assert gap.execute(gx, TOOLS).results["s2"].output == "R(population of R(capital of France))"
    with pytest.raises(gap.PlanParseError, match="join"):
        gap.parse_llmcompiler_plan("1. join()\n2. search('x')")
    with pytest.raises(gap.PlanParseError, match="task 1"):
        gap.parse_llmcompiler_plan("1. lookup('a', 'b', 'c')", TOOLS)


@pytest.mark.parametrize("nodes,node_id,match", [
    ([PlanNode("1", "search", {"query": "a"}), PlanNode("1", "search", {"query": "b"})], "1", "duplicate"),
    ([PlanNode("1", "search", {"query": "a"}, ("1",))], "1", "itself"),
    ([PlanNode("1", "search", {"query": "a"}, ("9",))], "1", "unknown node '9'"),
    ([PlanNode("1", "fly", {"query": "a"})], "1", "unknown tool 'fly'"),
    ([PlanNode("1", "search", {"query": "a"}), PlanNode("2", "search", {"query": "$1"})], "2", "not one of its parents"),
    ([PlanNode("1", "search", {}, ("2",)), PlanNode("2", "search", {}, ("1",))], "1", "cycle"),
])
def test_validation_errors_name_the_node(nodes, node_id, match):
    with pytest.raises(PlanValidationError, match=match) as e:
        gap.validate(PlanGraph(tuple(nodes)), TOOLS)
    assert e.value.node == node_id
    assert repr(node_id) in str(e.value)


def test_levels_equal_longest_path_and_are_deterministic():
    rng = random.Random(0)
    for _ in range(50):
        g = _random_dag(rng, rng.randint(1, 12))
        levels = gap.topological_levels(g)
        assert levels == gap.topological_levels(g)
        assert len(levels) == gap.critical_path(g, {i: 1.0 for i in g.ids})


def _check_makespans(g, lat):
    latency = lambda tool, args: lat[args["query"]]
    w = {n.id: lat[n.args["query"]] for n in g}
    seq = gap.execute(g, TOOLS, schedule="sequential", latency=latency).makespan
    lvl = gap.execute(g, TOOLS, schedule="level", latency=latency).makespan
    eag = gap.execute(g, TOOLS, schedule="eager", latency=latency).makespan
    assert math.isclose(seq, sum(w.values()), rel_tol=1e-12)
    assert math.isclose(lvl, sum(max(w[i] for i in level) for level in gap.topological_levels(g)), rel_tol=1e-12)
    assert math.isclose(eag, gap.critical_path(g, w), rel_tol=1e-12)
    assert eag <= lvl + 1e-12 <= seq + 2e-12


def test_virtual_makespans_exact_seeded():
    rng = random.Random(1)
    for _ in range(100):
        g = _random_dag(rng, rng.randint(1, 10))
        _check_makespans(g, {f"q{i}": rng.uniform(0.01, 2.0) for i in range(len(g))})


def test_virtual_makespans_exact_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=50, deadline=None)
    @hypothesis.given(st.integers(0, 10_000), st.integers(1, 9))
    def prop(seed, n):
        rng = random.Random(seed)
        _check_makespans(_random_dag(rng, n), {f"q{i}": rng.uniform(0.0, 3.0) for i in range(n)})

    prop()


def test_max_concurrency_caps_virtual_and_real():
    g = PlanGraph(tuple(PlanNode(str(i), "search", {"query": f"q{i}"}) for i in range(6)))
    rep = gap.execute(g, TOOLS, max_concurrency=2, latency=lambda t, a: 1.0)
    assert rep.peak_concurrency == 2 and rep.makespan == 3.0
    rep = gap.execute(g, TOOLS, max_concurrency=2, latency=lambda t, a: 1.0, mode="real", time_scale=0.01)
    assert rep.peak_concurrency == 2


def test_real_mode_four_independent_100ms_tools_overlap():
    g = PlanGraph(tuple(PlanNode(str(i), "search", {"query": f"q{i}"}) for i in range(4)))
    t0 = time.perf_counter()
    rep = gap.execute(g, TOOLS, schedule="eager", max_concurrency=4, latency=lambda t, a: 0.1, mode="real")
    wall = time.perf_counter() - t0
    assert rep.peak_concurrency == 4 and not rep.failed
    assert wall < 0.3, wall  # sequential would be >= 0.4 s
    seq = gap.execute(g, TOOLS, schedule="sequential", latency=lambda t, a: 0.1, mode="real")
    assert seq.makespan >= 0.4


def test_results_identical_across_schedules_and_modes():
    g = gap.parse_llmcompiler_plan('1. lookup("A", "r1")\n2. lookup("B", "r2")\n3. search("$1 and ${2}")\n4. join()', TOOLS)
    outs = [gap.execute(g, TOOLS, schedule=s, mode=m, time_scale=0.0).outputs
            for s in ("sequential", "level", "eager") for m in ("virtual", "real")]
    assert all(o == outs[0] for o in outs)
    assert outs[0]["3"] == "R(r1:A and r2:B)"


def test_failure_and_timeout_propagation():
    def boom(query):
        raise RuntimeError("down")

    tools = {"search": TOOLS["search"], "boom": boom}
    g = PlanGraph((PlanNode("1", "boom", {"query": "x"}), PlanNode("2", "search", {"query": "$1"}, ("1",)),
                   PlanNode("3", "search", {"query": "$2"}, ("2",)), PlanNode("4", "search", {"query": "ok"})))
    for mode in ("virtual", "real"):
        rep = gap.execute(g, tools, mode=mode, time_scale=0.001)
        assert [rep.results[i].status for i in "1234"] == ["failed", "skipped", "skipped", "ok"]
        assert "dependency 1 failed" in rep.results["2"].output and "RuntimeError: down" in rep.results["2"].output
        assert rep.outputs == {"4": "R(ok)"}
    slow = {"1": 5.0, "2": 0.1}
    g2 = PlanGraph((PlanNode("1", "search", {"query": "1"}), PlanNode("2", "search", {"query": "2"})))
    lat = lambda t, a: slow[a["query"]]
    rep = gap.execute(g2, TOOLS, latency=lat, timeout=1.0)
    assert rep.results["1"].status == "failed" and "timed out" in rep.results["1"].error and rep.makespan == 1.0
    rep = gap.execute(g2, TOOLS, latency=lat, timeout=1.0, mode="real", time_scale=0.02)
    assert rep.results["1"].status == "failed" and rep.results["2"].status == "ok"


def test_executor_argument_errors():
    g = PlanGraph((PlanNode("1", "search", {"query": "a"}),))
    with pytest.raises(ValueError, match="schedule"):
        gap.execute(g, TOOLS, schedule="random")
    with pytest.raises(ValueError, match="max_concurrency"):
        gap.execute(g, TOOLS, max_concurrency=0)
    with pytest.raises(ValueError, match="mode"):
        gap.execute(g, TOOLS, mode="fast")


def test_gap_compat_session_batches_and_dedups():
    calls = []
    s = gap.GapCompatSession({"wiki_search": lambda q: calls.append(q) or f"doc({q})"})
    r1 = s.step("<wiki_search>a|b</wiki_search>")
    r2 = s.step("<wiki_search>a|c</wiki_search>")
    assert [o for _, _, o in r1] == ["doc(a)", "doc(b)"]
    assert r2[0][2] == gap.DUPLICATE_QUERY_RESPONSE and r2[1][2] == "doc(c)"
    assert calls == ["a", "b", "c"] and s.turns == 2 and s.tool_calls == 3


def test_em_reward_semantics():
    assert gap.em_reward("<answer>x</answer> <answer>The Paris.</answer>", "paris") == 1.0
    assert gap.em_reward("<answer>Paris|Lyon</answer>", ["paris", "lyon", "nice"]) == 1.0
    assert gap.em_reward("<answer>Paris|Rome</answer>", ["paris", "lyon"]) == 0.0
    assert gap.em_reward("no answer", "paris") == 0.0
    assert gap.em_reward("<answer> | </answer>", "paris") == 0.0


def test_turn_accounting():
    chain = PlanGraph(tuple(PlanNode(str(i), "lookup", {}, (str(i - 1),) if i else ()) for i in range(3)))
    fan = PlanGraph((PlanNode("1", "lookup", {}), PlanNode("2", "lookup", {}),
                     PlanNode("3", "compare", {}, ("1", "2"))))
    assert gap.llm_turns(chain, "react") == 4 and gap.llm_turns(chain, "gap") == 4
    assert gap.llm_turns(fan, "react") == 3 and gap.llm_turns(fan, "gap") == 2
    assert gap.llm_turns(fan, "graph") == 2


# --------------------------------------------------------------------------- the agent loop with a noisy planner


@pytest.fixture(scope="module")
def simweb():
    from jaxstack.agents.simweb import SimWeb, WorldConfig

    world = SimWeb(WorldConfig(seed=3))
    rng = random.Random(0)
    return world, world.bridge_question(3, rng, qid="b"), world.comparison_question(3, rng, qid="c")


def _episode(world, q, regime, errors, max_turns=30):
    tools = world.local_tools()
    gold = gap.execute(q.graph, tools).outputs

    def guess(nid, rng):  # a wrong name of the kind the placeholder (or the answer) stands for
        node = q.graph.node(nid)
        refs = gap.placeholders(node.args)
        true = gold[refs[0]] if refs and node.tool not in gap.LOCAL_TOOLS else q.answer
        kind = world.entity_by_name(true).kind
        return rng.choice(sorted(e.name for e in world.entities.values() if e.kind == kind and e.name != true))

    policy = gap.NoisyPlanner(q.graph, regime, errors, seed=0, reason=tools, guess=guess)
    ep = gap.run_episode(policy, q.text, tools, regime=regime, latency=world.latency.latency, max_turns=max_turns)
    return ep, policy


@pytest.mark.parametrize("regime,formula", [("react", "react"), ("gap", "gap"), ("graph_level", "graph"),
                                            ("graph_eager", "graph")])
def test_error_free_loop_counts_the_formula_turns_and_answers(simweb, regime, formula):
    world, *qs = simweb
    for q in qs:
        ep, _ = _episode(world, q, regime, gap.PolicyErrors())
        assert ep.status == "answered" and ep.answer == q.answer
        assert ep.n_turns == gap.llm_turns(q.graph, formula)
        assert ep.tool_calls == len(gap.tool_nodes(q.graph))
        assert ep.time == pytest.approx(ep.tool_time + ep.model_time) and ep.model_time > 0


def test_sequential_chain_gets_no_turn_reduction(simweb):
    """Can fail: on a pure chain, planning ahead saves no LLM call."""
    world, bridge, _ = simweb
    turns = {r: _episode(world, bridge, r, gap.PolicyErrors())[0].n_turns for r in ("react", "gap")}
    assert turns["gap"] == turns["react"] == len(bridge.graph) + 1


def test_policy_errors_cost_turns_or_answers(simweb):
    world, bridge, comparison = simweb
    # premature answers: one call, a hallucinated answer
    ep, policy = _episode(world, bridge, "gap", gap.PolicyErrors(premature_answer=1.0))
    assert ep.n_turns == 1 and ep.answer != bridge.answer and policy.counts["premature"] == 1
    # garbled arguments never resolve: the budget runs out, no answer
    ep, policy = _episode(world, comparison, "graph_eager", gap.PolicyErrors(wrong_argument=1.0), max_turns=4)
    assert ep.status == "max_turns" and ep.answer is None and ep.n_turns == 4
    # each plan garbles all 6 tasks; only the 3 roots run, their children are skipped
    assert ep.tool_calls == 4 * 3 and policy.counts["garbled_arguments"] == 4 * 6
    # missed dependencies: unnoticed guesses save turns and lose the answer; noticed ones cost calls
    sloppy, policy = _episode(world, bridge, "gap", gap.PolicyErrors(missed_dependency=1.0, notice=0.0))
    assert sloppy.n_turns == 2 and sloppy.answer != bridge.answer and policy.counts["guessed_arguments"] == 2
    careful, _ = _episode(world, bridge, "gap", gap.PolicyErrors(missed_dependency=1.0, notice=1.0))
    assert careful.answer == bridge.answer and careful.tool_calls > len(bridge.graph)
    # ReAct reads each observation before the next call: missed dependencies cannot bite it
    react, _ = _episode(world, bridge, "react", gap.PolicyErrors(missed_dependency=1.0, notice=0.0))
    assert react.answer == bridge.answer
    with pytest.raises(ValueError, match="missed_dependency"):
        gap.PolicyErrors(missed_dependency=1.5)


def test_observation_round_trip():
    g = PlanGraph((PlanNode("1", "search", {"query": "a"}), PlanNode("2", "join", {}, ("1",))))
    text = gap.render_observations(gap.execute(g, TOOLS), g)
    assert text == "<observation>\n[1] R(a)\n</observation>"
    assert gap.parse_observations(text) == {"1": (True, "R(a)")}
    assert gap.parse_observations("<observation>\n[3] Error: x\n</observation>") == {"3": (False, "Error: x")}
