"""Software-engineering agent trajectories: SWE-Gym, SWE-smith and Nebius SWE-agent trajectories.

SWE-Gym (SWE-Gym/SWE-Gym, OpenHands rollouts). Raw: ``{instance_id, run_id?, resolved?,
messages, tools?, test_result?}`` with ``messages`` in OpenAI chat-tools form: assistant messages
carry ``tool_calls: [{id, type: "function", function: {name, arguments: <JSON string>}}]`` and
``tool`` messages answer them (``tool_call_id``, ``name``). ``execute_bash`` -> ``CodeAction(bash)``,
``str_replace_editor`` / ``think`` -> ``ApiAction``, ``finish`` -> ``<finish> message </finish>``.
Several calls in one message become consecutive actions (the text is the first call's thought).
Rows with ``resolved: false`` are skipped.

SWE-smith (SWE-bench/SWE-smith-trajectories, SWE-agent with function calling). Raw: ``{id |
instance_id, messages}`` where ``messages`` may be a JSON string and a message's ``content`` may be
a list of ``{type: "text", text}`` parts. Assistant text holds
``<function=NAME>\\n<parameter=P>VALUE</parameter>...</function>`` calls: ``bash`` ->
``CodeAction(bash)``, ``str_replace_editor`` / ``submit`` -> ``ApiAction`` (parameter text is typed
by the stub annotations). ``tool`` turns and user turns starting ``OBSERVATION:`` are environment
observations. Only trajectories whose last item is ``submit`` are kept (others are skipped).

Nebius SWE-agent trajectories (nebius/SWE-agent-trajectories, classic SWE-agent). Raw:
``{instance_id, model_name?, target?, trajectory: [{role: system|user|ai, text, ...}],
exit_status?, generated_patch?, eval_logs?}``. An ``ai`` turn is ``DISCUSSION ... `` + a fenced
command; SWE-agent commands (``open``, ``goto``, ``edit``, ``search_dir``, ...) become
``ApiAction`` bound to the stubs below, anything else is ``CodeAction(bash)``. A user turn right
after an action is the environment's output. Rows with ``target: false`` (unresolved) are
skipped.

All three end with the dataset's own completion (``finish`` for SWE-Gym, ``submit`` for the
SWE-agent sets); exporters treat ``submit`` as the harness's completion action.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jaxstack.data.adp.api import ApiStubs
from jaxstack.data.adp.datasets.base import (
    DatasetSpec,
    coerce_to_stub,
    decode_json_string,
    message_text,
)
from jaxstack.data.adp.schema import (
    ApiAction,
    CodeAction,
    MessageAction,
    TextObservation,
    Trajectory,
    finish_message,
)
from jaxstack.data.adp.stream import ConversionError, SkipRow

# ---------------------------------------------------------------------------------------------
# Shared stubs
# ---------------------------------------------------------------------------------------------


def str_replace_editor(
    command: str,
    path: str,
    file_text: str | None = None,
    old_str: str | None = None,
    new_str: str | None = None,
    insert_line: int | None = None,
    view_range: list[int] | None = None,
) -> None:
    """View, create or edit a file.

    ``command`` is one of ``view`` (show a file or list a directory; ``view_range`` limits the
    lines), ``create`` (write ``file_text`` to a new file), ``str_replace`` (replace the unique
    occurrence of ``old_str`` with ``new_str``), ``insert`` (insert ``new_str`` after line
    ``insert_line``) or ``undo_edit``. ``path`` is absolute.
    """


def think(thought: str) -> None:
    """Record a thought; changes nothing in the environment."""


def submit() -> None:
    """Submit the current changes as the solution and end the episode."""


SWE_GYM_STUBS = ApiStubs.from_functions("swe_gym", [str_replace_editor, think])
SWE_SMITH_STUBS = ApiStubs.from_functions("swe_smith", [str_replace_editor, submit])

# ---------------------------------------------------------------------------------------------
# SWE-Gym
# ---------------------------------------------------------------------------------------------


class ToolFunction(BaseModel):
    """``{name, arguments}``; ``arguments`` is a JSON object encoded as a string."""

    name: str
    arguments: str | dict[str, Any]


class ToolCall(BaseModel):
    """One OpenAI tool call."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"] = "function"
    function: ToolFunction


