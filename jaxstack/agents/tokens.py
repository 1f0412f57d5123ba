"""Offline token counting: a regex proxy counter and a BPE trained on SimWeb text.

No tokenizer is ever downloaded: `tiktoken` and hub tokenizers fetch files at run time, so the
counts reported by the agent experiments come from

* :class:`ProxyTokenCounter`: ``\\w+`` runs and single punctuation characters (deterministic,
  dependency-free), and
* :class:`BPETokenCounter`: a byte-pair encoding trained with the `tokenizers` library on the
  SimWeb corpus (pages, questions and the prompt scaffolding) in a second or two.

Both counters are *additive over whitespace boundaries*: ``count(a + b) == count(a) + count(b)``
whenever ``a`` ends or ``b`` starts with whitespace (and neither splits a special token). The
BPE uses a whitespace/punctuation pre-tokenizer so merges never cross whitespace; the prompt
renderers in :mod:`jaxstack.agents.fold` split prompts into segments on such boundaries, which
lets a 500-turn ReAct history be counted incrementally with a per-segment cache instead of
re-tokenising the whole prompt every turn. What matters in the experiments are the *ratios*
between renderings of the same trajectories, which both counters report.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "TokenCounter",
    "ProxyTokenCounter",
    "BPETokenCounter",
    "train_bpe",
    "simweb_bpe_counter",
]

#: Qwen-style chat-template markers; they are single special tokens in the BPE.
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

_PROXY_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TokenCounter(Protocol):
    """Anything that counts the tokens of a string."""

    name: str

    def count(self, text: str) -> int:  # pragma: no cover - protocol
        ...


class ProxyTokenCounter:
    """Counts ``\\w+`` runs plus every non-space punctuation character ("proxy tokens").

    Each special chat token counts as one token.
    """

    name = "proxy"

    def __init__(self, special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS):
        self._special = tuple(special_tokens)
        self._special_re = (
            re.compile("|".join(re.escape(s) for s in self._special)) if self._special else None
        )
        self.count = functools.lru_cache(maxsize=200_000)(self._count)  # type: ignore[method-assign]

    def _count(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        n_special = 0
        if self._special_re is not None:
            pieces = self._special_re.split(text)
            n_special = len(pieces) - 1
            return n_special + sum(len(_PROXY_RE.findall(p)) for p in pieces)
        return len(_PROXY_RE.findall(text))


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Trains a BPE tokenizer on ``texts`` with the `tokenizers` library (offline).

    Pre-tokenisation splits on whitespace and punctuation and digits are single tokens, so
    merges never cross a whitespace boundary (see the module docstring on additivity).

    Returns:
        A ``tokenizers.Tokenizer`` whose vocabulary holds :data:`CHAT_SPECIAL_TOKENS` and ``[UNK]``.
    """
    if vocab_size < 64:
        raise ValueError(f"vocab_size must be >= 64, got {vocab_size}")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["[UNK]", *CHAT_SPECIAL_TOKENS],
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


class BPETokenCounter:
    """Token counts from a trained ``tokenizers.Tokenizer``, cached per distinct string."""

    name = "bpe"

    def __init__(self, tokenizer, cache_size: int = 200_000):
        self.tokenizer = tokenizer
        self.count = functools.lru_cache(maxsize=cache_size)(self._count)  # type: ignore[method-assign]

    def _count(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return 0
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str):
        """Returns the ``tokenizers.Encoding`` of ``text`` (ids and character offsets)."""
        return self.tokenizer.encode(text, add_special_tokens=False)


_BPE_CACHE: dict[tuple, BPETokenCounter] = {}


def simweb_bpe_counter(world, vocab_size: int = 4096, extra_texts: Sequence[str] = ()) -> BPETokenCounter:
    """A :class:`BPETokenCounter` trained on a SimWeb world's pages and questions.

    Cached in-process per ``(world seed/config, vocab_size, extra_texts)``.

    Args:
        world: a :class:`jaxstack.agents.simweb.SimWeb`.
        vocab_size: BPE vocabulary size.
        extra_texts: prompt scaffolding to include in the corpus (system prompts, tool specs).
    """
    key = (world.config, vocab_size, tuple(extra_texts))
    if key not in _BPE_CACHE:
        texts = [f"{p.title}\n{p.text}" for p in world.pages.values()]
        texts += [q.text for q in world.questions(20, seed=world.config.seed)]
        texts += list(extra_texts)
        _BPE_CACHE[key] = BPETokenCounter(train_bpe(texts, vocab_size=vocab_size))
    return _BPE_CACHE[key]
