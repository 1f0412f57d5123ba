"""Metrics for the introspection experiments that need no judge: logits, ranks, cosines, probes, and
the means with standard errors that every reported number carries.

* :func:`affirmative_probability`: the probability of an affirmative first token (``Yes``) against a
  negative one (``No``) at the position where the reply begins;
* :func:`token_rank` / :func:`choice_rank` / :func:`forced_choice`: where the concept word ranks in
  the next-token distribution, over the whole vocabulary or among K candidates (Experiment 2's
  10-way choice scored with logits);
* :func:`introspection_score`: the detection question's P(yes) shift under injection minus the
  control questions' shift (the open replications' yes-bias control);
* :func:`cosine`: Experiment 4's cosine between residuals and a concept vector;
* :class:`LogisticProbe` / :func:`ridge_fit`: linear probes on captured activations ("is the injected
  concept present in the activations?", the ceiling for what a reporter could say);
* :func:`mean_sem`, :func:`difference_sem`: mean and standard error of the mean (SEM, ddof 1), the
  paper's error bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def mean_sem(values, axis: int | None = None) -> dict[str, Any]:
    """``{"mean", "sem", "n"}`` of ``values`` (NaNs dropped; SEM = std(ddof=1) / sqrt(n), NaN for n < 2).
    With ``axis``: arrays of means and SEMs over that axis."""
    x = np.asarray(values, np.float64)
    if axis is None:
        x = x[~np.isnan(x)].reshape(-1)
        n = int(x.size)
        mean = float(x.mean()) if n else float("nan")
        sem = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        return {"mean": mean, "sem": sem, "n": n}
    n = np.sum(~np.isnan(x), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(x, axis=axis)
        sem = np.where(n > 1, np.nanstd(x, axis=axis, ddof=1) / np.sqrt(np.maximum(n, 1)), np.nan)
    return {"mean": mean.tolist(), "sem": np.asarray(sem).tolist(), "n": np.asarray(n).tolist()}


def difference_sem(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a - b for two independent :func:`mean_sem` results (SEMs added in quadrature)."""
    return {"mean": a["mean"] - b["mean"], "sem": float(np.hypot(a["sem"], b["sem"])), "n": min(a["n"], b["n"])}


def answer_token_ids(encode, words: Sequence[str], prefixes: Sequence[str] = ("", " ")) -> list[int]:
    """Ids of the single-token spellings of ``words`` (each with each prefix, e.g. "Yes" and " Yes"):
    the first tokens an affirmative / negative reply can start with. ValueError if none is one token."""
    ids = []
    for word in words:
        for prefix in prefixes:
            encoded = list(encode(prefix + word))
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(int(encoded[0]))
    if not ids:
        raise ValueError(f"words: none of {list(words)} (with prefixes {list(prefixes)}) is a single token")
    return ids


def affirmative_probability(logits, yes_ids: Sequence[int], no_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """logits: [B, V] at the position where the reply begins. Returns ``p_yes`` / ``p_no`` [B] (the
    probability mass of the yes / no first tokens) and ``p_yes_of_answer`` [B] = p_yes / (p_yes + p_no)."""
    logits = jnp.asarray(logits, jnp.float32)
    chex.assert_rank(logits, 2)
    probs = jax.nn.softmax(logits, axis=-1)
    p_yes = jnp.sum(probs[:, jnp.asarray(list(yes_ids))], axis=-1)
    p_no = jnp.sum(probs[:, jnp.asarray(list(no_ids))], axis=-1)
    ratio = p_yes / jnp.maximum(p_yes + p_no, 1e-30)
    return {"p_yes": np.asarray(p_yes), "p_no": np.asarray(p_no), "p_yes_of_answer": np.asarray(ratio)}


def token_rank(logits, targets) -> np.ndarray:
    """logits: [B, V]; targets: [B] ids. Returns [B] int: the number of tokens with a strictly larger
    logit (0 = the target is the most likely token)."""
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.int32)
    chex.assert_rank([logits, targets], [2, 1])
    chex.assert_equal_shape_prefix([logits, targets], 1)
    target = jnp.take_along_axis(logits, targets[:, None], axis=1)
    return np.asarray(jnp.sum(logits > target, axis=1))