class OpenAIMessage(BaseModel):
    """One OpenAI chat message (``content`` may be a string, a list of text parts or null)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class SweGymRaw(BaseModel):
    """A SWE-Gym OpenHands rollout."""

    model_config = ConfigDict(extra="allow")
    instance_id: str = Field(..., min_length=1)
    run_id: str | None = None
    resolved: bool | None = None
    messages: list[OpenAIMessage] = Field(..., min_length=1)
    tools: list[Any] | None = None
    test_result: Any = None


def _tool_arguments(call: ToolCall, index: int) -> dict[str, Any]:
    if isinstance(call.function.arguments, dict):
        return dict(call.function.arguments)
    try:
        value = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as error:
        raise ConversionError(
            f"messages[{index}].tool_calls[{call.id}].function.arguments is not JSON: {error.msg}"
        ) from None
    if not isinstance(value, dict):
        raise ConversionError(
            f"messages[{index}].tool_calls[{call.id}].function.arguments must be a JSON object"
        )
    return value


def convert_swe_gym(raw: SweGymRaw) -> Trajectory:
    """Convert one SWE-Gym rollout (see the module docstring)."""
    if raw.resolved is False:
        raise SkipRow("resolved is false")
    content: list = []
    for index, message in enumerate(raw.messages):
        text = message_text(message.content)
        if message.role == "system":
            continue
        if message.role == "user":
            content.append(TextObservation(content=text, source="user"))
        elif message.role == "tool":
            content.append(TextObservation(content=text, name=message.name, source="environment"))
        elif not message.tool_calls:
            content.append(MessageAction(content=text))
        else:
            for position, call in enumerate(message.tool_calls):
                thought = (text.strip() or None) if position == 0 else None
                arguments = _tool_arguments(call, index)
                name = call.function.name
                if name == "execute_bash":
                    if "command" not in arguments:
                        raise ConversionError(
                            f"messages[{index}]: execute_bash call {call.id} has no 'command'"
                        )
                    content.append(
                        CodeAction(language="bash", content=arguments["command"], description=thought)
                    )
                elif name == "finish":
                    content.append(finish_message(str(arguments.get("message", "")), thought))
                else:
                    content.append(ApiAction(function=name, kwargs=arguments, description=thought))
    details = {"instance_id": raw.instance_id}
    if raw.run_id is not None:
        details["run_id"] = raw.run_id
    if raw.resolved is not None:
        details["resolved"] = str(raw.resolved).lower()
    return Trajectory(id=raw.instance_id, content=content, details=details)


# ---------------------------------------------------------------------------------------------
# SWE-smith
# ---------------------------------------------------------------------------------------------


class SweSmithRaw(BaseModel):
    """A SWE-smith SWE-agent trajectory; ``messages`` may be a JSON string."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(..., min_length=1)
    messages: list[OpenAIMessage] = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _instance_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" not in data and "instance_id" in data:
            data = {**data, "id": data["instance_id"]}
        return data

    @field_validator("messages", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return decode_json_string(value)


_FUNCTION_RE = re.compile(r"<function=([^>\s]+)>(.*?)</function>", re.DOTALL)
_PARAMETER_RE = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)
_OBSERVATION_PREFIX = "OBSERVATION:"


def _strip_observation(text: str) -> str:
    return text[len(_OBSERVATION_PREFIX) :].strip("\n") if text.startswith(_OBSERVATION_PREFIX) else text


def _function_calls(text: str, stubs: ApiStubs, index: int) -> list:
    actions: list = []
    position = 0
    for match in _FUNCTION_RE.finditer(text):
        thought = text[position : match.start()].strip() or None
        name = match.group(1)
        params = {}
        for key, value in _PARAMETER_RE.findall(match.group(2)):
            params[key] = value.strip("\n")
        if name == "bash":
            if "command" not in params:
                raise ConversionError(f"messages[{index}]: bash call has no 'command' parameter")
            actions.append(CodeAction(language="bash", content=params["command"], description=thought))
        else:
            kwargs = coerce_to_stub(stubs, name, params)
            actions.append(ApiAction(function=name, kwargs=kwargs, description=thought))
        position = match.end()
    return actions


def convert_swe_smith(raw: SweSmithRaw) -> Trajectory:
    """Convert one SWE-smith trajectory (see the module docstring)."""
    content: list = []
    for index, message in enumerate(raw.messages):
        text = message_text(message.content)
        if message.role == "system":
            continue
        if message.role == "tool":
            content.append(TextObservation(content=_strip_observation(text), source="environment"))
        elif message.role == "user":
            if text.startswith(_OBSERVATION_PREFIX):
                content.append(
                    TextObservation(content=_strip_observation(text), source="environment")
                )
            else:
                content.append(TextObservation(content=text, source="user"))
        else:
            actions = _function_calls(text, SWE_SMITH_STUBS, index)
            content.extend(actions or [MessageAction(content=text)])
    last = content[-1] if content else None
    if not (isinstance(last, ApiAction) and last.function == "submit"):
        raise SkipRow("trajectory does not end with submit")
    return Trajectory(id=raw.id, content=content)


# ---------------------------------------------------------------------------------------------
# Nebius SWE-agent trajectories
# ---------------------------------------------------------------------------------------------


def open_file(path: str, line_number: int | None = None) -> None:
    """Open ``path`` in the editor window, centred on ``line_number`` when given."""


def goto(line_number: int) -> None:
    """Move the editor window to show ``line_number``."""


def scroll_down() -> None:
    """Move the editor window down by one window height."""


def scroll_up() -> None:
    """Move the editor window up by one window height."""


def create(filename: str) -> None:
    """Create the empty file ``filename`` and open it."""


