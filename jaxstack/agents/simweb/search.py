"""Okapi BM25: SimWeb's search index over pages and, per page, over sentences."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class BM25:
    """Okapi BM25 over a list of documents (k1=1.2, b=0.75), with a deterministic tie-break
    on document index."""

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75):
        if not docs:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b = k1, b
        self.n = len(docs)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, d in enumerate(docs):
            tf = Counter(_terms(d))
            self.lengths.append(sum(tf.values()))
            for t, c in tf.items():
                self.postings[t].append((i, c))
        self.avgdl = max(1e-9, sum(self.lengths) / self.n)
        self.idf = {
            t: math.log(1 + (self.n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()
        }

    def scores(self, query: str) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for t in set(_terms(query)):
            idf = self.idf.get(t)
            if idf is None:
                continue
            for i, c in self.postings[t]:
                norm = c + self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avgdl)
                out[i] += idf * c * (self.k1 + 1) / norm
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        s = self.scores(query)
        return sorted(s.items(), key=lambda x: (-x[1], x[0]))[:k]
