"""The introspection experiment: presets and validation, the headline metrics on synthetic trials
(each must fail when there is nothing to find), a micro run of the toy pipeline (summary keys, error
bars), the paper preset's path on a tiny random Hugging Face model, and (slow) the tiny preset."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import introspection as exp
from jaxstack.interp import protocol
from jaxstack.interp.grading import GraderError


def test_presets_and_validation():
    tiny, paper = exp.PRESETS["tiny"], exp.PRESETS["paper"]
    assert len(tiny.seeds) >= 3 and tiny.model_dir is None and tiny.grader == "rule"
    assert paper.layer_stride == 2 and paper.strengths == (1.0, 2.0, 4.0, 8.0) and paper.trials == 50
    assert paper.strengths_text == (1.0, 2.0, 4.0, 8.0, 16.0) and paper.temperature == 1.0
    assert paper.max_new_tokens == 100 and paper.max_new_tokens_word == 5 and paper.max_new_tokens_repeat == 15
    assert paper.concepts == protocol.CONCEPT_WORDS and paper.baseline_words == protocol.BASELINE_WORDS
    assert paper.grader is None  # a paper run must name its judge
    with pytest.raises(ValueError, match="experiments"):
        exp.Config(experiments=("exp5",))
    with pytest.raises(ValueError, match="strengths"):
        exp.Config(strengths=(0.0,))
    with pytest.raises(ValueError, match="grader"):
        exp.Config(grader="gpt")
    with pytest.raises(ValueError, match="prompt_format"):
        exp.Config(prompt_format="raw")
    with pytest.raises(ValueError, match="parallel_seeds: expected a positive integer"):
        exp.Config(parallel_seeds=0)


@pytest.mark.slow  # ~12 s on 2 cores, mostly compiling the micro train step; run by make test-all
def test_seeds_trained_in_threads_equal_seeds_trained_one_after_another():
    """``parallel_seeds``: two toy pipelines at once in one process give each seed its sequential numbers
    (the losses of every step, bit for bit) -- and different seeds differ, so the check can fail."""
    import concurrent.futures

    from flax import nnx

    from jaxstack.interp.concept_world import ConceptWorld, TrainSettings, encode_examples, train_world_model
    from jaxstack.models import LlamaForCausalLM

    micro = exp.PRESETS["micro"]
    world = ConceptWorld(micro.world)
    data = encode_examples(world.base_examples(40, np.random.default_rng(0)), world.tokenizer, 63, pack=True)
    settings = TrainSettings(steps=6, batch_size=2, learning_rate=1e-2, warmup_steps=1)

    def losses(seed):
        model = LlamaForCausalLM(micro.model.replace(vocab_size=world.tokenizer.vocab_size), rngs=nnx.Rngs(seed))
        return train_world_model(model, data, dataclasses.replace(settings, seed=seed), progress=False)[1]

    sequential = [losses(seed) for seed in (0, 1)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(losses, (0, 1)))
    assert threaded == sequential and sequential[0] != sequential[1]


def test_paper_preset_refuses_without_a_grader(tmp_path):
    config = exp.PRESETS["paper"].replace(model_dir=str(tmp_path), out_dir=str(tmp_path))
    with pytest.raises(GraderError, match="no grader configured"):
        exp.run(config)
    assert not (tmp_path / "introspection").exists()  # refused before writing anything


# ----------------------------------------------------------------------------------------------------
# headline metrics on synthetic trials: each can fail


def _records(reply_for, concepts, layers=(0, 1), strengths=(2.0,), trials=8, seed=0):
    """Experiment-1 records of a fake reporter: ``reply_for(kind, concept) -> (detected, named)``."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in layers:
        for strength in strengths:
            for kind in ("concept", "random"):
                for i in range(trials):
                    concept = concepts[i % len(concepts)]
                    detected, named = reply_for(kind, concept, rng)
                    out.append({"kind": kind, "layer": layer, "strength": strength, "concept": concept,
                                "detected": detected, "success": detected and named == concept,
                                "identified_logit": named == concept, "p_yes_of_answer": float(detected),
                                "affirmative": False})
            for i in range(4):
                out.append({"kind": "control", "layer": layer, "strength": strength, "concept": concepts[0],
                            "affirmative": False, "p_yes_of_answer": 0.1})
    for i in range(trials):
        concept = concepts[i % len(concepts)]
        detected, named = reply_for("none", concept, rng)
        out.append({"kind": "none", "layer": -1, "strength": 0.0, "concept": concept, "detected": detected,
                    "success": detected and named == concept, "p_yes_of_answer": float(detected)})
    out += [{"kind": "control_none", "layer": -1, "strength": 0.0, "concept": None, "affirmative": False,
             "p_yes_of_answer": 0.1}]
    return out


