"""Chat / SFT data: the SmolTalk (ChatML) template, assistant-only loss masks, first-fit packing.

The one chat template of jaxstack (``jaxstack.data.adp.sft`` re-exports it): every message renders as
``<|im_start|>{role}\\n{content}<|im_end|>\\n``. The loss mask is True on the tokens of assistant
content and its ``<|im_end|>`` (the model must learn to stop), False on headers, separators and
every other role. Tokenising segment by segment keeps the mask boundaries exact.

:func:`chat_example` turns one conversation into ``{"tokens": [T], "loss_mask": [T]}``;
:func:`packed_chat_dataset` packs such examples first-fit into rows of ``seq_len + 1`` with Grain's
``FirstFitPackIterDataset`` and yields what the trainer's ``make_batch`` consumes:
``{"tokens", "loss_mask", "segment_ids", "positions"}: [B, seq_len + 1]`` (int32; padding has
segment id 0 and loss mask 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grain
import numpy as np

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatTemplate:
    """A turn-based chat template: ``{start}{role}{role_end}{content}{end}{separator}`` per message.

    The default is ChatML (``<|im_start|>assistant\\n ... <|im_end|>\\n``), as used by SmolTalk /
    SmolLM2-Instruct and Qwen2.5.
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


def render_chat(messages: Sequence[dict[str, str]], template: ChatTemplate = CHATML) -> str:
    """The full rendered text of a conversation."""
    return "".join(segment.text for segment in render_segments(messages, template))


def chat_example(messages: Sequence[dict[str, str]], encode: Callable[[str], Sequence[int]],
                 template: ChatTemplate = CHATML, train_roles: Iterable[str] = ("assistant",)) -> dict[str, np.ndarray]:
    """One conversation -> ``{"tokens": int32 [T], "loss_mask": int32 [T]}`` (1 on assistant content
    and its end marker). ``encode``: text -> ids without special tokens added (the template's
    ``<|im_start|>`` / ``<|im_end|>`` must be single special tokens of the tokenizer)."""
    ids: list[int] = []
    mask: list[int] = []
    for segment in render_segments(messages, template, train_roles):
        tokens = list(encode(segment.text))
        ids.extend(tokens)
        mask.extend([int(segment.trainable)] * len(tokens))
    if not ids:
        raise ValueError("messages: the conversation renders to no tokens")
    return {"tokens": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


class _ChatToExample:
    """Picklable map: a conversation (list of messages, or {"messages": [...]}) -> chat_example."""

    def __init__(self, tokenizer, template: ChatTemplate, max_length: int):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length

    def __call__(self, conversation):
        messages = conversation["messages"] if isinstance(conversation, dict) else conversation
        example = chat_example(messages, self.tokenizer.encode, self.template)
        if len(example["tokens"]) > self.max_length:
            raise ValueError(
                f"chat example: {len(example['tokens'])} tokens exceed the packing length {self.max_length} "
                "(no silent truncation: raise seq_len or drop long conversations first)")
        return example


class _RenameFirstFit:
    """Grain's packer names outputs ``tokens_segment_ids`` / ``tokens_positions``; the trainer reads
    ``segment_ids`` / ``positions``."""

    def __call__(self, row):
        return {"tokens": row["tokens"].astype(np.int32), "loss_mask": row["loss_mask"].astype(np.int32),
                "segment_ids": row["tokens_segment_ids"].astype(np.int32),
                "positions": row["tokens_positions"].astype(np.int32)}


def packed_chat_dataset(conversations: grain.MapDataset, tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
                        num_packing_bins: int | None = None, shuffle: bool = True, repeat: bool = True,
                        template: ChatTemplate = CHATML) -> grain.IterDataset:
    """Conversations -> first-fit packed batches ``{tokens, loss_mask, segment_ids, positions}:
    [batch_size, seq_len + 1]`` int32 (``FirstFitPackIterDataset``; ``num_packing_bins`` defaults to
    ``batch_size``). A conversation longer than ``seq_len + 1`` tokens raises (no silent truncation)."""
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len / batch_size: expected positive integers, got {seq_len} / {batch_size}")
    length = seq_len + 1
    dataset = conversations
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat(None)
    dataset = dataset.map(_ChatToExample(tokenizer, template, length)).to_iter_dataset()
    packed = grain.experimental.FirstFitPackIterDataset(
        dataset, length_struct={"tokens": length, "loss_mask": length},
        num_packing_bins=num_packing_bins or batch_size, seed=seed, shuffle_bins=shuffle)
    return packed.map(_RenameFirstFit()).batch(batch_size, drop_remainder=True)
