"""Turning introspection trial records into numbers: rates per (layer, strength), linear probes on the
captured activations, and a setting chosen on one half of the trials and measured on the other.

The records are those of :mod:`jaxstack.interp.introspection` (plain dicts). Every function returns
plain floats / arrays of one model and one seed; means and standard errors over seeds are the
caller's (:func:`jaxstack.interp.metrics.mean_sem`).

* :func:`exp1_cells`: Experiment 1 per (layer, strength): graded identification and detection, false
  positives (no injection), net = identification - false positives, the logit identification, P(yes)
  on the detection and on the control questions (as a share of P(yes) + P(no), and as probability
  mass), the control questions' sampled "yes" rate, random-vector detection / identification, the
  probes' detection / identification, and the introspection score;
* :func:`exp2_cells`, :func:`exp3_cells`, :func:`exp4_cells`: Experiments 2-4 (``pair_filter`` keeps a
  subset of the pairs, e.g. :func:`even_pairs` to choose a setting and :func:`odd_pairs` to measure it);
* :func:`probe_results`: logistic detection and one-hot ridge identification probes;
* :func:`select_then_measure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxstack.interp.metrics import LogisticProbe, ridge_fit


def probe_results(records: Sequence[dict], features: np.ndarray, concepts: Sequence[str],
                  train_layers: set[int]) -> list[dict[str, Any]]:
    """Linear probes on the final residual at the last prompt token of Experiment 1's detection trials:
    what is *present* in the activations the reply is computed from.

    detection: logistic regression, concept-injected (1) vs not injected (0), fitted on the trials at
    the training layers (every concept and strength) and the no-injection trials; identification:
    ridge regression onto one-hot concept labels (a linear classifier over ``concepts``), fitted on the
    injected trials at the training layers (every concept, so a held-out concept's class has been seen
    at other layers: the probe measures information, not transfer to unseen concepts). Both are
    evaluated on every trial; chance identification is 1 / len(concepts) (random-vector trials are
    scored against their assigned target). Returns one record per detection trial."""
    rows = [r for r in records if r["row"] is not None]
    x = features[-1]  # the last probe layer: the final residual
    index = {c: i for i, c in enumerate(concepts)}
    train = [r for r in rows if r["kind"] == "concept" and r["layer"] in train_layers]
    negatives = [r for r in rows if r["kind"] == "none"]
    if not train or not negatives:
        return []
    xs = np.concatenate([x[[r["row"] for r in train]], x[[r["row"] for r in negatives]]])
    ys = np.concatenate([np.ones(len(train)), np.zeros(len(negatives))])
    detector = LogisticProbe(l2=1.0).fit(xs, ys)
    targets = np.eye(len(concepts))[[index[r["concept"]] for r in train]]
    scale = np.linalg.norm(x[[r["row"] for r in train]], axis=1).mean() + 1e-12
    w, b = ridge_fit(x[[r["row"] for r in train]] / scale, targets, l2=1e-2)
    detected = detector.predict_proba(x[[r["row"] for r in rows]]) >= 0.5
    guesses = np.argmax(x[[r["row"] for r in rows]] / scale @ w + b, axis=1)
    return [{"kind": r["kind"], "layer": r["layer"], "strength": r["strength"], "concept": r["concept"],
             "probe_detected": bool(d), "probe_identified": concepts[int(g)] == r["concept"]}
            for r, d, g in zip(rows, detected, guesses)]


def _rate(rows: Sequence[dict], key: str) -> float:
    values = [float(bool(r[key])) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def _mean(rows: Sequence[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def exp1_cells(records: Sequence[dict], probes: Sequence[dict], *, layers: Sequence[int], strengths: Sequence[float],
               concept_set: set[str] | None) -> dict[str, Any]:
    """Experiment 1's numbers for one model and seed, per (layer, strength) over the trials whose concept is
    in ``concept_set`` (None: all): arrays [len(layers), len(strengths)] per metric, plus the no-injection
    rates (scalars)."""
    def keep(r):
        return concept_set is None or r["concept"] in concept_set

    none = [r for r in records if r["kind"] == "none" and keep(r)]
    control_none = [r for r in records if r["kind"] == "control_none"]
    cells: dict[str, Any] = {m: np.full((len(layers), len(strengths)), np.nan) for m in (
        "identification", "detection", "logit_identification", "p_yes", "control_yes", "control_p_yes",
        "p_yes_mass", "control_p_yes_mass",
        "random_detection", "random_identification", "random_logit_identification", "probe_detection",
        "probe_identification", "probe_random_identification")}
    for i, layer in enumerate(layers):
        for j, strength in enumerate(strengths):
            def at(r, layer=layer, strength=strength):
                return r["layer"] == layer and r["strength"] == strength

            concept = [r for r in records if r["kind"] == "concept" and at(r) and keep(r)]
            random = [r for r in records if r["kind"] == "random" and at(r) and keep(r)]
            control = [r for r in records if r["kind"] == "control" and at(r)]
            cells["identification"][i, j] = _rate(concept, "success")
            cells["detection"][i, j] = _rate(concept, "detected")
            cells["logit_identification"][i, j] = _rate(concept, "identified_logit")
            cells["p_yes"][i, j] = _mean(concept, "p_yes_of_answer")
            cells["control_yes"][i, j] = _rate(control, "affirmative")
            cells["control_p_yes"][i, j] = _mean(control, "p_yes_of_answer")
            cells["p_yes_mass"][i, j] = _mean(concept, "p_yes")
            cells["control_p_yes_mass"][i, j] = _mean(control, "p_yes")
            cells["random_detection"][i, j] = _rate(random, "detected")
            cells["random_identification"][i, j] = _rate(random, "success")
            cells["random_logit_identification"][i, j] = _rate(random, "identified_logit")
            p_concept = [p for p in probes if p["kind"] == "concept" and at(p) and keep(p)]
            p_random = [p for p in probes if p["kind"] == "random" and at(p) and keep(p)]
            cells["probe_detection"][i, j] = _rate(p_concept, "probe_detected")
            cells["probe_identification"][i, j] = _rate(p_concept, "probe_identified")
            cells["probe_random_identification"][i, j] = _rate(p_random, "probe_identified")
    cells["false_positive"] = _rate(none, "detected")
    cells["none_identification"] = _rate(none, "success")
    cells["none_p_yes"] = _mean(none, "p_yes_of_answer")
    cells["control_none_yes"] = _rate(control_none, "affirmative")
    cells["control_none_p_yes"] = _mean(control_none, "p_yes_of_answer")
    cells["none_p_yes_mass"] = _mean(none, "p_yes")
    cells["control_none_p_yes_mass"] = _mean(control_none, "p_yes")
    cells["probe_false_positive"] = _rate([p for p in probes if p["kind"] == "none" and keep(p)], "probe_detected")
    cells["net"] = cells["identification"] - cells["false_positive"]
    cells["introspection_score"] = ((cells["p_yes"] - cells["none_p_yes"])
                                    - (cells["control_p_yes"] - cells["control_none_p_yes"]))
    return cells


def exp2_cells(records: Sequence[dict], layers, strengths, pair_filter=None) -> dict[str, np.ndarray]:
    """Experiment 2 per (layer, strength): the 10-way logit choice, the judge's word, the repeat test,
    both (the same pair's word and repeat trials), the random-vector choice; the no-injection rates."""
    keep = (lambda r: True) if pair_filter is None else pair_filter
    out = {m: np.full((len(layers), len(strengths)), np.nan) for m in (
        "word_logit", "word_judge", "repeat", "both", "random_word_logit")}
    for i, layer in enumerate(layers):
        for j, strength in enumerate(strengths):
            rows = [r for r in records if r["layer"] == layer and r["strength"] == strength and keep(r)]
            word = {r["pair"]: r for r in rows if r["kind"] == "concept" and r["prompt"] == "word"}
            repeat = {r["pair"]: r for r in rows if r["kind"] == "concept" and r["prompt"] == "repeat"}
            out["word_logit"][i, j] = _rate(list(word.values()), "word_logit_ok")
            out["word_judge"][i, j] = _rate(list(word.values()), "word_ok")
            out["repeat"][i, j] = _rate(list(repeat.values()), "repeat_ok")
            both = [bool(word[p].get("word_ok")) and bool(repeat[p].get("repeat_ok")) for p in word if p in repeat]
            out["both"][i, j] = float(np.mean(both)) if both else np.nan
            out["random_word_logit"][i, j] = _rate([r for r in rows if r["kind"] == "random"], "word_logit_ok")
    none = [r for r in records if r["kind"] == "none" and keep(r)]
    out["none_word_logit"] = _rate([r for r in none if r["prompt"] == "word"], "word_logit_ok")
    out["none_word_judge"] = _rate([r for r in none if r["prompt"] == "word"], "word_ok")
    out["none_repeat"] = _rate([r for r in none if r["prompt"] == "repeat"], "repeat_ok")
    return out


def exp3_cells(records: Sequence[dict], layers, strengths, pair_filter=None) -> dict[str, Any]:
    """Experiment 3 per (layer, strength): apology rates (judge) and P(apology first token) with the
    prefilled word's and another word's vector; the no-injection rates; unreadable judgements."""
    keep = (lambda r: True) if pair_filter is None else pair_filter
    out: dict[str, Any] = {m: np.full((len(layers), len(strengths)), np.nan) for m in (
        "matched_apology", "random_apology", "matched_p_apology", "random_p_apology")}
    for i, layer in enumerate(layers):
        for j, strength in enumerate(strengths):
            rows = [r for r in records if r["layer"] == layer and r["strength"] == strength and keep(r)]
            for kind in ("matched", "random"):
                out[f"{kind}_apology"][i, j] = _rate([r for r in rows if r["kind"] == kind], "apology")
                out[f"{kind}_p_apology"][i, j] = _mean([r for r in rows if r["kind"] == kind], "p_apology")
    none = [r for r in records if r["kind"] == "none" and keep(r)]
    out["none_apology"] = _rate(none, "apology")
    out["none_p_apology"] = _mean(none, "p_apology")
    out["unparsed"] = sum(r["claims_intent"] is None for r in records)
    return out


def exp4_cells(records: Sequence[dict], layers, pair_filter=None) -> dict[str, np.ndarray]:
    """Experiment 4 per layer: mean cosine under "think" / "don't think", the control words' mean and spread."""
    keep = (lambda r: True) if pair_filter is None else pair_filter
    out = {}
    for instruction in ("think", "dont_think"):
        rows = [r for r in records if r["instruction"] == instruction and keep(r)]
        out[instruction] = np.mean([r["cos_word"] for r in rows], axis=0) if rows else np.full(len(layers), np.nan)
    rows = [r for r in records if keep(r)]
    out["control"] = np.mean([r["cos_control_mean"] for r in rows], axis=0) if rows else np.full(len(layers), np.nan)
    out["control_std"] = np.mean([r["cos_control_std"] for r in rows], axis=0) if rows else np.full(len(layers), np.nan)
    return out


def even_pairs(record) -> bool:
    """The selection half of Experiments 2-4's pairs."""
    return record["pair"] % 2 == 0


def odd_pairs(record) -> bool:
    """The measurement half of Experiments 2-4's pairs."""
    return record["pair"] % 2 == 1


def select_then_measure(selection: np.ndarray, measure: np.ndarray) -> tuple[tuple[int, ...], float]:
    """The index of the largest ``selection`` value (NaN skipped) and ``measure`` there: a setting chosen on
    one half of the trials and reported on the other."""
    flat = np.where(np.isnan(selection), -np.inf, selection)
    index = np.unravel_index(int(np.argmax(flat)), selection.shape)
    return tuple(int(i) for i in index), float(measure[index])


__all__ = ["even_pairs", "exp1_cells", "exp2_cells", "exp3_cells", "exp4_cells", "odd_pairs", "probe_results",
           "select_then_measure"]