CONCEPTS = ["dust", "milk", "snow", "trees"]


def _headline(records):
    cells = exp.exp1_cells(records, [], layers=(0, 1), strengths=(2.0,), concept_set=None)
    return float(np.nanmean(cells["net"])), cells


def test_net_is_one_for_a_true_reporter_and_zero_for_a_yes_sayer():
    def truthful(kind, concept, rng):
        return (kind == "concept", concept if kind == "concept" else None)

    def yes_sayer(kind, concept, rng):  # always "yes", names a random concept
        return True, CONCEPTS[int(rng.integers(len(CONCEPTS)))]

    def deaf(kind, concept, rng):  # injection scale 0: every trial looks like a control trial
        return False, None

    net, cells = _headline(_records(truthful, CONCEPTS))
    assert net == 1.0 and cells["false_positive"] == 0.0
    assert np.nanmean(cells["random_identification"]) == 0.0
    net, cells = _headline(_records(yes_sayer, CONCEPTS, trials=400))
    # identification at chance (1/4) minus false positives on every control trial: net well below 0
    assert net < -0.5 and cells["false_positive"] == 1.0
    assert abs(np.nanmean(cells["random_identification"]) - 1 / len(CONCEPTS)) < 0.06  # random vectors: chance
    net, _ = _headline(_records(deaf, CONCEPTS))
    assert net == 0.0


def test_probe_results_find_present_concepts_and_fail_on_random_vectors():
    rng = np.random.default_rng(0)
    concepts = [f"c{i}" for i in range(8)]
    embeddings = rng.standard_normal((8, 16))
    records, features = [], []
    for layer in (0, 1):
        for kind in ("concept", "random"):
            for i in range(32):
                concept = concepts[i % 8]
                signal = embeddings[i % 8] if kind == "concept" else rng.standard_normal(16)
                features.append(3 * signal + 0.3 * rng.standard_normal(16))
                records.append({"kind": kind, "layer": layer, "strength": 2.0, "concept": concept,
                                "row": len(records)})
    for i in range(16):
        features.append(0.3 * rng.standard_normal(16))
        records.append({"kind": "none", "layer": -1, "strength": 0.0, "concept": concepts[i % 8], "row": len(records)})
    features = np.asarray(features)[None]
    probes = exp.probe_results(records, features, concepts, {0})
    held = [p for p in probes if p["kind"] == "concept" and p["concept"] in concepts[4:] and p["layer"] == 1]
    rand = [p for p in probes if p["kind"] == "random"]
    assert np.mean([p["probe_identified"] for p in held]) > 0.8  # held-out concepts at the held-out layer
    assert np.mean([p["probe_identified"] for p in rand]) < 0.3  # chance is 1/8


def test_selection_is_made_on_one_half_and_measured_on_the_other():
    selection = np.asarray([[0.1, 0.9], [0.5, np.nan]])
    measure = np.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert exp.select_then_measure(selection, measure) == ((0, 1), 2.0)


# ----------------------------------------------------------------------------------------------------
# the toy pipeline, micro preset (seconds)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("introspection")
    config = exp.PRESETS["micro"].replace(out_dir=str(out), run_name="micro")
    run_dir = exp.run(config)
    return config, run_dir, json.loads((run_dir / "summary.json").read_text())


