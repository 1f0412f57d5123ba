"""ADP -> OpenHands (CodeAct agent) SFT conversations, in LLaMA-Factory ShareGPT form.

Output: ``{"id", "conversations": [{"from", "value"}], "system"}`` with ``from`` in ``human``,
``gpt``, ``function_call`` and ``observation``.

Actions (the description, if any, comes first as the thought, then a blank line):

* ``code_action``: ``python`` -> ``execute_ipython_cell(code)``, ``bash`` / ``sh`` / ``shell`` ->
  ``execute_bash(command)``; any other language ``L`` -> ``execute_ipython_cell(code='L(<source as a Python string>)')``
  and a note on such helpers is prepended to the first message.
* ``api_action``: OpenHands' own tools (``execute_bash``, ``execute_ipython_cell``,
  ``str_replace_editor``, ``think``, ``browser``, ``finish``) are emitted directly after checking
  their argument names; browser actions of web datasets go through
  ``browser(code="click('15')")``-style BrowserGym calls; ``submit`` and Synatra's ``stop`` become
  ``finish``; other dataset APIs are called from the IPython cell
  (``execute_ipython_cell(code="fn(k='v')")``) after binding to the stubs, and the stubs'
  declarations are prepended to the first message.
* ``message_action``: ``<finish> x </finish>`` -> ``finish(message=x, task_completed=true)``;
  anything else is a ``gpt`` turn.

Observations: user text -> ``human``, agent text -> ``gpt``, environment text -> ``observation``; a
text or image observation right after a function call is an ``observation`` prefixed
``EXECUTION RESULT of [<tool>]:``. A web observation is a ``human`` turn (the URL and the
accessibility tree), merged into a preceding ``human`` turn.
"""

from __future__ import annotations

from typing import Any

from jaxstack.data.adp.api import ApiBindingError, ApiStubs
from jaxstack.data.adp.exporters.common import (
    ExportError,
    check_arguments,
    format_function,
    python_call,
    python_literal,
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

OPENHANDS_TOOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "execute_bash": (("command",), ("is_input",)),
    "execute_ipython_cell": (("code",), ()),
    "str_replace_editor": (
        ("command", "path"),
        ("file_text", "old_str", "new_str", "insert_line", "view_range"),
    ),
    "think": (("thought",), ()),
    "browser": (("code",), ()),
    "finish": (("message", "task_completed"), ()),
}
"""OpenHands tool name -> (required, optional) argument names. These are the valid SFT tools."""

# ADP web action -> (BrowserGym action, ADP argument -> BrowserGym argument)
BROWSER_ACTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "click": ("click", {"element_id": "bid", "bid": "bid"}),
    "type": ("fill", {"element_id": "bid", "bid": "bid", "text": "value"}),
    "hover": ("hover", {"element_id": "bid", "bid": "bid"}),
    "press": ("keyboard_press", {"key_comb": "key"}),
    "goto": ("goto", {"url": "url"}),
    "new_tab": ("new_tab", {}),
    "tab_focus": ("tab_focus", {"page_number": "index"}),
    "tab_close": ("tab_close", {}),
    "go_back": ("go_back", {}),
    "go_forward": ("go_forward", {}),
}

SUBMIT_FINISH_MESSAGE = "I have made the changes and submitted them."

SYSTEM_PROMPT = """\
You are OpenHands agent, a helpful AI assistant that can interact with a computer to solve tasks.
You act by calling exactly one function per turn, written as:

<function=NAME>
<parameter=PARAMETER>
VALUE
</parameter>
</function>

Functions:
- execute_bash(command[, is_input]): run a bash command in a persistent shell.
- execute_ipython_cell(code): run Python code in a persistent IPython kernel.
- str_replace_editor(command, path[, file_text, old_str, new_str, insert_line, view_range]): view,
  create or edit files; command is view, create, str_replace, insert or undo_edit.
- browser(code): run a BrowserGym action such as click('12'), fill('7', 'text'), goto('url').
- think(thought): write down a thought without acting.
- finish(message, task_completed): end the task with a final message.

Before a function call, briefly explain your reasoning.\
"""


def _code_call(item: CodeAction, languages: set[str]) -> tuple[str, dict[str, Any]]:
    if item.language in ("python", "python3", "py", "ipython"):
        return "execute_ipython_cell", {"code": item.content}
    if item.language in ("bash", "sh", "shell", "console"):
        return "execute_bash", {"command": item.content}
    languages.add(item.language)
    return "execute_ipython_cell", {"code": f"{item.language}({python_literal(item.content)})"}


