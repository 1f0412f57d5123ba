"""The panel: resumable answers keyed by (scenario, model), recorded settings, steered members, and two
tiny models behind one `jaxstack serve` giving the in-process answers at T = 0."""

import json

import pytest
from flax import nnx

from jaxstack.evals.spec_stress.panel import EndpointMember, LocalMember, answer_table, run_panel
from jaxstack.evals.spec_stress.store import JsonlStore
from jaxstack.inference import SamplingConfig
from jaxstack.interp import Intervention

SCENARIOS = [{"scenario_id": f"s{i}", "query": f"Question number {i}?"} for i in range(7)]


class CountingMember:
    """Answers "<name>:<query>"; raises after ``fail_after`` answers (a kill midway)."""

    def __init__(self, name, fail_after=None):
        self.name, self.fail_after, self.calls = name, fail_after, 0

    def settings(self):
        return {"kind": "fake", "temperature": 0.0}

    def answer(self, queries, *, first_index=0):
        if self.fail_after is not None and self.calls + len(queries) > self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += len(queries)
        return [f"{self.name}:{q}" for q in queries]


def test_killed_midway_then_rerun_completes_without_repeating(tmp_path):
    out = tmp_path / "panel.jsonl"
    first = [CountingMember("a"), CountingMember("b", fail_after=3)]
    with pytest.raises(KeyboardInterrupt):
        run_panel(SCENARIOS, first, out, batch_size=2, progress=False)
    assert first[0].calls == 7 and first[1].calls == 2  # b's second batch of 2 would pass 3: killed before it
    assert len(JsonlStore(out, ("scenario_id", "model")).rows()) == 9
    again = [CountingMember("a"), CountingMember("b")]
    report = run_panel(SCENARIOS, again, out, batch_size=2, progress=False)
    assert again[0].calls == 0 and again[1].calls == 5
    assert report["skipped"] == {"a": 7, "b": 2} and report["asked"] == {"a": 0, "b": 5}
    rows = JsonlStore(out, ("scenario_id", "model")).rows()
    assert len(rows) == 14 and all(r["settings"] == {"kind": "fake", "temperature": 0.0} for r in rows)
    table = answer_table(out, [s["scenario_id"] for s in SCENARIOS], ["a", "b"])
    assert table[4] == ["a:Question number 4?", "b:Question number 4?"]
    # a third run asks nothing
    third = [CountingMember("a"), CountingMember("b")]
    run_panel(SCENARIOS, third, out, progress=False)
    assert third[0].calls == third[1].calls == 0


def test_torn_last_line_is_dropped_and_changed_settings_are_refused(tmp_path):
    out = tmp_path / "panel.jsonl"
    run_panel(SCENARIOS[:2], [CountingMember("a")], out, progress=False)
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"scenario_id": "s2", "mod')  # a write cut by a kill
    with pytest.warns(UserWarning, match="torn last line"):
        member = CountingMember("a")
        run_panel(SCENARIOS[:3], [member], out, progress=False)
    assert member.calls == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)

    class Warmer(CountingMember):
        def settings(self):
            return {"kind": "fake", "temperature": 0.7}

    with pytest.raises(ValueError, match="'a' has answers in .* under other settings"):
        run_panel(SCENARIOS, [Warmer("a")], out, progress=False)


def test_local_member_is_deterministic_at_t0_and_steering_changes_it(random_model, tokenizer):
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0)
    base = LocalMember("base", random_model, tokenizer, sampling, batch_size=4)
    queries = [s["query"] for s in SCENARIOS[:5]]
    answers = base.answer(queries)
    assert answers == base.answer(queries) and len(answers) == 5
    config = random_model.config
    zero = Intervention.add(jnp_ones(config.hidden_size), layers=1, num_layers=config.num_layers, strength=0.0)
    assert LocalMember("zero", random_model, tokenizer, sampling, batch_size=4, intervention=zero).answer(queries) == answers
    steer = Intervention.add(jnp_ones(config.hidden_size), layers=1, num_layers=config.num_layers, strength=8.0)
    steered = LocalMember("steered", random_model, tokenizer, sampling, batch_size=4, intervention=steer,
                          steering={"vector": "ones", "strength": 8.0})
    assert steered.answer(queries) != answers
    assert steered.settings()["steering"] == {"vector": "ones", "strength": 8.0}
    assert base.settings()["temperature"] == 0.0 and tokenizer.eos_id in base.settings()["stop_tokens"]


def jnp_ones(size):
    import numpy as np

    return np.ones((size,), np.float32)


@pytest.mark.slow
def test_two_models_behind_one_server_answer_like_the_in_process_panel(tmp_path, random_model, tokenizer):
    from jaxstack.inference.client import CompletionsClient
    from jaxstack.inference.server import ModelServer, ServedModel
    from jaxstack.models import LlamaForCausalLM

    other = LlamaForCausalLM(random_model.config, rngs=nnx.Rngs(5))
    server = ModelServer([ServedModel("alpha", random_model, tokenizer, slots=4),
                          ServedModel("beta", other, tokenizer, slots=4)], port=0).start()
    try:
        sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
        local = [LocalMember("alpha", random_model, tokenizer, sampling, batch_size=4),
                 LocalMember("beta", other, tokenizer, sampling, batch_size=4)]
        remote = [EndpointMember(name, CompletionsClient(server.url, model=name), {"temperature": 0.0, "max_tokens": 8})
                  for name in ("alpha", "beta")]
        ids = [s["scenario_id"] for s in SCENARIOS]
        run_panel(SCENARIOS, local, tmp_path / "local.jsonl", batch_size=4, progress=False)
        run_panel(SCENARIOS, remote, tmp_path / "http.jsonl", batch_size=4, progress=False)
        in_process = answer_table(tmp_path / "local.jsonl", ids, ["alpha", "beta"])
        over_http = answer_table(tmp_path / "http.jsonl", ids, ["alpha", "beta"])
        assert over_http == in_process
        assert [row[0] for row in in_process] != [row[1] for row in in_process], "the two models answer alike"
        recorded = JsonlStore(tmp_path / "http.jsonl", ("scenario_id", "model")).rows()[0]["settings"]
        assert recorded["served_model"] == "alpha" and recorded["temperature"] == 0.0
    finally:
        server.shutdown()
