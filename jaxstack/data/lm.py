"""Language-model batches: tokenise, append EOS, concatenate, split into fixed windows, batch with Grain.

:func:`text_data` is the whole single-corpus set-up (``jaxstack train``, the demo, the Kimi Linear
study): documents (the embedded default corpus or a directory of ``.txt`` files) -> held-out split
(:func:`jaxstack.data.corpus.heldout_split`) -> byte-level BPE -> packed windows -> Grain datasets.
The Grain iterator is checkpointable (its state goes into every Orbax checkpoint), so a resumed run
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from jaxstack.data import corpus
from jaxstack.data import tokenizer as tokenizer_lib
from jaxstack.data.guard import assert_not_eval_data
from jaxstack.data.sources import CorruptRecordError, report_bad_records


def pack_documents(documents: Sequence[Sequence[int]], seq_len: int, eos_id: int) -> np.ndarray:
    """Concatenate-then-split: documents + EOS joined and cut into windows [N, seq_len + 1] (int32).

    Each window holds seq_len + 1 tokens so that inputs = w[:-1] and targets = w[1:]. The final
    partial window (fewer than seq_len + 1 tokens) is not emitted; ``ValueError`` if nothing fits.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len}")
    stream = np.fromiter(
        (t for doc in documents for t in (*doc, eos_id)), dtype=np.int32
    )
    window = seq_len + 1
    count = len(stream) // window
    if count == 0:
        raise ValueError(f"documents: {len(stream)} tokens do not fill one window of {window}")
    return stream[: count * window].reshape(count, window)


def lm_dataset(windows: np.ndarray, batch_size: int, *, seed: int, shuffle: bool = True, repeat: bool = True):
    """Grain IterDataset of batches {"tokens": [batch_size, seq_len + 1] int32} over packed windows."""
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if len(windows) < batch_size:
        raise ValueError(f"windows: {len(windows)} windows cannot fill a batch of {batch_size}")
    dataset = grain.MapDataset.source(windows)
    if repeat:
        dataset = dataset.repeat(None)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.map(lambda w: {"tokens": w}).batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset()


@dataclasses.dataclass(frozen=True)
class TextData:
    """The language-model data of one corpus (see :func:`text_data`).

    tokenizer: the tokenizer the windows were encoded with.
    train_windows: int32 ``[N, seq_len + 1]``; valid_windows: int32 ``[M, seq_len + 1]``, or None when
      the corpus has no validation documents (fewer than 20 documents).
    dataset: Grain ``IterDataset`` of shuffled, repeated training batches ``{"tokens": [B, seq_len + 1]}``;
      every ``iter(dataset)`` starts the same stream afresh (checkpointable).
    eval_dataset: one ordered pass over the validation windows in batches of ``min(B, M)``, or None.
    """

    tokenizer: tokenizer_lib.Tokenizer
    train_windows: np.ndarray
    valid_windows: np.ndarray | None
    dataset: grain.IterDataset
    eval_dataset: grain.IterDataset | None

    @property
    def eval_data(self) -> Callable[[], Iterator[dict[str, np.ndarray]]] | None:
        """The trainer's ``eval_data``: a callable returning a fresh held-out iterator (None without validation)."""
        if self.eval_dataset is None:
            return None
        return lambda: iter(self.eval_dataset)


def _read_text_file(path: pathlib.Path) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); CorruptRecordError naming the file, the line
    and the byte offset of the first undecodable byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise CorruptRecordError(f"{path}: line {line}: not valid UTF-8 (byte {error.start}: {error.reason})") from None


def text_documents(text_dir: str | os.PathLike | None = None, *,
                   preflight: bool = False) -> tuple[list[str], list[str]]:
    """(train, validation) documents: the embedded default corpus (``text_dir=None``) or every ``.txt``
    file under ``text_dir`` (recursive, sorted by path, one document per file; UTF-8, a leading BOM
    dropped) split by :func:`~jaxstack.data.corpus.heldout_split`.

    preflight: read every file before raising, and report all undecodable ones at once (else the
    first one raises).

    Raises:
      EvalDataError: ``text_dir`` holds evaluation-only data (:mod:`jaxstack.data.guard`).
      FileNotFoundError: ``text_dir`` has no ``.txt`` file.
      CorruptRecordError: a file is not valid UTF-8 (named with the line of its first bad byte).
    """
    if text_dir is None:
        return corpus.default_corpus("train"), corpus.default_corpus("validation")
    assert_not_eval_data(text_dir)  # evaluation-only sets (Global PIQA) never become training data
    files = sorted(pathlib.Path(text_dir).rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"text_dir: no .txt files under {text_dir}")
    documents, problems = [], []
    for f in files:
        try:
            documents.append(_read_text_file(f))
        except CorruptRecordError as error:
            if not preflight:
                raise
            problems.append(str(error))
    report_bad_records(problems, f"text_dir {text_dir}")
    return corpus.heldout_split(documents, "train"), corpus.heldout_split(documents, "validation")


def text_data(
    text_dir: str | os.PathLike | None = None,
    *,
    vocab_size: int,
    seq_len: int,
    batch_size: int,
    seed: int,
    tokenizer: tokenizer_lib.Tokenizer | None = None,
    tokenizer_name: str = "pydoc",
    exact_vocab: bool = True,
    preflight: bool = False,
) -> TextData:
    """Documents (:func:`text_documents`) -> tokenizer -> packed windows (:func:`pack_documents`) ->
    Grain datasets (:func:`lm_dataset`; training shuffled with ``seed``, held-out in order).

    Args:
      text_dir: a directory of ``.txt`` files, or None for the embedded default corpus.
      vocab_size: the model's vocabulary size; also the size of the BPE trained when ``tokenizer`` is None.
      seq_len, batch_size, seed: the trainer's ``train.seq_len`` / ``batch_size`` / ``seed``.
      tokenizer: a given tokenizer; None trains a byte-level BPE on the training documents (cached
        on disk under ``tokenizer_name``, see :func:`jaxstack.data.tokenizer.cached_bpe`).
      exact_vocab: the tokenizer must have exactly ``vocab_size`` tokens (False: at most).
      preflight: report every undecodable file at once (see :func:`text_documents`).

    Raises:
      ValueError: a tokenizer that does not match ``vocab_size``, too few tokens for one window or batch.
      EvalDataError, FileNotFoundError: see :func:`text_documents`.
    """
    train_docs, valid_docs = text_documents(text_dir, preflight=preflight)
    if tokenizer is None:
        tokenizer = tokenizer_lib.cached_bpe(train_docs, vocab_size, tokenizer_name)
    if tokenizer.vocab_size > vocab_size or (exact_vocab and tokenizer.vocab_size != vocab_size):
        raise ValueError(f"model.vocab_size={vocab_size}: expected {'exactly' if exact_vocab else 'at least'} the "
                         f"tokenizer's {tokenizer.vocab_size} tokens")
    train_windows = pack_documents(tokenizer.encode_batch(train_docs), seq_len, tokenizer.eos_id)
    dataset = lm_dataset(train_windows, batch_size, seed=seed)
    valid_windows = eval_dataset = None
    if valid_docs:
        valid_windows = pack_documents(tokenizer.encode_batch(valid_docs), seq_len, tokenizer.eos_id)
        eval_dataset = lm_dataset(valid_windows, min(batch_size, len(valid_windows)), seed=0, shuffle=False,
                                  repeat=False)
    return TextData(tokenizer, train_windows, valid_windows, dataset, eval_dataset)
