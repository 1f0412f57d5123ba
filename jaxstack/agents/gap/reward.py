"""GAP's reward: :func:`em_reward`, the binary exact-match reward of its multi-hop QA RL (last
``<answer>``, split on ``|``, every prediction must be in the normalised gold set)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def em_reward(response: str, gold: str | Iterable[str]) -> float:
    """GAP's binary exact-match reward: take the *last* ``<answer>...</answer>``, split it on
    ``|``; 1.0 iff there is at least one prediction and every normalised prediction is in the
    normalised gold set; 0.0 without an answer."""
    matches = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    if not matches:
        return 0.0
    golds = {normalize_answer(g) for g in ([gold] if isinstance(gold, str) else gold)}
    preds = [normalize_answer(p) for p in matches[-1].split("|")]
    preds = [p for p in preds if p]
    if not preds:
        return 0.0
    return 1.0 if all(p in golds for p in preds) else 0.0