# The micro run costs ~30 s (it trains a base model and a reporter); in `make test` the same code path is
# kept by test_paper_path_runs_without_sampling_on_a_tiny_hf_model and the synthetic can-fail tests above.
@pytest.mark.slow
def test_micro_run_writes_every_figure_with_error_bars(micro):
    config, run_dir, summary = micro
    for name in ("exp1_layers.png", "exp1_strength.png", "exp2_thoughts_vs_text.png", "exp3_prefill.png",
                 "exp4_intentional_control.png", "config.json", "metrics.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    assert set(summary["verdicts"]) == set(exp.CLAIMS)
    assert all(v in ("reproduced", "partially", "not reproduced") for v in summary["verdicts"].values())
    for name, claim in summary["claims"].items():
        assert claim["criterion"] == exp.CLAIMS[name][1]
    figs = summary["figures"]
    layers, strengths = figs["layers"], figs["strengths"]
    assert layers == list(range(config.model.num_layers))
    for key in ("exp1_base_heldout", "exp1_reporter_heldout", "exp1_base_all"):
        ident = figs[key]["identification"]
        assert np.asarray(ident["mean"], float).shape == (len(layers), len(strengths))
        assert np.asarray(ident["sem"], float).shape == (len(layers), len(strengths))
        assert ident["n"][0][0] == len(config.seeds)
        assert {"false_positive", "net", "control_yes", "random_detection", "probe_identification"} <= set(figs[key])
    for key in ("exp2", "exp3", "exp4"):
        assert key in figs and all("sem" in v for v in figs[key].values())
    for model_name in ("base", "reporter"):
        headline = summary["headline"][model_name]
        assert {"net", "identification", "false_positive"} <= set(headline)
        assert len(headline["net"]["per_seed"]) == len(config.seeds)
        assert headline["net"]["sem"] is not None  # two seeds: a finite standard error
    assert summary["what_the_toy_shows"]["cannot_show"]
    assert summary["paper"]["exp1"]["model"] == "Claude Opus 4.1"
    lines = (run_dir / "trials_seed0.jsonl").read_text().splitlines()
    kinds = {json.loads(line).get("kind") for line in lines}
    assert {"concept", "random", "none", "control", "control_none", "matched"} <= kinds


@pytest.mark.slow
def test_micro_run_can_fail(micro):
    _, _, summary = micro
    # an untrained 2-layer model on a 20-step budget reports nothing: the reporter claim must not hold
    assert summary["verdicts"]["reporter_generalises"] == "not reproduced"
    base = summary["headline"]["base"]
    assert base["net"]["mean"] <= 2 * (base["net"]["sem"] or 0) + 1e-9


# ----------------------------------------------------------------------------------------------------
# the paper preset's code path on a tiny random Hugging Face model


def _tiny_hf_model(path):
    import jax
    from flax import nnx

    from jaxstack.data.tokenizer import train_bpe
    from jaxstack.models import LlamaForCausalLM
    from jaxstack.models.checkpoint import save_pretrained
    from jaxstack.models.configs import LlamaConfig

    texts = [protocol.render_human_assistant(protocol.detection_turns()), *protocol.CONTROL_QUESTIONS,
             *protocol.SENTENCES[:4], " ".join(protocol.CONCEPT_WORDS[:4]), " ".join(protocol.BASELINE_WORDS[:4])] * 3
    # frequent enough that the BPE merges them: the paper path needs single-token "Yes" / "No" (as real vocabularies have)
    texts += ["Yes No yes no Sorry"] * 30
    tokenizer = train_bpe(texts, 400)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=2, num_kv_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=0)
    # numpy weights into an abstract model: no compiled initialisers (seconds of compile time per shape)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: np.ones(s.shape, s.dtype) if len(s.shape) == 1 else
                         (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), state)
    save_pretrained(nnx.merge(graphdef, state), path)
    tokenizer.save(path / "tokenizer.json")
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml}))
    return path


