"""Synatra (oottyy/Synatra): synthetic one-step web-navigation demonstrations.

Raw: ``{prompt: str, response: str}``. The prompt is Python-ish text with sections introduced by
comment lines::

    # website
    website = "shopping"
    # objective
    objective = "Find the cheapest blue kettle"
    # past actions
    ...free text, one action per line...
    # observation of the current web page
    observation = \"\"\"Tab 0 (current): Kettles
    [12] link 'Blue kettle'
    ...\"\"\"

The response is comment lines (``# sub-task ...``, ``# step N: <reasoning>``, ``# step summary:
...``) and one action call, e.g. ``click(element_id="12")``, ``type(element_id="7",
string="kettle")``, ``key_press("Enter")``, ``goto("http://...")``, ``scroll("down")``,
``switch_tab(1)``, ``stop("42")``.

ADP: ``[user objective (+ past actions), web observation (axtree = the observation text),
api_action]``; the thought is the comment lines joined. Raw calls are mapped onto the stubs below
(``key_press`` -> ``press``, ``switch_tab`` -> ``tab_focus``, ``close_tab`` -> ``tab_close``).
Ids are content hashes (``synatra-<16 hex>``) since the raw rows have none.
"""

from __future__ import annotations

import ast
import re

from pydantic import BaseModel, ConfigDict, Field

from jaxstack.data.adp.api import ApiStubs
from jaxstack.data.adp.datasets.base import DatasetSpec, stable_id
from jaxstack.data.adp.schema import (
    ApiAction,
    TextObservation,
    Trajectory,
    WebObservation,
)
from jaxstack.data.adp.stream import ConversionError

# ---------------------------------------------------------------------------------------------
# API stubs (browser actions; element ids are the bracketed numbers of the accessibility tree)
# ---------------------------------------------------------------------------------------------


def click(element_id: str) -> None:
    """Click the element whose accessibility-tree id is ``element_id``."""


def type_text(element_id: str, text: str) -> None:
    """Type ``text`` into the element ``element_id`` (replacing its current value)."""


def hover(element_id: str) -> None:
    """Move the mouse over the element ``element_id``."""


def press(key_comb: str) -> None:
    """Press a key combination such as ``Enter`` or ``Control+a``."""


def scroll(direction: str) -> None:
    """Scroll the page ``up`` or ``down`` by one screen."""


def goto(url: str) -> None:
    """Open ``url`` in the current tab."""


def new_tab() -> None:
    """Open a new, empty tab and focus it."""


def tab_focus(page_number: int) -> None:
    """Focus the tab with index ``page_number`` (0-based)."""


def tab_close() -> None:
    """Close the current tab."""


def go_back() -> None:
    """Go back to the previous page."""


def go_forward() -> None:
    """Go forward to the next page."""


def stop(answer: str = "") -> None:
    """End the task; ``answer`` is the answer when the task asks for one."""


STUBS = ApiStubs.from_functions(
    "synatra",
    [click, hover, press, scroll, goto, new_tab, tab_focus, tab_close, go_back, go_forward, stop],
    type=type_text,
)

# raw call name -> (stub name, raw positional/keyword parameter names -> stub parameter names)
_RAW_CALLS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "click": ("click", (("element_id", "element_id"),)),
    "hover": ("hover", (("element_id", "element_id"),)),
    "type": ("type", (("element_id", "element_id"), ("string", "text"))),
    "key_press": ("press", (("key_comb", "key_comb"),)),
    "press": ("press", (("key_comb", "key_comb"),)),
    "scroll": ("scroll", (("direction", "direction"),)),
    "goto": ("goto", (("url", "url"),)),
    "new_tab": ("new_tab", ()),
    "switch_tab": ("tab_focus", (("tab_index", "page_number"),)),
    "tab_focus": ("tab_focus", (("page_number", "page_number"),)),
    "close_tab": ("tab_close", ()),
    "go_back": ("go_back", ()),
    "go_forward": ("go_forward", ()),
    "stop": ("stop", (("answer", "answer"),)),
}


