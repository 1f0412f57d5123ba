"""Pieces shared by the ADP -> SFT exporters."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jaxstack.data.adp.schema import ImageObservation, WebObservation


class ExportError(ValueError):
    """A trajectory that a harness format cannot express (the message says which item and why)."""


def format_function(name: str, parameters: Mapping[str, Any]) -> str:
    """The OpenHands / SWE-agent function-call text::

        <function=NAME>
        <parameter=P>
        VALUE
        </parameter>
        </function>

    String values are written as they are; other values as JSON (``[3, 4]``, ``true``, ``5``).
    """
    body = "".join(
        f"<parameter={key}>\n{value if isinstance(value, str) else json.dumps(value)}\n</parameter>\n"
        for key, value in parameters.items()
    )
    return f"<function={name}>\n{body}</function>"


def python_literal(value: Any) -> str:
    """A Python literal for ``value``; multi-line strings use triple quotes when that is exact."""
    if (
        isinstance(value, str)
        and "\n" in value
        and '"""' not in value
        and "\\" not in value
        and not value.endswith('"')
    ):
        return f'"""{value}"""'
    return repr(value)


def python_call(name: str, kwargs: Mapping[str, Any]) -> str:
    """``name(k=<literal>, ...)`` in the order of ``kwargs``."""
    return f"{name}({', '.join(f'{k}={python_literal(v)}' for k, v in kwargs.items())})"


def check_arguments(
    tool: str, required: Sequence[str], optional: Sequence[str], arguments: Mapping[str, Any], index: int
) -> None:
    """Raise :class:`ExportError` unless ``arguments`` has every required and only known names."""
    missing = [name for name in required if name not in arguments]
    unknown = [name for name in arguments if name not in required and name not in optional]
    if missing or unknown:
        raise ExportError(
            f"content[{index}]: {tool} expects arguments {list(required)} (+ optional "
            f"{list(optional)}); missing {missing}, unknown {unknown}"
        )


def render_web_observation(observation: WebObservation) -> str:
    """A web page state as text: URL, then the accessibility tree (or the HTML when there is none)."""
    parts = []
    if observation.url:
        parts.append(f"Current URL: {observation.url}")
    if observation.axtree is not None:
        parts.append(f"Accessibility tree of the page:\n{observation.axtree}")
    elif observation.html is not None:
        parts.append(f"HTML of the page:\n{observation.html}")
    if observation.image_observation is not None:
        parts.append(f"[Screenshot: {observation.image_observation.content}]")
    return "\n\n".join(parts) if parts else "[Empty page]"


def render_image_observation(observation: ImageObservation) -> str:
    """An image observation as text: its path and any annotated elements."""
    text = f"[Image: {observation.content}]"
    if observation.annotations:
        labels = ", ".join(f"{a.text} ({a.element_type})" for a in observation.annotations if a.text)
        if labels:
            text += f"\nElements detected: {labels}"
    return text


def thought_prefix(description: str | None) -> str:
    """The action's description followed by a blank line, or nothing."""
    return f"{description}\n\n" if description else ""