def choice_rank(logits, candidates, target_index) -> np.ndarray:
    """logits: [B, V]; candidates: [B, K] token ids; target_index: [B] (which candidate is right).
    Returns [B] int: the target's rank among the K candidates' logits (0 = chosen)."""
    logits = jnp.asarray(logits, jnp.float32)
    candidates = jnp.asarray(candidates, jnp.int32)
    target_index = jnp.asarray(target_index, jnp.int32)
    chex.assert_rank([logits, candidates, target_index], [2, 2, 1])
    scores = jnp.take_along_axis(logits, candidates, axis=1)
    target = jnp.take_along_axis(scores, target_index[:, None], axis=1)
    return np.asarray(jnp.sum(scores > target, axis=1))


def forced_choice(logits, candidates) -> np.ndarray:
    """[B] int: the index of the highest-logit candidate (logits [B, V], candidates [B, K] ids)."""
    logits = jnp.asarray(logits, jnp.float32)
    candidates = jnp.asarray(candidates, jnp.int32)
    chex.assert_rank([logits, candidates], [2, 2])
    return np.asarray(jnp.argmax(jnp.take_along_axis(logits, candidates, axis=1), axis=1))


def cosine(a, b, axis: int = -1) -> np.ndarray:
    """Cosine similarity along ``axis`` (0 where either vector is 0); a and b broadcast."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)
    dots = np.sum(a * b, axis=axis)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def introspection_score(detect_injected, detect_none, control_injected, control_none) -> float:
    """(mean P(yes) on the detection question with injection - without) minus (the same shift on the
    "no"-answer control questions): > 0 only if injection raises "yes" on the detection question more
    than it raises "yes" everywhere."""
    shift = lambda a, b: float(np.mean(a)) - float(np.mean(b))
    return shift(detect_injected, detect_none) - shift(control_injected, control_none)


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length sequences (NaN if either is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x, y: expected two sequences of the same length >= 2, got {x.shape} and {y.shape}")
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ----------------------------------------------------------------------------------------------------
# Linear probes (numpy; features are [N, D] captured residuals)


class LogisticProbe:
    """Binary L2-regularised logistic regression on standardised features, fitted by Newton's method
    (IRLS; exact for these sizes). ``fit(X [N, D], y [N] in {0, 1})``; ``predict_proba(X) -> [N]``."""

    def __init__(self, l2: float = 1.0, iterations: int = 50):
        if l2 < 0:
            raise ValueError(f"l2: expected >= 0, got {l2}")
        self.l2, self.iterations = l2, iterations
        self.weights = self.bias = self.mean = self.scale = None

    def fit(self, features, labels) -> LogisticProbe:
        x = np.asarray(features, np.float64)
        y = np.asarray(labels, np.float64)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"features / labels: expected [N, D] and [N], got {x.shape} and {y.shape}")
        if not set(np.unique(y)) <= {0.0, 1.0}:
            raise ValueError("labels: expected 0 / 1")
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-8
        z = np.concatenate([(x - self.mean) / self.scale, np.ones((len(x), 1))], axis=1)
        w = np.zeros(z.shape[1])
        penalty = self.l2 * np.eye(z.shape[1])
        penalty[-1, -1] = 0.0
        for _ in range(self.iterations):
            p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
            gradient = z.T @ (p - y) + penalty @ w
            hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        self.weights, self.bias = w[:-1], w[-1]
        return self

    def predict_proba(self, features) -> np.ndarray:
        if self.weights is None:
            raise ValueError("probe: call fit first")
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-np.clip(z @ self.weights + self.bias, -30, 30)))

    def accuracy(self, features, labels) -> float:
        """Balanced accuracy (mean of the two classes' accuracies) at threshold 0.5."""
        y = np.asarray(labels).astype(bool)
        guess = self.predict_proba(features) >= 0.5
        parts = [np.mean(guess[y] == y[y]) if y.any() else np.nan, np.mean(guess[~y] == y[~y]) if (~y).any() else np.nan]
        return float(np.nanmean(parts))


def ridge_fit(features, targets, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``targets ~ features @ W + b`` with an L2 penalty on W. features: [N, D]; targets:
    [N, E]. Returns (W [D, E], b [E])."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features / targets: expected [N, D] and [N, E], got {x.shape} and {y.shape}")
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


__all__ = [
    "LogisticProbe", "affirmative_probability", "answer_token_ids", "choice_rank", "cosine", "difference_sem",
    "forced_choice", "introspection_score", "mean_sem", "pearson", "ridge_fit", "token_rank",
]