def _api_call(
    item: ApiAction, index: int, stubs: ApiStubs | None, web: bool, wrapped: set[str]
) -> tuple[str, dict[str, Any]]:
    name, kwargs = item.function, dict(item.kwargs)
    if name in OPENHANDS_TOOLS:
        required, optional = OPENHANDS_TOOLS[name]
        check_arguments(name, required, optional, kwargs, index)
        return name, kwargs
    if name == "submit" and not kwargs:
        return "finish", {"message": SUBMIT_FINISH_MESSAGE, "task_completed": "true"}
    if web and name == "stop":
        return "finish", {"message": str(kwargs.get("answer", "")), "task_completed": "true"}
    if web and name in BROWSER_ACTIONS:
        action, renames = BROWSER_ACTIONS[name]
        unknown = [key for key in kwargs if key not in renames]
        if unknown:
            raise ExportError(f"content[{index}]: browser action {name} has unknown arguments {unknown}")
        browser_kwargs = {renames[key]: value for key, value in kwargs.items()}
        return "browser", {"code": python_call(action, browser_kwargs)}
    if web and name == "scroll":
        direction = str(kwargs.get("direction", "down"))
        return "browser", {"code": f"scroll(0, {-500 if direction == 'up' else 500})"}
    if stubs is None or name not in stubs:
        raise ExportError(
            f"content[{index}]: function {name!r} is neither an OpenHands tool nor an API of the "
            "dataset (pass dataset= so that its stubs are known)"
        )
    try:
        stubs.bind(name, kwargs)
    except ApiBindingError as error:
        raise ExportError(f"content[{index}]: {error}") from None
    wrapped.add(name)
    return "execute_ipython_cell", {"code": python_call(name, kwargs)}


def to_openhands(
    trajectory: Trajectory, *, stubs: ApiStubs | None = None, web: bool = False
) -> dict[str, Any]:
    """Export one trajectory to the OpenHands SFT format (see the module docstring).

    Raises:
      ExportError: an API call that is neither an OpenHands tool nor a dataset API, or whose
        arguments do not match.
    """
    conversations: list[dict[str, str]] = []
    languages: set[str] = set()
    wrapped: set[str] = set()
    for index, item in enumerate(trajectory.content):
        previous = conversations[-1] if conversations else None
        if isinstance(item, (ApiAction, CodeAction)):
            if isinstance(item, CodeAction):
                tool, arguments = _code_call(item, languages)
            else:
                tool, arguments = _api_call(item, index, stubs, web, wrapped)
            value = thought_prefix(item.description) + format_function(tool, arguments)
            conversations.append({"from": "function_call", "value": value, "_tool": tool})
        elif isinstance(item, MessageAction):
            message = finish_content(item)
            if message is not None:
                call = format_function("finish", {"message": message, "task_completed": "true"})
                conversations.append(
                    {"from": "function_call", "value": thought_prefix(item.description) + call, "_tool": "finish"}
                )
            else:
                conversations.append({"from": "gpt", "value": thought_prefix(item.description) + item.content})
        elif isinstance(item, WebObservation):
            text = render_web_observation(item)
            if previous is not None and previous["from"] == "human":
                previous["value"] += "\n\n" + text
            else:
                conversations.append({"from": "human", "value": text})
        else:
            assert isinstance(item, (TextObservation, ImageObservation))
            text = item.content if isinstance(item, TextObservation) else render_image_observation(item)
            if previous is not None and previous["from"] == "function_call":
                text = f"EXECUTION RESULT of [{previous['_tool']}]:\n{text}"
                conversations.append({"from": "observation", "value": text})
            else:
                role = {"user": "human", "agent": "gpt", "environment": "observation"}[item.source]
                conversations.append({"from": role, "value": text})
    preamble = ""
    if languages:
        names = ", ".join(sorted(languages))
        preamble += (
            f"Code in {names} is run from the IPython cell through a helper named after the language "
            "that takes the source as a string, e.g. sql(\"SELECT 1\").\n\n"
        )
    if stubs is not None:
        names = [
            name
            for name in stubs.names
            if name not in OPENHANDS_TOOLS
            and not (web and (name in BROWSER_ACTIONS or name in ("scroll", "stop")))
            and name != "submit"
        ]
        if names:
            preamble += (
                "These Python functions are defined in the IPython cell (call them with "
                f"execute_ipython_cell):\n\n```python\n{stubs.describe(names)}\n```\n\n"
            )
    if preamble and conversations:
        conversations[0]["value"] = preamble + conversations[0]["value"]
    return {
        "id": trajectory.id,
        "conversations": [{"from": m["from"], "value": m["value"]} for m in conversations],
        "system": SYSTEM_PROMPT,
    }
