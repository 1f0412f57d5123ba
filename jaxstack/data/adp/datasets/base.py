"""The dataset converter interface and the helpers shared by the raw converters."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jaxstack.data.adp.api import ApiStubs, check_api_calls
from jaxstack.data.adp.languages import normalise_fence_language
from jaxstack.data.adp.schema import (
    Action,
    CodeAction,
    MessageAction,
    Trajectory,
    finish_content,
)
from jaxstack.data.adp.stream import ConversionError, StreamReport, convert_stream


@dataclass(frozen=True)
class DatasetSpec:
    """A raw dataset: its raw record schema, its converter to ADP, and its API stubs.

    Attributes:
      name: the registry key, e.g. ``"agenttuning_os"``.
      raw_model: pydantic model of one raw JSONL record.
      convert: ``raw_model`` instance -> :class:`Trajectory`; raises
        :class:`~jaxstack.data.adp.stream.ConversionError` on a malformed record and
        :class:`~jaxstack.data.adp.stream.SkipRow` to drop a record on purpose.
      stubs: the dataset's API stubs, or ``None`` when it has no ``api_action`` items.
      web: whether the dataset's API actions are browser actions (exporters render them through
        the harness's browser tool).
      source: where the raw data comes from (the Hugging Face id), for documentation only.
    """

    name: str
    raw_model: type[BaseModel]
    convert: Callable[[Any], Trajectory]
    stubs: ApiStubs | None = None
    web: bool = False
    source: str = ""

    def convert_record(self, record: dict[str, Any]) -> Trajectory:
        """Validate one raw record, convert it and bind its API calls (raises on any problem)."""
        trajectory = self.convert(self.raw_model.model_validate(record))
        check_api_calls(trajectory.content, self.stubs)
        return Trajectory.model_validate_json(trajectory.model_dump_json())

    def convert_lines(
        self,
        lines: Iterable[str],
        out: TextIO,
        err: TextIO | None = sys.stderr,
        source: str = "<stdin>",
        version: str = "1.0",
    ) -> StreamReport:
        """Stream raw JSONL ``lines`` to ADP JSONL on ``out``; see :func:`convert_stream`."""
        return convert_stream(
            lines,
            raw_model=self.raw_model,
            convert=self.convert,
            stubs=self.stubs,
            out=out,
            err=err,
            source=source,
            version=version,
        )


# ---------------------------------------------------------------------------------------------
# Raw chat turns, as most agent datasets store them
# ---------------------------------------------------------------------------------------------

_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "ai": "assistant", "model": "assistant"}


class ChatTurn(BaseModel):
    """One ``{role, content}`` chat turn; ShareGPT ``{from, value}`` turns are accepted as well
    (``human`` -> ``user``, ``gpt`` -> ``assistant``)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str

    @model_validator(mode="before")
    @classmethod
    def _sharegpt_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "role" not in data and "from" in data:
            data = dict(data)
            data["role"] = data.pop("from")
            data["content"] = data.pop("value", data.get("content"))
        if isinstance(data, dict) and isinstance(data.get("role"), str):
            data = dict(data)
            data["role"] = _ROLE_ALIASES.get(data["role"], data["role"])
        return data


class Conversation(BaseModel):
    """``{id, conversations: [turn, ...]}``, the shape of AgentInstruct, CodeActInstruct, Orca."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(..., min_length=1)
    conversations: list[ChatTurn] = Field(..., min_length=1)


# ---------------------------------------------------------------------------------------------
# Shared conversion helpers
# ---------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```([^\n`]*)\n(.*?)\n?```", re.DOTALL)


def text_to_actions(text: str, *, default_language: str = "python") -> list[Action]:
    """Split an assistant message with Markdown code fences into ADP actions.

    Each fenced block becomes a ``CodeAction`` whose description is the text since the previous
    block (``None`` when that text is empty); text after the last block becomes a
    ``MessageAction``. A message without fences is one ``MessageAction``.

    Raises:
      ConversionError: a fence tag that is not a known ``CodeAction.language``.
    """
    actions: list[Action] = []
    position = 0
    for match in _FENCE_RE.finditer(text):
        language = normalise_fence_language(match.group(1), default=default_language)
        if language is None:
            raise ConversionError(
                f"code fence language {match.group(1).strip()!r} is not a known CodeAction "
                "language (see jaxstack.data.adp.CODE_LANGUAGES)"
            )
        before = text[position : match.start()].strip()
        actions.append(
            CodeAction(language=language, content=match.group(2), description=before or None)
        )
        position = match.end()
    rest = text[position:].strip()
    if rest or not actions:
        actions.append(MessageAction(content=rest if actions else text.strip()))
    return actions


def wrap_final_message(content: list[Any]) -> list[Any]:
    """Mark completion: when the last item is a ``MessageAction`` without ``<finish>``, wrap its
    content as ``<finish> ... </finish>`` (in place; the list is returned for convenience)."""
    if content and isinstance(content[-1], MessageAction) and finish_content(content[-1]) is None:
        last = content[-1]
        content[-1] = MessageAction(
            content=f"<finish> {last.content.strip()} </finish>", description=last.description
        )
    return content


def stable_id(prefix: str, *parts: str) -> str:
    """A position-independent id: ``prefix-`` + 16 hex digits of SHA-1 over ``parts``."""
    digest = hashlib.sha1("\x00".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}-{digest}"


def message_text(content: Any) -> str:
    """The text of an OpenAI-style message ``content``: a string, ``None`` (-> ``""``) or a list of
    ``{"type": "text", "text": ...}`` parts (joined with blank lines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
                texts.append(str(part["text"]))
            elif isinstance(part, str):
                texts.append(part)
            else:
                raise ConversionError(f"unsupported message content part {part!r:.80}")
        return "\n\n".join(texts)
    raise ConversionError(f"message content must be a string or a list of parts, got {content!r:.80}")


def decode_json_string(value: Any) -> Any:
    """Decode ``value`` when it is a JSON string (some datasets store message lists that way)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"expected a list or a JSON string holding one: {error.msg}") from None
    return value


def coerce_to_stub(stubs: ApiStubs, function: str, params: dict[str, str]) -> dict[str, Any]:
    """Convert text parameter values to the types annotated on the stub: ``int`` parameters from
    digits, ``list`` parameters from JSON, ``bool`` from ``true``/``false``; others stay text."""
    if function not in stubs:
        return dict(params)
    annotations = {name: str(p.annotation) for name, p in stubs.signature(function).parameters.items()}
    out: dict[str, Any] = {}
    for name, value in params.items():
        kind = annotations.get(name, "")
        text = value.strip()
        if "int" in kind and re.fullmatch(r"-?\d+", text):
            out[name] = int(text)
        elif "list" in kind and text.startswith("["):
            try:
                out[name] = json.loads(text)
            except json.JSONDecodeError:
                raise ConversionError(f"{function}.{name}: {text!r} is not a JSON list") from None
        elif "bool" in kind and text in ("true", "false"):
            out[name] = text == "true"
        else:
            out[name] = value
    return out
