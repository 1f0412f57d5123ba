"""Chat datasets whose actions are code in the assistant text: Code-Feedback, CodeActInstruct and
Orca AgentInstruct.

Code-Feedback (m-a-p/Code-Feedback). Raw: ``{id: int | str, messages: [{role, content}]}``.
Assistant turns are split at Markdown code fences (:func:`text_to_actions`): each block is a
``CodeAction`` in the fence's language, the text before it is its thought. User turns that start
with ``Execution result:`` are environment observations. The final assistant message marks
completion.

CodeActInstruct (xingyaoww/code-act). Raw: ``{id, conversations: [{role, content}]}``. Assistant
turns hold ``<execute> python </execute>`` (-> ``CodeAction(python)``) and ``<solution> x
</solution>`` (-> a solution message); user turns starting with ``Observation:`` are environment
observations. The system prompt (which describes CodeAct's own tag format) is kept in ``details``.
The last solution message is wrapped as ``<finish> <solution> x </solution> </finish>``.

Orca AgentInstruct (microsoft/orca-agentinstruct-1M-v1). Raw: ``{id?, conversations}`` where
``conversations`` may also be a JSON string (as on the Hub); records without an id get a content
hash. A non-empty system turn is a user observation named ``system``; assistant turns are split at
code fences as for Code-Feedback; the final assistant message marks completion.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jaxstack.data.adp.datasets.base import (
    ChatTurn,
    Conversation,
    DatasetSpec,
    decode_json_string,
    stable_id,
    text_to_actions,
    wrap_final_message,
)
from jaxstack.data.adp.schema import (
    CodeAction,
    MessageAction,
    TextObservation,
    Trajectory,
)
from jaxstack.data.adp.stream import ConversionError

# ---------------------------------------------------------------------------------------------
# Code-Feedback
# ---------------------------------------------------------------------------------------------


class CodeFeedbackRaw(BaseModel):
    """``{id, messages: [{role, content}]}``; ``id`` is an integer on the Hub."""

    model_config = ConfigDict(extra="allow")
    id: int | str
    messages: list[ChatTurn] = Field(..., min_length=1)


_EXECUTION_PREFIX = "Execution result:"


def _after_prefix(text: str, prefix: str) -> str:
    """``text`` without ``prefix`` and without the rest of the prefix's line when it is blank."""
    return re.sub(r"^[ \t]*\n?", "", text[len(prefix) :], count=1)


def convert_code_feedback(raw: CodeFeedbackRaw) -> Trajectory:
    """Convert one Code-Feedback record (see the module docstring)."""
    content: list = []
    for turn in raw.messages:
        if turn.role == "assistant":
            content.extend(text_to_actions(turn.content))
        elif turn.role == "user" and turn.content.startswith(_EXECUTION_PREFIX):
            output = _after_prefix(turn.content, _EXECUTION_PREFIX)
            content.append(TextObservation(content=output, source="environment"))
        elif turn.role == "user":
            content.append(TextObservation(content=turn.content, source="user"))
        elif turn.content.strip():
            content.append(TextObservation(content=turn.content, name="system", source="user"))
    return Trajectory(id=str(raw.id), content=wrap_final_message(content))


# ---------------------------------------------------------------------------------------------
# CodeActInstruct
# ---------------------------------------------------------------------------------------------

_CODEACT_BLOCK_RE = re.compile(r"<(execute|solution)>(.*?)</\1>", re.DOTALL)
_OBSERVATION_PREFIX = "Observation:"


def _codeact_actions(text: str, index: int) -> list:
    actions: list = []
    position = 0
    for match in _CODEACT_BLOCK_RE.finditer(text):
        thought = text[position : match.start()].strip() or None
        body = match.group(2).strip("\n")
        if match.group(1) == "execute":
            actions.append(CodeAction(language="python", content=body, description=thought))
        else:
            actions.append(
                MessageAction(content=f"<solution> {body.strip()} </solution>", description=thought)
            )
        position = match.end()
    rest = text[position:].strip()
    if rest:
        actions.append(MessageAction(content=rest))
    if not actions:
        raise ConversionError(f"conversations[{index}]: empty assistant turn")
    return actions


def convert_codeactinstruct(raw: Conversation) -> Trajectory:
    """Convert one CodeActInstruct record (see the module docstring)."""
    content: list = []
    details: dict[str, str] = {}
    for index, turn in enumerate(raw.conversations):
        if turn.role == "system":
            details["system_prompt"] = turn.content
        elif turn.role == "assistant":
            content.extend(_codeact_actions(turn.content, index))
        elif turn.content.startswith(_OBSERVATION_PREFIX):
            output = _after_prefix(turn.content, _OBSERVATION_PREFIX)
            content.append(TextObservation(content=output, source="environment"))
        else:
            content.append(TextObservation(content=turn.content, source="user"))
    for position in range(len(content) - 1, -1, -1):
        item = content[position]
        if isinstance(item, MessageAction) and item.content.startswith("<solution>"):
            if position == len(content) - 1:
                content[position] = MessageAction(
                    content=f"<finish> {item.content} </finish>", description=item.description
                )
            break
    return Trajectory(id=raw.id, content=content, details=details)


# ---------------------------------------------------------------------------------------------
# Orca AgentInstruct
# ---------------------------------------------------------------------------------------------


class OrcaRaw(BaseModel):
    """``{id?, conversations}``; ``conversations`` may be a JSON string holding the list."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    conversations: list[ChatTurn] = Field(..., min_length=1)

    @field_validator("conversations", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return decode_json_string(value)


def convert_orca(raw: OrcaRaw) -> Trajectory:
    """Convert one Orca AgentInstruct record (see the module docstring)."""
    content: list = []
    for turn in raw.conversations:
        if turn.role == "assistant":
            content.extend(text_to_actions(turn.content))
        elif turn.role == "system":
            if turn.content.strip():
                content.append(TextObservation(content=turn.content, name="system", source="user"))
        else:
            content.append(TextObservation(content=turn.content, source="user"))
    identifier = raw.id or stable_id(
        "orca", *(f"{turn.role}:{turn.content}" for turn in raw.conversations)
    )
    return Trajectory(id=identifier, content=wrap_final_message(content))


CODE_FEEDBACK_SPEC = DatasetSpec(
    name="code_feedback",
    raw_model=CodeFeedbackRaw,
    convert=convert_code_feedback,
    source="m-a-p/Code-Feedback",
)
CODEACTINSTRUCT_SPEC = DatasetSpec(
    name="codeactinstruct",
    raw_model=Conversation,
    convert=convert_codeactinstruct,
    source="xingyaoww/code-act",
)
ORCA_SPEC = DatasetSpec(
    name="orca_agentinstruct",
    raw_model=OrcaRaw,
    convert=convert_orca,
    source="microsoft/orca-agentinstruct-1M-v1",
)
