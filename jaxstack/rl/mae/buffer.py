"""The evolving question dataset of Multi-Agent Evolve: the seed set plus the proposer's questions
that passed the quality gate, with reference sampling for the proposer's prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class QuestionBuffer:
    """Seed questions (always kept) and gated proposer questions (the newest ``max_evolved`` kept).

    ``sample`` draws solver questions uniformly from both; ``references`` decides which proposer
    prompts carry a reference question (``include_references`` = 0, 0.5, 1: none, exactly half
    (rounded), all) and draws it the same way.
    """

    def __init__(self, seeds: Sequence[str], *, max_evolved: int | None = None):
        seeds = [str(q) for q in seeds]
        if not seeds:
            raise ValueError("seeds: the evolving dataset needs at least one seed question")
        if max_evolved is not None and max_evolved < 0:
            raise ValueError(f"max_evolved: expected >= 0 or None, got {max_evolved}")
        self.seeds = seeds
        self.max_evolved = max_evolved
        self.evolved: list[str] = []
        self.added_at: list[int] = []

    def __len__(self) -> int:
        return len(self.seeds) + len(self.evolved)

    @property
    def questions(self) -> list[str]:
        return self.seeds + self.evolved

    def add(self, question: str, step: int) -> None:
        """Adds one gated question (a question already in the dataset is not added twice)."""
        if question in self.evolved or question in self.seeds:
            return
        self.evolved.append(question)
        self.added_at.append(step)
        if self.max_evolved is not None and len(self.evolved) > self.max_evolved:
            drop = len(self.evolved) - self.max_evolved
            del self.evolved[:drop], self.added_at[:drop]

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        questions = self.questions
        return [questions[i] for i in rng.integers(0, len(questions), size=n)]

    def references(self, rng: np.random.Generator, n: int, include_references: float) -> list[str | None]:
        """n proposer references: round(n x include_references) of them a question from the dataset
        (on randomly chosen prompts), the others None (a prompt without a reference)."""
        if not 0.0 <= include_references <= 1.0:
            raise ValueError(f"include_references: expected a fraction in [0, 1], got {include_references}")
        count = round(n * include_references)
        chosen = set(rng.permutation(n)[:count].tolist())
        drawn = self.sample(rng, count)
        out, k = [], 0
        for i in range(n):
            if i in chosen:
                out.append(drawn[k])
                k += 1
            else:
                out.append(None)
        return out