def search_dir(search_term: str, dir: str | None = None) -> None:
    """List the files under ``dir`` (default: the current directory) that contain ``search_term``."""


def search_file(search_term: str, file: str | None = None) -> None:
    """Show the lines of ``file`` (default: the open file) that contain ``search_term``."""


def find_file(file_name: str, dir: str | None = None) -> None:
    """Find files named ``file_name`` under ``dir`` (default: the current directory)."""


def edit(start_line: int, end_line: int, replacement_text: str) -> None:
    """Replace lines ``start_line``..``end_line`` (inclusive) of the open file with
    ``replacement_text``. Written ``edit N:M`` + newline + the text + a line ``end_of_edit``."""


NEBIUS_STUBS = ApiStubs.from_functions(
    "nebius_swe_agent",
    [goto, scroll_down, scroll_up, create, search_dir, search_file, find_file, edit, submit],
    open=open_file,
)


class NebiusTurn(BaseModel):
    """One turn of a Nebius trajectory."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "ai"]
    text: str | None = None
    system_prompt: str | None = None


class NebiusRaw(BaseModel):
    """A Nebius SWE-agent trajectory."""

    model_config = ConfigDict(extra="allow")
    instance_id: str = Field(..., min_length=1)
    model_name: str | None = None
    target: bool | None = None
    trajectory: list[NebiusTurn] = Field(..., min_length=1)
    exit_status: str | None = None
    generated_patch: str | None = None
    eval_logs: str | None = None


_COMMAND_BLOCK_RE = re.compile(r"```[^\n]*\n(.*?)\n?```", re.DOTALL)
_EDIT_RE = re.compile(r"^edit\s+(\d+):(\d+)\s*\n(.*?)\n?end_of_edit\s*$", re.DOTALL)


def _nebius_action(text: str, index: int):
    blocks = list(_COMMAND_BLOCK_RE.finditer(text))
    if not blocks:
        return MessageAction(content=text)
    block = blocks[-1]
    thought = (text[: block.start()] + " " + text[block.end() :]).strip()
    thought = thought.removeprefix("DISCUSSION").strip() or None
    command = block.group(1).strip("\n")
    words = command.split(maxsplit=1)
    name = words[0] if words else ""
    if name == "edit":
        match = _EDIT_RE.match(command.strip())
        if not match:
            raise ConversionError(
                f"trajectory[{index}]: edit must read 'edit N:M' + text + 'end_of_edit'"
            )
        kwargs = {
            "start_line": int(match.group(1)),
            "end_line": int(match.group(2)),
            "replacement_text": match.group(3),
        }
        return ApiAction(function="edit", kwargs=kwargs, description=thought)
    if name in NEBIUS_STUBS and "\n" not in command.strip():
        try:
            arguments = shlex.split(command)[1:]
        except ValueError as error:
            raise ConversionError(f"trajectory[{index}]: cannot split {command!r}: {error}") from None
        parameters = NEBIUS_STUBS.parameter_names(name)
        if len(arguments) > len(parameters):
            raise ConversionError(
                f"trajectory[{index}]: {name} takes at most {len(parameters)} argument(s), "
                f"got {len(arguments)}"
            )
        params = dict(zip(parameters, arguments))
        return ApiAction(
            function=name, kwargs=coerce_to_stub(NEBIUS_STUBS, name, params), description=thought
        )
    return CodeAction(language="bash", content=command, description=thought)


def convert_nebius(raw: NebiusRaw) -> Trajectory:
    """Convert one Nebius SWE-agent trajectory (see the module docstring)."""
    if raw.target is False:
        raise SkipRow("target is false (the trajectory did not resolve the issue)")
    content: list = []
    for index, turn in enumerate(raw.trajectory):
        if turn.role == "system":
            continue
        text = turn.text or ""
        if turn.role == "user":
            after_action = bool(content) and isinstance(content[-1], (ApiAction, CodeAction))
            content.append(
                TextObservation(content=text, source="environment" if after_action else "user")
            )
        else:
            content.append(_nebius_action(text, index))
    details = {
        key: value
        for key, value in (("model_name", raw.model_name), ("exit_status", raw.exit_status))
        if value is not None
    }
    return Trajectory(id=raw.instance_id, content=content, details=details)


SWE_GYM_SPEC = DatasetSpec(
    name="swe_gym",
    raw_model=SweGymRaw,
    convert=convert_swe_gym,
    stubs=SWE_GYM_STUBS,
    source="SWE-Gym/SWE-Gym (OpenHands trajectories)",
)
SWE_SMITH_SPEC = DatasetSpec(
    name="swe_smith",
    raw_model=SweSmithRaw,
    convert=convert_swe_smith,
    stubs=SWE_SMITH_STUBS,
    source="SWE-bench/SWE-smith-trajectories",
)
NEBIUS_SPEC = DatasetSpec(
    name="nebius_swe_agent",
    raw_model=NebiusRaw,
    convert=convert_nebius,
    stubs=NEBIUS_STUBS,
    source="nebius/SWE-agent-trajectories",
)
