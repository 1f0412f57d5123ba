"""ADP -> SWE-agent SFT conversations.

Output: ``{"id", "conversations": [{"from": "human" | "gpt", "value"}], "system"}``.

SWE-agent has three tools: ``bash(command)``, ``str_replace_editor(command, path, ...)`` and
``submit()``, written in the same ``<function=...><parameter=...>`` syntax as OpenHands.

* ``code_action``: ``bash`` / ``sh`` / ``shell`` -> ``bash(command)``; ``python`` -> ``bash`` running
  the code through a quoted here-document (``python3 <<'PYTHON_EOF' ... PYTHON_EOF``); other languages
  cannot be expressed and the trajectory is rejected.
* ``api_action``: ``str_replace_editor`` and ``submit`` are emitted directly; other APIs of a
  non-web dataset are shell commands of the SWE-agent kind, ``name arg1 arg2`` with the arguments in
  the stub's parameter order and shell-quoted (``edit`` is written ``edit N:M`` + the text +
  ``end_of_edit``), and the stubs are listed in the first message. Web datasets cannot be exported.
* ``message_action``: ``<finish> x </finish>`` -> ``submit`` (the finish text joins the thought);
  other messages are ``gpt`` turns.

Observations are ``human`` turns; an environment observation, or any observation right after a
function call, is prefixed ``OBSERVATION:``.
"""

from __future__ import annotations

import shlex
from typing import Any

from jaxstack.data.adp.api import ApiBindingError, ApiStubs
from jaxstack.data.adp.exporters.common import (
    ExportError,
    check_arguments,
    format_function,
    render_image_observation,
    render_web_observation,
    thought_prefix,
)
from jaxstack.data.adp.schema import (
    ApiAction,
    CodeAction,
    ImageObservation,
    MessageAction,
    TextObservation,
    Trajectory,
    WebObservation,
    finish_content,
)

SWEAGENT_TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bash": (("command",), ()),
    "str_replace_editor": (
        ("command", "path"),
        ("file_text", "old_str", "new_str", "insert_line", "view_range"),
    ),
    "submit": ((), ()),
}
"""SWE-agent tool name -> (required, optional) argument names. These are the valid SFT tools."""

SYSTEM_PROMPT = """\
You are a helpful assistant that can interact with a computer to solve software engineering tasks.
You act by calling exactly one function per turn, written as:

<function=NAME>
<parameter=PARAMETER>
VALUE
</parameter>
</function>

Functions:
- bash(command): run a bash command.
- str_replace_editor(command, path[, file_text, old_str, new_str, insert_line, view_range]): view,
  create or edit files; command is view, create, str_replace, insert or undo_edit.
- submit(): submit your changes when the task is solved.

Before a function call, briefly explain your reasoning.\
"""

_PYTHON = ("python", "python3", "py")
_SHELL = ("bash", "sh", "shell", "console")


def _shell_command(name: str, kwargs: dict[str, Any], stubs: ApiStubs, index: int) -> str:
    try:
        bound = stubs.bind(name, kwargs)
    except ApiBindingError as error:
        raise ExportError(f"content[{index}]: {error}") from None
    if name == "edit":
        arguments = bound.arguments
        return f"edit {arguments['start_line']}:{arguments['end_line']}\n{arguments['replacement_text']}\nend_of_edit"
    words = [name]
    for parameter in stubs.parameter_names(name):
        if parameter in bound.arguments and bound.arguments[parameter] is not None:
            words.append(shlex.quote(str(bound.arguments[parameter])))
    return " ".join(words)


def _call(
    item: ApiAction | CodeAction, index: int, stubs: ApiStubs | None, web: bool, listed: set[str]
) -> tuple[str, dict[str, Any]]:
    if isinstance(item, CodeAction):
        if item.language in _SHELL:
            return "bash", {"command": item.content}
        if item.language in _PYTHON:
            if "\nPYTHON_EOF\n" in f"\n{item.content}\n":
                raise ExportError(f"content[{index}]: python code contains the line PYTHON_EOF")
            return "bash", {"command": f"python3 <<'PYTHON_EOF'\n{item.content}\nPYTHON_EOF"}
        raise ExportError(
            f"content[{index}]: SWE-agent runs only bash and python code; got language "
            f"{item.language!r}"
        )
    name, kwargs = item.function, dict(item.kwargs)
    if name in SWEAGENT_TOOLS:
        required, optional = SWEAGENT_TOOLS[name]
        check_arguments(name, required, optional, kwargs, index)
        return name, kwargs
    if web:
        raise ExportError(f"content[{index}]: SWE-agent has no browser; cannot express {name!r}")
    if stubs is None or name not in stubs:
        raise ExportError(
            f"content[{index}]: function {name!r} is neither a SWE-agent tool nor an API of the "
            "dataset (pass dataset= so that its stubs are known)"
        )
    listed.add(name)
    return "bash", {"command": _shell_command(name, kwargs, stubs, index)}


def to_sweagent(
    trajectory: Trajectory, *, stubs: ApiStubs | None = None, web: bool = False
) -> dict[str, Any]:
    """Export one trajectory to the SWE-agent SFT format (see the module docstring).

    Raises:
      ExportError: code in a language other than bash / python, a browser action, or an API call
        that is neither a SWE-agent tool nor a dataset API.
    """
    conversations: list[dict[str, str]] = []
    listed: set[str] = set()
    after_call = False
    for index, item in enumerate(trajectory.content):
        if isinstance(item, (ApiAction, CodeAction)):
            tool, arguments = _call(item, index, stubs, web, listed)
            conversations.append(
                {"from": "gpt", "value": thought_prefix(item.description) + format_function(tool, arguments)}
            )
            after_call = True
            continue
        if isinstance(item, MessageAction):
            message = finish_content(item)
            if message is not None:
                thought = "\n\n".join(part for part in (item.description, message) if part)
                value = thought_prefix(thought) + format_function("submit", {})
            else:
                value = thought_prefix(item.description) + item.content
            conversations.append({"from": "gpt", "value": value})
            after_call = message is not None
            continue
        if isinstance(item, WebObservation):
            text, source = render_web_observation(item), "environment"
        elif isinstance(item, ImageObservation):
            text, source = render_image_observation(item), item.source
        else:
            assert isinstance(item, TextObservation)
            text, source = item.content, item.source
        if after_call or source == "environment":
            conversations.append({"from": "human", "value": f"OBSERVATION:\n{text}"})
        else:
            conversations.append({"from": "gpt" if source == "agent" else "human", "value": text})
        after_call = False
    if listed and stubs is not None and conversations:
        commands = [name for name in stubs.names if name not in SWEAGENT_TOOLS]
        conversations[0]["value"] = (
            "Besides bash, these commands are available in the shell (arguments in this order, "
            f"shell-quoted):\n\n```python\n{stubs.describe(commands)}\n```\n\n"
            + conversations[0]["value"]
        )
    return {"id": trajectory.id, "conversations": conversations, "system": SYSTEM_PROMPT}
