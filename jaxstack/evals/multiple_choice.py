"""Multiple-choice evaluation with lm-evaluation-harness's conventions, on top of the inference scorer.

Each choice of an item is scored as the request ``(context, target_delimiter + choice)`` by
:class:`jaxstack.inference.scoring.LoglikelihoodScorer` (or a backend with ``loglikelihoods``, e.g. the
HTTP client); the metrics follow lm-eval 0.4.x (``lm_eval/api/task.py``): ``acc`` = argmax of the summed
log-likelihoods, ``acc_norm`` divides by the choice's characters, ``acc_bytes`` by its UTF-8 bytes, both
*without* the target delimiter; stderr = sample standard deviation (ddof=1) / sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxstack.inference.scoring import LoglikelihoodScorer, is_loglikelihood_backend


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One multiple-choice question: score ``context + target_delimiter + choice`` for each choice.

    context: the prompt text (may be empty). choices: the candidate continuations (without the
    delimiter). label: index of the correct choice. meta: free-form (e.g. variety, script, item id).
    """

    context: str
    choices: tuple[str, ...]
    label: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.context, str):
            raise ValueError(f"MultipleChoiceItem.context: expected a string, got {type(self.context).__name__}")
        choices = tuple(self.choices) if isinstance(self.choices, (list, tuple)) else self.choices
        if not isinstance(choices, tuple) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"MultipleChoiceItem.choices: expected a tuple of at least 2 strings, got {self.choices!r}")
        if any(c == "" for c in choices):
            raise ValueError("MultipleChoiceItem.choices: empty choice strings cannot be length-normalised")
        object.__setattr__(self, "choices", choices)
        if isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)) or not (
            0 <= int(self.label) < len(choices)
        ):
            raise ValueError(
                f"MultipleChoiceItem.label: expected an integer in [0, {len(choices)}), got {self.label!r}"
            )
        object.__setattr__(self, "label", int(self.label))


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation (ddof=1) / sqrt(n); nan for n < 2."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def multiple_choice_metrics(loglikelihoods_per_item: Sequence[Sequence[float]],
                            items: Sequence[MultipleChoiceItem]) -> dict[str, Any]:
    """acc / acc_norm / acc_bytes (+ ``*_stderr``) from per-choice log-likelihoods.

    loglikelihoods_per_item[i][j]: summed log-likelihood of choice j of item i. Normalisers are the
    choice's characters and UTF-8 bytes without the target delimiter (lm-eval's ``process_results``).
    Returns the metrics, ``n`` and per-item ``records``.
    """
    if len(loglikelihoods_per_item) != len(items):
        raise ValueError(f"loglikelihoods: {len(loglikelihoods_per_item)} rows for {len(items)} items")
    records = []
    for item, lls in zip(items, loglikelihoods_per_item):
        lls = np.asarray(lls, np.float64)
        if lls.shape != (len(item.choices),):
            raise ValueError(f"loglikelihoods: expected {len(item.choices)} values per item, got shape {lls.shape}")
        chars = np.asarray([len(c) for c in item.choices], np.float64)
        nbytes = np.asarray([len(c.encode("utf-8")) for c in item.choices], np.float64)
        prediction = int(np.argmax(lls))
        prediction_norm = int(np.argmax(lls / chars))
        prediction_bytes = int(np.argmax(lls / nbytes))
        records.append({
            "loglikelihoods": lls.tolist(),
            "label": item.label,
            "prediction": prediction,
            "prediction_norm": prediction_norm,
            "prediction_bytes": prediction_bytes,
            "correct": prediction == item.label,
            "acc": float(prediction == item.label),
            "acc_norm": float(prediction_norm == item.label),
            "acc_bytes": float(prediction_bytes == item.label),
            "meta": dict(item.meta),
        })
    metrics: dict[str, Any] = {"n": len(items)}
    for name in ("acc", "acc_norm", "acc_bytes"):
        values = [r[name] for r in records]
        metrics[name] = float(np.mean(values)) if values else float("nan")
        metrics[f"{name}_stderr"] = mean_stderr(values)
    metrics["records"] = records
    return metrics


def multiple_choice_requests(items: Sequence[MultipleChoiceItem], target_delimiter: str = " ") -> list[tuple[str, str]]:
    """The (context, delimiter + choice) requests of ``items``, item by item, choice by choice."""
    return [(item.context, f"{target_delimiter}{choice}") for item in items for choice in item.choices]


def evaluate_multiple_choice(model, tokenizer, items: Sequence[MultipleChoiceItem], *, target_delimiter: str = " ",
                             batch_size: int = 16, progress: bool = True,
                             max_length: int | None = None) -> dict[str, Any]:
    """Scores every choice of every item and returns lm-eval's multiple-choice metrics.

    model: a jaxstack model or a backend with ``loglikelihoods`` (the HTTP client). Returns
    ``{"acc", "acc_norm", "acc_bytes", "*_stderr", "n", "n_truncated", "records": [...]}``; each record
    has the per-choice ``loglikelihoods``, ``is_greedy``, ``prediction`` (and ``_norm`` / ``_bytes``),
    ``label``, ``correct`` and the item's ``meta``.
    """
    items = list(items)
    if not items:
        raise ValueError("items: expected at least one MultipleChoiceItem")
    for index, item in enumerate(items):
        if not isinstance(item, MultipleChoiceItem):
            raise ValueError(f"items[{index}]: expected a MultipleChoiceItem, got {type(item).__name__}")
    requests = multiple_choice_requests(items, target_delimiter)
    n_truncated = 0
    if is_loglikelihood_backend(model):
        results = model.loglikelihoods(requests, batch_size=batch_size, progress=progress)
    else:
        scorer = LoglikelihoodScorer(model, tokenizer, max_length=max_length, batch_size=batch_size)
        results = scorer.loglikelihoods(requests, progress=progress)
        n_truncated = scorer.truncated
    per_item, greedy, offset = [], [], 0
    for item in items:
        chunk = results[offset:offset + len(item.choices)]
        per_item.append([ll for ll, _ in chunk])
        greedy.append([g for _, g in chunk])
        offset += len(item.choices)
    metrics = multiple_choice_metrics(per_item, items)
    for record, flags in zip(metrics["records"], greedy):
        record["is_greedy"] = flags
    metrics["n_truncated"] = n_truncated
    return metrics


__all__ = [
    "MultipleChoiceItem",
    "evaluate_multiple_choice",
    "mean_stderr",
    "multiple_choice_metrics",
    "multiple_choice_requests",
]
