"""Taxonomy, value pairs, prompts B.1 / B.2, filtering, resumable generation, embeddings and de-duplication."""

import numpy as np
import pytest

from jaxstack.evals.spec_stress import scenarios, toy


def _taxonomy_csv(tmp_path, header="value,pct_convos,level_2\n"):
    path = tmp_path / "values_frequencies.csv"
    path.write_text(header + "honesty,10.5,epistemic\nkindness,7.0,social\nprivacy,3.0,protective\n"
                    "efficiency,1.5,practical\n", encoding="utf-8")
    return path


def test_taxonomy_loader_and_tree_columns(tmp_path):
    taxonomy = scenarios.load_taxonomy(_taxonomy_csv(tmp_path))
    assert list(taxonomy) == ["honesty", "kindness", "privacy", "efficiency"]
    assert taxonomy["honesty"] == {"pct_convos": 10.5, "level_2": "epistemic"}
    tree = tmp_path / "tree.csv"
    tree.write_text("value,top_level\nhonesty,Epistemic\n", encoding="utf-8")
    assert scenarios.load_taxonomy(_taxonomy_csv(tmp_path), tree)["honesty"]["top_level"] == "Epistemic"
    with pytest.raises(ValueError, match="missing column 'pct_convos'"):
        scenarios.load_taxonomy(_taxonomy_csv(tmp_path, header="value,share,level_2\n"))
    tree.write_text("value,top_level\nloyalty,Social\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'loyalty' is not in"):
        scenarios.load_taxonomy(_taxonomy_csv(tmp_path), tree)


def test_value_pairs_are_distinct_and_unordered_distinct():
    values = [f"v{i}" for i in range(6)]
    pairs = scenarios.sample_value_pairs(values, 15, seed=3)
    assert len({frozenset(p) for p in pairs}) == 15 and all(a != b for a, b in pairs)
    with pytest.raises(ValueError, match=r"n: expected 1..15"):
        scenarios.sample_value_pairs(values, 16)


def test_prompts_and_reply_parsing():
    b1 = scenarios.question_prompt("honesty", "kindness")
    assert "honesty versus kindness" in b1 and "[User Question]" in b1
    b2 = scenarios.biased_prompt("honesty", "kindness", "Should I tell her?", "value2")
    assert "Should I tell her?" in b2 and "lean" in b2 and "toward kindness" in b2 and "[User Query]" in b2
    assert scenarios.parse_tagged("thinking...\n[User Question] Should I tell her?\n", "[User Question]") == \
        "Should I tell her?"
    assert scenarios.parse_tagged("no tag here", "[User Question]") is None
    assert scenarios.parse_tagged("[User Question]   ", "[User Question]") is None
    assert scenarios.is_refusal("I'm sorry, but I can't help with that.") and not scenarios.is_refusal("Sorrow is...")


def test_generation_filters_refusals_and_incomplete_outputs_and_resumes(tmp_path):
    calls = []

    def complete(prompts):
        calls.extend(prompts)
        out = []
        for p in prompts:
            if "[User Query]" in p:
                out.append("I cannot rewrite this." if "toward b" in p and "a versus b" in p
                           else f"[User Query] biased: {p.split(chr(10))[2]}")
            elif "c versus d" in p:
                out.append("I'm sorry, I won't.")
            elif "e versus f" in p:
                out.append("Let me think about a question")  # cut off: no tag
            else:
                out.append("[User Question] a question")
        return out

    pairs = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]
    out = tmp_path / "scenarios.jsonl"
    counts = scenarios.generate_scenarios(pairs, complete, out, batch_size=2, progress=False)
    assert counts["refusal"] == 2 and counts["incomplete"] == 1 and counts["scenarios"] == 5
    rows = [r for r in scenarios.JsonlStore(out, ("scenario_id",)).rows()]
    assert sorted((r["value1"], r["nudge_direction"]) for r in rows) == [
        ("a", "neutral"), ("a", "value1"), ("g", "neutral"), ("g", "value1"), ("g", "value2")]
    calls.clear()
    again = scenarios.generate_scenarios(pairs, complete, out, progress=False)
    # finished pairs (a-b and g-h) are skipped; the dropped ones are asked again
    assert again["skipped_done"] == 2 and not any("a versus b" in c or "g versus h" in c for c in calls)


def test_mean_pooled_embeddings_match_a_manual_forward_and_dedup(random_model, tokenizer):
    from jaxstack.layers.interventions import Capture

    texts = ["To open a jar, twist the lid.", "To open a jar, twist the lid.", "Bread rises in a warm place."]
    emb = scenarios.mean_pooled_embeddings(random_model, tokenizer, texts, layer=-1, batch_size=4)
    assert emb.shape == (3, random_model.config.hidden_size)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ids = tokenizer.encode(texts[2])
    import jax.numpy as jnp

    out = random_model(jnp.asarray([ids]), capture=Capture.at(jnp.arange(len(ids))[None], -1))
    manual = np.asarray(out.captured["residual"][0, 0], np.float64).mean(axis=0)
    assert np.allclose(emb[2], manual / np.linalg.norm(manual), atol=1e-4)
    kept = scenarios.deduplicate(emb)
    assert kept.tolist() in ([0, 2], [1, 2])
    assert scenarios.deduplicate(emb, threshold=1e-9).tolist() in ([0, 2], [1, 2])  # exact duplicates always go


def test_toy_rubric_round_trip_and_developers_differ_only_where_the_spec_is_open():
    for k in range(7):
        assert toy.rule_positions(toy.strategy(k, "honesty", "kindness"), "honesty", "kindness") == (k, 6 - k)
    assert toy.rule_positions("mostly safety", "honesty", "kindness") is None
    spec = toy.ToySpec()
    directions = {}
    for seed in range(5):
        developer = toy.Developer.draw(spec, seed)
        rng = np.random.default_rng(0)
        for pair in spec.pairs:
            if pair.label in ("covered", "context"):
                for context in toy.CONTEXTS:
                    side = developer.position(pair, context, rng) > 3
                    directions.setdefault((pair.pair_id, context), set()).add(side)
    assert all(len(sides) == 1 for sides in directions.values())  # the spec's direction, for every developer
    gaps = {toy.Developer.draw(spec, seed).gap_position["honesty-autonomy"] for seed in range(8)}
    assert len(gaps) > 1
    assert "Prefer honesty over kindness." in spec.text() and "autonomy over honesty" not in spec.text()


def test_toy_rule_compliance_reads_the_toy_spec():
    pairs = {p.pair_id: p for p in toy.ToySpec().pairs}
    covered = pairs["honesty-kindness"]  # prefer honesty
    assert [toy.rule_compliance(covered, "work", k) for k in (6, 3, 1)] == ["compliant", "ambiguous", "non-compliant"]
    context = pairs["honesty-efficiency"]  # at work efficiency, at home honesty
    assert toy.rule_compliance(context, "work", 1) == "compliant" and toy.rule_compliance(context, "home", 1) == "non-compliant"
    assert toy.rule_compliance(pairs["privacy-safety"], "home", 6) == "ambiguous"
    assert toy.rule_compliance(pairs["honesty-autonomy"], "home", 0) == "compliant"
