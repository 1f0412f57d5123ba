"""Verifiable toy tasks with no downloads: a character vocabulary, prompts of fixed length, exact
verifiers and demonstrations for SFT.

* :class:`LengthTask` -- the length sanity check (TRL's AsyncGRPO check, shared/refs/rl.md 6.3):
  reward = -(tokens before EOS) / budget, -1 if no EOS; the optimum is to emit EOS at once.
* :class:`ArithmeticTask` -- k-digit addition with a scratchpad (per digit, least significant first:
  ``a_i b_i carry_in sum_i ;``), then ``|`` and the k+1 answer digits, then EOS. Reward 1 iff the
  answer after ``|`` is exactly right and EOS follows. The "perfectible" sanity-test analogue: SFT a
  base on noisy demonstrations to 20-80% success, then RL on a fixed pool of problems.
* :class:`SortTask` -- sort n digits; reward = fraction of positions right (0 without EOS).

The vocabulary has rare *distractor* tokens (``a`` .. ``p``): demonstrations contain them with a small
probability, so a trained policy puts a little mass on them and the tail of the distribution matters.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPECIALS = ("<pad>", "<bos>", "<eos>")
SYMBOLS = tuple("0123456789") + ("+", "=", ">", ";", "|")
DISTRACTORS = tuple("abcdefghijklmnop")
VOCAB = SPECIALS + SYMBOLS + DISTRACTORS
TOKEN_ID = {token: index for index, token in enumerate(VOCAB)}
PAD, BOS, EOS = 0, 1, 2
DIGIT0 = TOKEN_ID["0"]
DISTRACTOR_IDS = np.array([TOKEN_ID[t] for t in DISTRACTORS], np.int32)


def encode(tokens) -> list[int]:
    """Token strings (e.g. ``["<bos>", "1", "+"]``) or a plain string of single characters -> ids."""
    try:
        return [TOKEN_ID[t] for t in tokens]
    except KeyError as error:
        raise ValueError(f"encode: unknown token {error.args[0]!r}; the vocabulary is {list(VOCAB)}") from None


def decode(ids) -> str:
    out = []
    for i in ids:
        i = int(i)
        out.append(VOCAB[i] if 0 <= i < len(VOCAB) else f"<{i}>")
    return " ".join(out)


def _answer_segment(response: np.ndarray, mask: np.ndarray) -> tuple[list[int], bool]:
    """Valid response tokens before EOS and whether an EOS ended the response."""
    tokens = [int(t) for t, m in zip(response, mask) if m > 0]
    if tokens and tokens[-1] == EOS:
        return tokens[:-1], True
    return tokens, False


@dataclasses.dataclass(frozen=True)
class Problems:
    """prompts: [N, P] int32; data: [N, ...] int task data (operands, digits)."""

    prompts: np.ndarray
    data: np.ndarray

    def repeat(self, times: int) -> Problems:
        """Each problem ``times`` times in a row (a GRPO group)."""
        return Problems(np.repeat(self.prompts, times, axis=0), np.repeat(self.data, times, axis=0))

    def __len__(self) -> int:
        return self.prompts.shape[0]


class Task:
    """Base: ``sample(rng, n)``, ``reward(problems, responses, mask)``, ``demonstration(data)``."""

    name = "task"
    prompt_length: int
    max_new_tokens: int

    def sample(self, rng: np.random.Generator, n: int) -> Problems:
        raise NotImplementedError

    def reward(self, problems: Problems, responses: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """responses, mask: [N, G] -> rewards [N] float32."""
        responses, mask = np.asarray(responses), np.asarray(mask)
        if responses.shape[0] != len(problems) or responses.shape != mask.shape:
            raise ValueError(f"responses/mask: expected [{len(problems)}, G] each, got {responses.shape}, {mask.shape}")
        return np.array([self._reward_one(problems.data[i], responses[i], mask[i]) for i in range(len(problems))],
                        np.float32)

    def _reward_one(self, data, response, mask) -> float:
        raise NotImplementedError

    def demonstration(self, data) -> list[int]:
        raise NotImplementedError

    def success(self, rewards: np.ndarray) -> np.ndarray:
        return rewards >= 1.0


@dataclasses.dataclass(frozen=True)
class LengthTask(Task):
    """Prompt ``<bos> d d d d >``; reward -(tokens before EOS) / max_new_tokens, -1 without EOS."""

    prompt_digits: int = 4
    max_new_tokens: int = 12
    name = "length"

    @property
    def prompt_length(self) -> int:
        return self.prompt_digits + 2

    def sample(self, rng, n):
        digits = rng.integers(0, 10, size=(n, self.prompt_digits))
        prompts = np.concatenate([np.full((n, 1), BOS), digits + DIGIT0, np.full((n, 1), TOKEN_ID[">"])], axis=1)
        return Problems(prompts.astype(np.int32), digits.astype(np.int32))

    def _reward_one(self, data, response, mask):
        body, finished = _answer_segment(response, mask)
        return -len(body) / self.max_new_tokens if finished else -1.0

    def demonstration(self, data):
        return [EOS]

    def success(self, rewards):
        return rewards >= 0.0


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(Task):
    """k-digit addition with a scratchpad. Prompt ``<bos> a_1..a_k + b_1..b_k =`` (zero-padded)."""

    digits: int = 2
    slack: int = 4
    pool_size: int | None = None
    pool_seed: int = 1234
    name = "arithmetic"

    @property
    def prompt_length(self) -> int:
        return 2 * self.digits + 3

    @property
    def response_length(self) -> int:
        return 5 * self.digits + 1 + (self.digits + 1) + 1

    @property
    def max_new_tokens(self) -> int:
        return self.response_length + self.slack

    def _operands(self, rng, n):
        if self.pool_size is not None:
            pool = np.random.default_rng(self.pool_seed).integers(0, 10 ** self.digits, size=(self.pool_size, 2))
            return pool[rng.integers(0, self.pool_size, size=n)]
        return rng.integers(0, 10 ** self.digits, size=(n, 2))

    def _digits(self, value, width):
        return [int(c) for c in str(int(value)).zfill(width)]

    def sample(self, rng, n):
        operands = self._operands(rng, n)
        prompts = []
        for a, b in operands:
            prompts.append([BOS] + [DIGIT0 + d for d in self._digits(a, self.digits)] + [TOKEN_ID["+"]]
                           + [DIGIT0 + d for d in self._digits(b, self.digits)] + [TOKEN_ID["="]])
        return Problems(np.array(prompts, np.int32), operands.astype(np.int64))

    def demonstration(self, data):
        a, b = (self._digits(x, self.digits)[::-1] for x in data)
        out, carry = [], 0
        for ai, bi in zip(a, b):
            total = ai + bi + carry
            out += [DIGIT0 + ai, DIGIT0 + bi, DIGIT0 + carry, DIGIT0 + total % 10, TOKEN_ID[";"]]
            carry = total // 10
        out.append(TOKEN_ID["|"])
        out += [DIGIT0 + d for d in self._digits(int(data[0]) + int(data[1]), self.digits + 1)]
        return out + [EOS]

    def _reward_one(self, data, response, mask):
        body, finished = _answer_segment(response, mask)
        if not finished or TOKEN_ID["|"] not in body:
            return 0.0
        answer = body[len(body) - 1 - body[::-1].index(TOKEN_ID["|"]) + 1:]
        expected = [DIGIT0 + d for d in self._digits(int(data[0]) + int(data[1]), self.digits + 1)]
        return 1.0 if answer == expected else 0.0


@dataclasses.dataclass(frozen=True)
class SortTask(Task):
    """Prompt ``<bos> d_1 .. d_n >``; response the digits sorted ascending, then EOS."""

    length: int = 5
    name = "sort"

    @property
    def prompt_length(self) -> int:
        return self.length + 2

    @property
    def max_new_tokens(self) -> int:
        return self.length + 3

    def sample(self, rng, n):
        digits = rng.integers(0, 10, size=(n, self.length))
        prompts = np.concatenate([np.full((n, 1), BOS), digits + DIGIT0, np.full((n, 1), TOKEN_ID[">"])], axis=1)
        return Problems(prompts.astype(np.int32), digits.astype(np.int32))

    def demonstration(self, data):
        return [DIGIT0 + int(d) for d in np.sort(data)] + [EOS]

    def _reward_one(self, data, response, mask):
        body, finished = _answer_segment(response, mask)
        if not finished:
            return 0.0
        expected = [DIGIT0 + int(d) for d in np.sort(data)]
        right = sum(1 for x, y in zip(body, expected) if x == y)
        return right / max(len(expected), len(body))


TASKS = {"length": LengthTask, "arithmetic": ArithmeticTask, "sort": SortTask}


def demonstrations(task: Task, problems: Problems, max_new_tokens: int, rng: np.random.Generator, *,
                   error_rate: float = 0.0, distractor_rate: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing batch for SFT: tokens [N, P + max_new_tokens] (prompt + response, 0-padded) and
    a response mask [N, max_new_tokens]. Noise: with probability ``error_rate`` one response digit is
    replaced by a random digit (a wrong demonstration); each non-final response token is preceded by a
    rare distractor token with probability ``distractor_rate`` (the response is cut to the budget, so
    such a demonstration may lose its EOS: a noisy demonstration, not a silent truncation of data)."""
    rows, masks = [], []
    for i in range(len(problems)):
        response = list(task.demonstration(problems.data[i]))
        if error_rate and rng.random() < error_rate:
            positions = [j for j, t in enumerate(response) if DIGIT0 <= t < DIGIT0 + 10]
            if positions:
                response[positions[rng.integers(len(positions))]] = DIGIT0 + int(rng.integers(10))
        if distractor_rate:
            noisy = []
            for t in response[:-1]:
                if rng.random() < distractor_rate:
                    noisy.append(int(rng.choice(DISTRACTOR_IDS)))
                noisy.append(t)
            response = noisy + response[-1:]
        response = response[:max_new_tokens]
        mask = [1.0] * len(response) + [0.0] * (max_new_tokens - len(response))
        rows.append(list(problems.prompts[i]) + response + [PAD] * (max_new_tokens - len(response)))
        masks.append(mask)
    return np.array(rows, np.int32), np.array(masks, np.float32)
