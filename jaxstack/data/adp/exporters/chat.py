"""ADP -> plain chat messages (jaxstack's own SFT form), and assistant text -> ADP actions.

Output: ``{"id", "messages": [{"role", "content"}]}`` with roles ``system``, ``user``,
``assistant`` and ``tool`` (the role names of Hugging Face chat templates). Only ``assistant``
messages are training targets.

An assistant message is one ADP action, written so that it parses back exactly
(:func:`parse_action`)::

    <think>
    {description}
    </think>

    {body}

where the think block is present iff the description is not ``None`` and ``body`` is

* ``api_action``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (JSON);
* ``code_action``: ``<execute language="python">\\n{code}\\n</execute>``;
* ``message_action``: the content as it is (``<finish> ... </finish>`` included).

Observations: user text -> ``user``; environment text, web and image observations -> ``tool``
(a web observation before any action is ``user``); agent text -> ``assistant``. Consecutive
messages are not merged.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jaxstack.data.adp.api import ApiStubs
from jaxstack.data.adp.exporters.common import (
    render_image_observation,
    render_web_observation,
)
from jaxstack.data.adp.schema import (
    Action,
    ApiAction,
    CodeAction,
    ImageObservation,
    MessageAction,
    TextObservation,
    Trajectory,
    WebObservation,
)

SYSTEM_PROMPT = """\
You are an agent that solves tasks step by step. Each reply is one action: optionally a thought
inside <think> </think>, then exactly one of
- a tool call: <tool_call>
{"name": "FUNCTION", "arguments": {...}}
</tool_call>
- code to run: <execute language="LANGUAGE">
CODE
</execute>
- a message to the user.
When the task is done, reply with <finish> final answer </finish>.\
"""


class ActionParseError(ValueError):
    """Assistant text that is not a well-formed action (the message says why)."""


def render_action(action: Action) -> str:
    """The assistant text of one ADP action (see the module docstring)."""
    think = f"<think>\n{action.description}\n</think>\n\n" if action.description is not None else ""
    if isinstance(action, ApiAction):
        call = json.dumps({"name": action.function, "arguments": action.kwargs}, ensure_ascii=False)
        return f"{think}<tool_call>\n{call}\n</tool_call>"
    if isinstance(action, CodeAction):
        return f'{think}<execute language="{action.language}">\n{action.content}\n</execute>'
    if isinstance(action, MessageAction):
        return think + action.content
    raise TypeError(f"not an ADP action: {type(action).__name__}")


_THINK_RE = re.compile(r"\A<think>\n(.*?)\n</think>\n\n", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"\A<tool_call>\n(.*)\n</tool_call>\s*\Z", re.DOTALL)
_EXECUTE_RE = re.compile(r'\A<execute language="([^"\n]+)">\n(.*)\n</execute>\s*\Z', re.DOTALL)


def parse_action(text: str) -> ApiAction | CodeAction | MessageAction:
    """Parse assistant text written as :func:`render_action` writes it back into an ADP action.

    Raises:
      ActionParseError: a ``<tool_call>`` that is not ``{"name": str, "arguments": object}`` JSON,
        an ``<execute>`` block with an unknown language, an unclosed tag, or empty text.
    """
    description = None
    think = _THINK_RE.match(text)
    if think:
        description, text = think.group(1), text[think.end() :]
    elif text.startswith("<think>"):
        raise ActionParseError("unclosed <think> block (expected '<think>\\n...\\n</think>\\n\\n')")
    if text.startswith("<tool_call>"):
        match = _TOOL_CALL_RE.match(text)
        if not match:
            raise ActionParseError("<tool_call> must be closed by </tool_call> at the end")
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError as error:
            raise ActionParseError(f"<tool_call> body is not JSON: {error.msg}") from None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("name"), str)
            or not isinstance(call.get("arguments", {}), dict)
            or set(call) - {"name", "arguments"}
        ):
            raise ActionParseError('<tool_call> body must be {"name": str, "arguments": object}')
        return ApiAction(function=call["name"], kwargs=call.get("arguments", {}), description=description)
    if text.startswith("<execute"):
        match = _EXECUTE_RE.match(text)
        if not match:
            raise ActionParseError('<execute language="..."> must be closed by </execute> at the end')
        try:
            return CodeAction(language=match.group(1), content=match.group(2), description=description)
        except ValueError as error:
            raise ActionParseError(f"<execute> language: {error}") from None
    if not text.strip():
        raise ActionParseError("empty action")
    return MessageAction(content=text, description=description)


def action_parse_rate(texts: list[str]) -> float:
    """The share of ``texts`` that :func:`parse_action` accepts (``nan`` for an empty list)."""
    if not texts:
        return float("nan")
    good = 0
    for text in texts:
        try:
            parse_action(text)
        except ActionParseError:
            continue
        good += 1
    return good / len(texts)


def to_chat(trajectory: Trajectory, *, stubs: ApiStubs | None = None, web: bool = False) -> dict[str, Any]:
    """Export one trajectory to chat messages (see the module docstring). Never raises for a valid
    trajectory. ``stubs`` adds the dataset's API declarations to the system message."""
    del web  # browser actions are plain tool calls here
    system = SYSTEM_PROMPT
    if stubs is not None:
        system += f"\n\nFunctions you can call with <tool_call>:\n\n```python\n{stubs.describe()}\n```"
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    seen_action = False
    for item in trajectory.content:
        if isinstance(item, Action):
            messages.append({"role": "assistant", "content": render_action(item)})
            seen_action = True
        elif isinstance(item, TextObservation):
            role = {"user": "user", "agent": "assistant", "environment": "tool"}[item.source]
            messages.append({"role": role, "content": item.content})
        elif isinstance(item, WebObservation):
            messages.append({"role": "tool" if seen_action else "user", "content": render_web_observation(item)})
        else:
            assert isinstance(item, ImageObservation)
            role = "user" if item.source == "user" else "tool"
            messages.append({"role": role, "content": render_image_observation(item)})
    return {"id": trajectory.id, "messages": messages}


def chat_to_actions(record: dict[str, Any]) -> list[ApiAction | CodeAction | MessageAction]:
    """Parse every assistant message of an exported chat record back into ADP actions."""
    return [parse_action(m["content"]) for m in record["messages"] if m["role"] == "assistant"]