class SynatraRaw(BaseModel):
    """``{prompt, response}``: the Python-ish prompt and the next action."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(..., min_length=1)
    response: str = Field(..., min_length=1)


_SECTION_RE = re.compile(r"^# (website|objective|past actions|observation of the current web page)\s*$")


def _sections(prompt: str) -> dict[str, str]:
    parts: dict[str, list[str]] = {}
    current = None
    for line in prompt.split("\n"):
        match = _SECTION_RE.match(line.strip())
        if match:
            current = match.group(1)
            parts[current] = []
        elif current is not None:
            parts[current].append(line)
    return {key: "\n".join(lines).strip() for key, lines in parts.items()}


def _assigned_string(section: str, name: str) -> str:
    match = re.search(rf'{name}\s*=\s*("""(.*?)"""|"(.*?)")', section, re.DOTALL)
    if not match:
        raise ConversionError(f"prompt: no '{name} = \"...\"' assignment in its section")
    return match.group(2) if match.group(2) is not None else match.group(3)


def _parse_call(line: str) -> tuple[str, dict[str, object]]:
    try:
        node = ast.parse(line.strip(), mode="eval").body
    except SyntaxError:
        raise ConversionError(f"response: cannot parse action call {line.strip()!r}") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ConversionError(f"response: {line.strip()!r} is not a function call")
    raw_name = node.func.id
    if raw_name not in _RAW_CALLS:
        raise ConversionError(
            f"response: unknown action {raw_name!r}; expected one of {sorted(_RAW_CALLS)}"
        )
    name, params = _RAW_CALLS[raw_name]
    try:
        positional = [ast.literal_eval(arg) for arg in node.args]
        keywords = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except ValueError:
        raise ConversionError(f"response: arguments of {line.strip()!r} must be literals") from None
    if len(positional) > len(params):
        raise ConversionError(f"response: {raw_name} takes {len(params)} argument(s)")
    kwargs: dict[str, object] = {}
    for (raw_param, param), value in zip(params, positional):
        kwargs[param] = value
    mapping = dict(params)
    for key, value in keywords.items():
        if key not in mapping:
            raise ConversionError(f"response: {raw_name} has no argument {key!r}")
        kwargs[mapping[key]] = value
    for key in ("element_id",):
        if key in kwargs:
            kwargs[key] = str(kwargs[key])
    if name == "tab_focus" and "page_number" in kwargs:
        kwargs["page_number"] = int(kwargs["page_number"])
    return name, kwargs


def convert(raw: SynatraRaw) -> Trajectory:
    """Convert one Synatra record (see the module docstring)."""
    sections = _sections(raw.prompt)
    for required in ("objective", "observation of the current web page"):
        if required not in sections:
            raise ConversionError(f"prompt: missing section '# {required}'")
    objective = _assigned_string(sections["objective"], "objective")
    observation = _assigned_string(sections["observation of the current web page"], "observation")
    website = _assigned_string(sections["website"], "website") if "website" in sections else ""
    past = sections.get("past actions", "")
    thoughts, call = [], None
    for line in raw.response.strip().split("\n"):
        stripped = line.strip()
        if stripped.startswith("#"):
            thoughts.append(stripped.lstrip("#").strip())
        elif stripped:
            if call is not None:
                raise ConversionError("response: more than one action call")
            call = stripped
    if call is None:
        raise ConversionError("response: no action call")
    function, kwargs = _parse_call(call)
    task = objective if not past else f"{objective}\n\nPrevious actions:\n{past}"
    content = [
        TextObservation(content=task, source="user"),
        WebObservation(
            html=None, axtree=observation, url=None, image_observation=None, viewport_size=None
        ),
        ApiAction(function=function, kwargs=kwargs, description="\n".join(thoughts) or None),
    ]
    details = {"website": website} if website else {}
    return Trajectory(
        id=stable_id("synatra", raw.prompt, raw.response), content=content, details=details
    )


SPEC = DatasetSpec(
    name="synatra",
    raw_model=SynatraRaw,
    convert=convert,
    stubs=STUBS,
    web=True,
    source="oottyy/Synatra",
)