def _paper_config(model_dir, out, **changes):
    return exp.PRESETS["paper"].replace(
        model_dir=str(model_dir), grader="rule", policy="fp32", layers=(1,), strengths=(4.0,), strengths_text=(4.0,),
        trials=2, pairs=2, control_trials=2, max_new_tokens=3, max_new_tokens_word=3, max_new_tokens_repeat=3,
        max_new_tokens_prefill=3, batch_size=8, concepts=protocol.CONCEPT_WORDS[:4],
        baseline_words=protocol.BASELINE_WORDS[:4], control_words=protocol.BASELINE_WORDS[:3], out_dir=str(out),
        run_name="paper", show_progress=False, **changes)


def test_paper_path_runs_without_sampling_on_a_tiny_hf_model(tmp_path):
    """The fast variant of the slow test below: the paper preset's path (Hugging Face checkpoint, chat
    template, concept vectors, the per-layer loop, incremental trials, summary, plot) with Experiment 4,
    which needs no sampled tokens."""
    run_dir = exp.run(_paper_config(_tiny_hf_model(tmp_path / "hf"), tmp_path, experiments=("exp4",)))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sem_over"].startswith("seeds (trial draws")
    assert set(summary["figures"]["exp4"]) >= {"think", "dont_think", "control"}
    assert (run_dir / "exp4_intentional_control.png").stat().st_size > 0
    rows = [json.loads(line) for line in (run_dir / "trials_seed0.jsonl").read_text().splitlines()]
    assert {r["exp"] for r in rows} == {4} and len(rows) == 2 * 2  # pairs x (think, don't think)


@pytest.mark.slow
def test_paper_path_runs_one_trial_per_setting_on_a_tiny_hf_model(tmp_path):
    run_dir = exp.run(_paper_config(_tiny_hf_model(tmp_path / "hf"), tmp_path))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sem_over"].startswith("seeds (trial draws")
    assert "exp1_base_all" in summary["figures"] and "exp4" in summary["figures"]
    rows = [json.loads(line) for line in (run_dir / "trials_seed0.jsonl").read_text().splitlines()]
    assert {r["exp"] for r in rows} == {1, 2, 3, 4}
    detection = [r for r in rows if r["exp"] == 1 and r["kind"] == "concept"]
    assert len(detection) == 2 and all(r["layer"] == 1 and r["strength"] == 4.0 for r in detection)
    assert any(json.loads(line).get("stage") == "layer_done" for line in (run_dir / "metrics.jsonl").read_text().splitlines())


# ----------------------------------------------------------------------------------------------------
# the tiny preset (slow)


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    config = exp.PRESETS["tiny"].replace(out_dir=str(tmp_path), run_name="tiny", show_progress=False)
    run_dir = exp.run(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["verdicts"]) == set(exp.CLAIMS)
    for seed in summary["per_seed"]:
        assert seed["competence_base"]["describe"] > 0.8 and seed["competence_base"]["name"] > 0.8
    reporter = summary["headline"]["reporter"]
    # random vectors cannot be identified: at most chance plus three standard errors
    chance = summary["chance_identification"]
    assert reporter["random_identification"]["mean"] <= chance + 3 * (reporter["random_identification"]["sem"] or 0)


@pytest.mark.slow
def test_a_reporter_trained_without_injections_reports_nothing(tmp_path):
    config = exp.PRESETS["tiny"].replace(out_dir=str(tmp_path), run_name="null", seeds=(0, 1), reporter_scale=0.0,
                                         experiments=("exp1",), show_progress=False)
    summary = json.loads((exp.run(config) / "summary.json").read_text())
    reporter = summary["headline"]["reporter"]
    # labels it cannot predict: it says "yes" at random, so false positives cancel any identification
    assert reporter["net"]["mean"] <= 0.05
    assert summary["verdicts"]["reporter_generalises"] == "not reproduced"
