"""Chat rendering and chat / SFT data: the ChatML template, Jinja chat templates, loss masks, packing.

The one chat renderer of jaxstack (training data, ``jaxstack.data.adp.sft``, the server, the agents'
clients and prompts all use it): every message renders as ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
and :func:`render_chat` with ``add_generation_prompt=True`` appends ``<|im_start|>assistant\\n`` (the
prompt a model continues). :func:`apply_chat_template` renders a tokenizer's own Jinja template instead
(HF semantics, from ``tokenizer_config.json`` / ``chat_template.jinja``: :func:`load_chat_template`).
:func:`validate_messages` checks an OpenAI-style ``messages`` list for all of them.

The loss mask is True on the tokens of assistant content and its ``<|im_end|>`` (the model must learn
to stop), False on headers, separators and every other role. Tokenising segment by segment keeps the
mask boundaries exact.

:func:`chat_example` turns one conversation into ``{"tokens": [T], "loss_mask": [T]}``;
:func:`packed_chat_dataset` packs such examples first-fit into rows of ``seq_len + 1`` with Grain's
``FirstFitPackIterDataset`` and yields what the trainer's ``make_batch`` consumes:
``{"tokens", "loss_mask", "segment_ids", "positions"}: [B, seq_len + 1]`` (int32; padding has
segment id 0 and loss mask 0).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where packing runs: rendering alone (the server, the agents) skips its seconds-long import
    import grain

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
        """The text that opens a message of ``role`` (``header("assistant")`` is the generation prompt)."""
        return f"{self.start}{role}{self.role_end}"

    def footer(self) -> str:
        """The text that closes every message (after its content)."""
        return f"{self.end}{self.separator}"


CHATML = ChatTemplate()


@dataclass(frozen=True)
class Segment:
    """A span of rendered text and whether its tokens carry loss."""

    text: str
    trainable: bool


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Checks an OpenAI-style ``messages`` list and returns ``[{"role", "content"}]`` copies (other keys
    dropped).

    Raises:
      ValueError: not a non-empty list (or tuple) of dicts with ``role`` in :data:`ROLES` and a string
        ``content``; the message names the entry and the field.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages: expected a non-empty list of {'role', 'content'} objects")
    expected = f"{{'role': one of {list(ROLES)}, 'content': str}}"
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be {expected}; got a value of type {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}] must be {expected}; messages[{index}].role is {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}] must be {expected}; messages[{index}].content has type "
                             f"{type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def render_segments(
    messages: Sequence[dict[str, str]],
    template: ChatTemplate = CHATML,
    train_roles: Iterable[str] = ("assistant",),
) -> list[Segment]:
    """Render messages into segments; the content of ``train_roles`` messages and their end marker
    are trainable, headers and all other messages are not.

    Raises:
      ValueError: see :func:`validate_messages`.
    """
    train = set(train_roles)
    segments: list[Segment] = []
    for message in validate_messages(messages):
        role = message["role"]
        segments.append(Segment(template.header(role), False))
        trainable = role in train
        segments.append(Segment(message["content"] + template.end, trainable))
        segments.append(Segment(template.separator, False))
    return [s for s in segments if s.text]


def render_chat(messages: Sequence[dict[str, str]], template: ChatTemplate = CHATML, *,
                add_generation_prompt: bool = False) -> str:
    """The rendered text of a conversation; with ``add_generation_prompt``, followed by the header
    of the assistant turn the model is to write (``<|im_start|>assistant\\n`` in ChatML)."""
    text = "".join(segment.text for segment in render_segments(messages, template))
    return text + (template.header("assistant") if add_generation_prompt else "")


def apply_chat_template(messages: Sequence[dict[str, str]], jinja_template: str | None = None, *,
                        add_generation_prompt: bool = True, **variables: Any) -> str:
    """Renders ``messages`` with a tokenizer's Jinja ``jinja_template`` (HF semantics: a sandboxed
    environment with ``trim_blocks`` / ``lstrip_blocks`` and ``raise_exception``; ``variables`` such as
    ``bos_token`` are passed through) or, when it is None, with ChatML (:func:`render_chat`).

    Raises:
      ValueError: invalid ``messages`` (see :func:`validate_messages`).
    """
    messages = validate_messages(messages)
    if jinja_template is None:
        return render_chat(messages, add_generation_prompt=add_generation_prompt)
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(jinja_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  **variables)


def load_chat_template(model_dir: str | pathlib.Path) -> str | None:
    """``chat_template`` from ``tokenizer_config.json`` (or ``chat_template.jinja``) in ``model_dir``, else None."""
    model_dir = pathlib.Path(model_dir)
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            return named.get("default")
    return None


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
    import grain

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
