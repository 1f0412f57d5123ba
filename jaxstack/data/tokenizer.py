"""Tokenizers: any local Hugging Face ``tokenizer.json``, or a byte-level BPE trained on local text.

Special tokens follow SmolLM2's cosmo2 tokenizer: ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1,
``<|im_end|>`` = 2. Byte-level BPE round-trips any UTF-8 text losslessly.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def cache_dir() -> pathlib.Path:
    """``$JAXSTACK_CACHE`` or ``~/.cache/jaxstack``: where built artefacts (tokenizers, corpora) go."""
    return pathlib.Path(os.environ.get("JAXSTACK_CACHE", pathlib.Path.home() / ".cache" / "jaxstack"))


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the ids the trainer needs."""

    def __init__(self, tokenizer: HFTokenizer):
        self.backend = tokenizer
        self.eos_id = tokenizer.token_to_id("<|endoftext|>")
        if self.eos_id is None:
            raise ValueError("tokenizer: no <|endoftext|> token in the vocabulary")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | pathlib.Path) -> None:
        self.backend.save(str(path))


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
    """Loads a local ``tokenizer.json`` (or a directory holding one)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer: {path} does not exist (expected a tokenizer.json)")
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"tokenizer: {path} is not a valid Hugging Face tokenizer.json ({error})") from None
    try:
        return Tokenizer(backend)
    except ValueError as error:
        raise ValueError(f"{error} of {path}") from None


def train_bpe(texts: Sequence[str], vocab_size: int, *, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Trains a byte-level BPE with ``special_tokens`` at ids 0, 1, 2, ... on ``texts``."""
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size: a byte-level BPE needs at least {256 + len(special_tokens)}, got {vocab_size}")
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tokenizer)


def cached_bpe(texts: Sequence[str], vocab_size: int, name: str) -> Tokenizer:
    """``train_bpe`` cached on disk by a hash of (texts, vocab_size): deterministic and built once."""
    digest = hashlib.sha256()
    digest.update(str(vocab_size).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    path = cache_dir() / "tokenizers" / f"{name}-{vocab_size}-{digest.hexdigest()[:16]}.json"
    if path.exists():
        return load_tokenizer(path)
    tokenizer = train_bpe(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tokenizer.save(tmp)
    tmp.replace(path)
    return tokenizer
