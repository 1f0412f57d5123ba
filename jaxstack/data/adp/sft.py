"""Model-free SFT example building for exported chat records: template, loss mask, packing.

This is the data half of "SFT in JAX" on ADP data. It needs only a text -> token-ids function, so
it works with any tokenizer (``tokenizers.Tokenizer.encode(...).ids``, a byte-level toy, ...):

1. :func:`render_segments` applies a :class:`ChatTemplate` to a record's messages and returns text
   segments flagged ``trainable`` (assistant content and its end marker) or not (everything else);
2. :func:`tokenize_example` encodes segment by segment, so the loss mask boundaries are exact;
3. :func:`pack_examples` greedily packs examples into fixed-length rows with segment ids and
   positions (the layout a packed-attention trainer consumes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatTemplate:
    """A turn-based chat template: ``{start}{role}{role_end}{content}{end}`` per message.

    The default is ChatML (``<|im_start|>assistant\\n ... <|im_end|>\\n``), as used by Qwen2.5 and
    SmolLM2-Instruct.
    """

    start: str = "<|im_start|>"
    role_end: str = "\n"
    end: str = "<|im_end|>"
    separator: str = "\n"

    def header(self, role: str) -> str:
        """The text that opens a message of ``role``."""
        return f"{self.start}{role}{self.role_end}"


CHATML = ChatTemplate()


@dataclass(frozen=True)
class Segment:
    """A span of rendered text and whether its tokens carry loss."""

    text: str
    trainable: bool


def render_segments(
    messages: Sequence[dict[str, str]],
    template: ChatTemplate = CHATML,
    train_roles: Iterable[str] = ("assistant",),
) -> list[Segment]:
    """Render messages into segments; the content of ``train_roles`` messages and their end marker
    are trainable, headers and all other messages are not.

    Raises:
      ValueError: a message without ``role`` / ``content`` or with an unknown role.
    """
    train = set(train_roles)
    segments: list[Segment] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(
                f"messages[{index}] must be {{'role': one of {list(ROLES)}, 'content': str}}, "
                f"got role={role!r}"
            )
        segments.append(Segment(template.header(role), False))
        trainable = role in train
        segments.append(Segment(content + template.end, trainable))
        segments.append(Segment(template.separator, False))
    return [s for s in segments if s.text]


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


def read_chat_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the chat records of an exported JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
