"""Model-free SFT example building for exported chat records: template, loss mask, packing.

This is the data half of "SFT in JAX" on ADP data. It needs only a text -> token-ids function, so
it works with any tokenizer (``tokenizers.Tokenizer.encode(...).ids``, a byte-level toy, ...):

1. :func:`render_segments` applies a :class:`ChatTemplate` to a record's messages and returns text
   segments flagged ``trainable`` (assistant content and its end marker) or not (everything else);
2. :func:`tokenize_example` encodes segment by segment, so the loss mask boundaries are exact;
3. :func:`pack_examples` greedily packs examples into fixed-length rows with segment ids and
   positions (the layout a packed-attention trainer consumes);
4. :func:`sft_dataset` is the Grain pipeline over packed rows (shuffle, repeat, batch) whose
   checkpointable iterator feeds ``jaxstack.train.trainer.train``; :func:`split_records` makes a
   held-out split by record id and :func:`chat_text` gives the text a tokenizer is trained on.

The model-side half (tokenizer, trainer, sampling, parse rates) is :mod:`jaxstack.train.chat_sft`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# the one chat template of jaxstack and its loss-mask segments
from jaxstack.data.chat import CHATML, ChatTemplate, render_segments


@dataclass(frozen=True)
class SFTExample:
    """Token ids ``[T]`` (int32) and the loss mask ``[T]`` (bool) of one conversation."""

    id: str
    input_ids: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def tokenize_example(
    record: dict[str, Any],
    encode: Callable[[str], Sequence[int]],
    template: ChatTemplate = CHATML,
    max_length: int | None = None,
) -> SFTExample:
    """Tokenise one chat record ``{"id", "messages"}`` segment by segment.

    Args:
      record: an exported chat record (see :mod:`jaxstack.data.adp.exporters.chat`).
      encode: text -> token ids, without special tokens added.
      template: the chat template.
      max_length: keep only the first ``max_length`` tokens.
    """
    ids: list[int] = []
    mask: list[bool] = []
    for segment in render_segments(record["messages"], template):
        tokens = list(encode(segment.text))
        ids.extend(tokens)
        mask.extend([segment.trainable] * len(tokens))
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return SFTExample(
        id=str(record.get("id", "")),
        input_ids=np.asarray(ids, dtype=np.int32),
        loss_mask=np.asarray(mask, dtype=bool),
    )


def pack_examples(
    examples: Sequence[SFTExample], seq_len: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Greedy first-fit packing into rows of ``seq_len`` tokens, in input order.

    Examples longer than ``seq_len`` are truncated. Returns int32 ``tokens [R, seq_len]``,
    bool ``loss_mask [R, seq_len]``, int32 ``segment_ids [R, seq_len]`` (1, 2, ... per example in
    a row; 0 is padding) and int32 ``positions [R, seq_len]`` (restarting at 0 per example).
    """
    rows: list[list[SFTExample]] = []
    free: list[int] = []
    for example in examples:
        length = min(len(example), seq_len)
        if length == 0:
            continue
        for row, space in enumerate(free):
            if space >= length:
                rows[row].append(example)
                free[row] -= length
                break
        else:
            rows.append([example])
            free.append(seq_len - length)
    shape = (len(rows), seq_len)
    tokens = np.full(shape, pad_id, dtype=np.int32)
    loss_mask = np.zeros(shape, dtype=bool)
    segment_ids = np.zeros(shape, dtype=np.int32)
    positions = np.zeros(shape, dtype=np.int32)
    for r, row in enumerate(rows):
        offset = 0
        for s, example in enumerate(row, start=1):
            length = min(len(example), seq_len)
            span = slice(offset, offset + length)
            tokens[r, span] = example.input_ids[:length]
            loss_mask[r, span] = example.loss_mask[:length]
            segment_ids[r, span] = s
            positions[r, span] = np.arange(length)
            offset += length
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}


def chat_text(record: dict[str, Any], template: ChatTemplate = CHATML) -> str:
    """The full rendered text of a chat record (what the model sees), e.g. to train a tokenizer on."""
    return "".join(segment.text for segment in render_segments(record["messages"], template))


def split_records(
    records: Sequence[dict[str, Any]], eval_fraction: float, *, seed: int = 0, key: str = "id"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) split by ``record[key]`` (default the record ``id``): every record with the
    same key (the copies a mixture makes when ``w > 1``, the turns of one trajectory) lands on the
    same side, so nothing held out is trained on.

    The held-out keys are the ``max(1, round(eval_fraction * n_keys))`` keys (at most all but one)
    with the smallest ``sha256(seed:key)`` -- stable under reordering and under adding other records.

    Raises:
      ValueError: ``eval_fraction`` outside ``(0, 1)``, a record without ``key``, or fewer than two keys.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction: expected a value in (0, 1), got {eval_fraction}")
    ids = []
    for index, record in enumerate(records):
        if key not in record:
            raise ValueError(f"records[{index}]: no {key!r} (needed to split by record)")
        ids.append(str(record[key]))
    unique = sorted(set(ids))
    if len(unique) < 2:
        raise ValueError(f"records: need at least two distinct {key!r} values to split, got {len(unique)}")
    n_eval = min(len(unique) - 1, max(1, round(eval_fraction * len(unique))))
    ranked = sorted(unique, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    held_out = set(ranked[:n_eval])
    train = [r for r, i in zip(records, ids) if i not in held_out]
    evaluation = [r for r, i in zip(records, ids) if i in held_out]
    return train, evaluation


ROW_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def sft_dataset(rows: dict[str, np.ndarray], batch_size: int, *, seed: int, shuffle: bool = True,
                repeat: bool = True):
    """Grain ``IterDataset`` of batches ``{tokens, loss_mask, segment_ids, positions}: [B, W]`` over
    packed rows (the output of :func:`pack_examples` with ``seq_len = W``; the trainer reads
    ``W = train.seq_len + 1``: inputs ``[:, :-1]``, targets ``[:, 1:]``).

    ``repeat=True`` cycles over the rows (a batch may span two epochs), so any number of rows
    works; ``repeat=False`` yields whole batches of one pass (``drop_remainder``) and needs at
    least ``batch_size`` rows. The iterator is checkpointable (its state goes into the trainer's
    Orbax checkpoints).

    Raises:
      ValueError: a missing / misshapen row array, no rows, or ``batch_size`` <= 0 / too large.
    """
    import grain

    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    missing = [key for key in ROW_KEYS if key not in rows]
    if missing:
        raise ValueError(f"rows: missing arrays {missing}; expected {list(ROW_KEYS)} (see pack_examples)")
    shape = rows["tokens"].shape
    for key in ROW_KEYS:
        if rows[key].shape != shape or len(shape) != 2:
            raise ValueError(f"rows[{key!r}]: expected shape {shape} (2-D, like tokens), got {rows[key].shape}")
    if shape[0] == 0:
        raise ValueError("rows: no packed rows (no examples?)")
    if not repeat and shape[0] < batch_size:
        raise ValueError(f"rows: {shape[0]} rows cannot fill one batch of {batch_size} without repeat")
    arrays = {key: np.asarray(rows[key], dtype=np.int32) for key in ROW_KEYS}
    dataset = grain.MapDataset.range(shape[0])
    if shuffle:  # before repeat: each epoch is a fresh permutation of the rows (every row once)
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat(None)
    dataset = dataset.map(lambda i: {key: value[i] for key, value in arrays.items()})
    return dataset.batch(batch_size, drop_remainder=True).to_iter_dataset()
