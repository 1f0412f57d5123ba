"""ADP -> SFT exporters: ``openhands``, ``sweagent`` and ``chat`` (jaxstack's own form).

Each exporter takes a :class:`~jaxstack.data.adp.schema.Trajectory` and returns one JSON record;
:func:`export_trajectory` picks the exporter and the dataset's API stubs by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxstack.data.adp.exporters.chat import (
    ActionParseError,
    action_parse_rate,
    chat_to_actions,
    parse_action,
    render_action,
    to_chat,
)
from jaxstack.data.adp.exporters.common import ExportError, format_function
from jaxstack.data.adp.exporters.openhands import OPENHANDS_TOOLS, to_openhands
from jaxstack.data.adp.exporters.sweagent import SWEAGENT_TOOLS, to_sweagent
from jaxstack.data.adp.schema import Trajectory

EXPORTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "openhands": to_openhands,
    "sweagent": to_sweagent,
    "chat": to_chat,
}
"""Export format name -> exporter ``(trajectory, *, stubs, web) -> record``."""


def export_trajectory(trajectory: Trajectory, fmt: str, dataset: str | None = None) -> dict[str, Any]:
    """Export ``trajectory`` in format ``fmt``, using the API stubs and web flag of ``dataset``.

    Raises:
      KeyError: unknown format or dataset.
      ExportError: the trajectory cannot be expressed in the format.
    """
    if fmt not in EXPORTERS:
        raise KeyError(f"unknown export format {fmt!r}; expected one of {sorted(EXPORTERS)}")
    stubs, web = None, False
    if dataset is not None:
        from jaxstack.data.adp.datasets import get_dataset

        spec = get_dataset(dataset)
        stubs, web = spec.stubs, spec.web
    return EXPORTERS[fmt](trajectory, stubs=stubs, web=web)


__all__ = [
    "EXPORTERS",
    "OPENHANDS_TOOLS",
    "SWEAGENT_TOOLS",
    "ActionParseError",
    "ExportError",
    "action_parse_rate",
    "chat_to_actions",
    "export_trajectory",
    "format_function",
    "parse_action",
    "render_action",
    "to_chat",
    "to_openhands",
    "to_sweagent",
]
