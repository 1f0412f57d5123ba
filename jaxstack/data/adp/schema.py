"""The Agent Data Protocol (ADP) schema: release 1.0 exactly, plus the 1.2 extensions behind a switch.

A :class:`Trajectory` is ``{id, content, details}`` where ``content`` is a flat list of actions and
observations, each tagged on the wire by a literal ``class_`` string that acts as the union
discriminator:

====================  ======================================================================
``class_``            fields (``!`` = required, ``?`` = nullable, ``!?`` = required but nullable)
====================  ======================================================================
``api_action``        ``function!``, ``kwargs!``, ``description?``
``code_action``       ``language!`` (one of :data:`CODE_LANGUAGES`), ``content!``, ``description!?``
``message_action``    ``content!``, ``description?``
``text_observation``  ``content!``, ``name?``, ``source!`` (``user`` | ``agent`` | ``environment``)
``image_observation`` ``content!`` (image path), ``annotations?``, ``source!``
``web_observation``   ``html!?``, ``axtree?``, ``url!?``, ``image_observation!?``,
                      ``viewport_size!?`` (``[width, height]``)
====================  ======================================================================

Task completion is a ``message_action`` whose content holds ``<finish> ... </finish>``.

Version 1.0 ignores unknown keys (as the release's pydantic models do). Version 1.2 (the ``...V12``
classes, chosen with ``version="1.2"``) adds ``schema_version`` and ``available_apis`` to the
trajectory, ``reasoning_content`` and ``tool_call_id`` to actions (plus ``function_call`` to
``api_action``), ``tool_call_id`` to observations, allows any JSON value in ``details``, and forbids
unknown keys everywhere. Every valid 1.0 record is also a valid 1.2 record.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from jaxstack.data.adp.languages import CODE_LANGUAGES, is_code_language

SCHEMA_VERSIONS: tuple[str, ...] = ("1.0", "1.2")
"""The schema versions this module implements (``"1.0.0"``-style strings are accepted as well)."""

SCHEMA_VERSION_STRINGS: tuple[str, ...] = ("1.0.0", "1.1.0", "1.2.0")
"""Values accepted in the 1.2 ``Trajectory.schema_version`` field."""

Source = Literal["user", "agent", "environment"]


def _check_language(value: str) -> str:
    if not is_code_language(value):
        raise ValueError(
            f"unknown language {value!r}; expected one of the {len(CODE_LANGUAGES)} values in "
            "jaxstack.data.adp.CODE_LANGUAGES (lower-case fence tags such as 'python', 'bash', "
            "'sql')"
        )
    return value


Language = Annotated[
    str,
    AfterValidator(_check_language),
    Field(json_schema_extra={"enum": list(CODE_LANGUAGES)}),
]


# ---------------------------------------------------------------------------------------------
# Release 1.0
# ---------------------------------------------------------------------------------------------


class Action(BaseModel):
    """Base of every action (no fields in 1.0)."""


class Observation(BaseModel):
    """Base of every observation (no fields in 1.0)."""


class ApiAction(Action):
    """A call of a named tool/API with keyword arguments, e.g. ``goto(url=...)``."""

    class_: Literal["api_action"] = Field("api_action", description="The class of the action")
    function: str = Field(..., description="The name of the called function")
    kwargs: dict[str, Any] = Field(..., description="The keyword arguments of the call")
    description: str | None = Field(None, description="The description/thought for the action")


class CodeAction(Action):
    """Code to execute in ``language`` (``python`` cells, ``bash`` commands, ``sql`` queries, ...)."""

    class_: Literal["code_action"] = Field("code_action", description="The class of the action")
    language: Language = Field(..., description="The language of the code to execute")
    content: str = Field(..., description="The code to execute")
    description: str | None = Field(
        ..., description="The description/thought for the action (required, may be null)"
    )


class MessageAction(Action):
    """A natural-language message from the agent; ``<finish> ... </finish>`` marks completion."""

    class_: Literal["message_action"] = Field(
        "message_action", description="The class of the action"
    )
    content: str = Field(..., description="The message text")
    description: str | None = Field(None, description="The description/thought for the action")


class TextObservation(Observation):
    """Text seen by the agent: a user turn, an execution result, a tool response."""

    class_: Literal["text_observation"] = Field(
        "text_observation", description="The class of the observation"
    )
    content: str = Field(..., description="The observed text")
    name: str | None = Field(None, description="The name of the producer (e.g. a tool name)")
    source: Source = Field(..., description="Who produced the text: user, agent or environment")


class BoundingBox(BaseModel):
    """A rectangle in image pixels."""

    x: float
    y: float
    width: float
    height: float


class ImageAnnotation(BaseModel):
    """A labelled element on an image."""

    text: str
    element_type: str
    bounding_box: BoundingBox


class ImageObservation(Observation):
    """An image (by path) with optional element annotations."""

    class_: Literal["image_observation"] = Field(
        "image_observation", description="The class of the observation"
    )
    content: str = Field(..., description="The path of the image")
    annotations: list[ImageAnnotation] | None = Field(None, description="Annotated elements")
    source: Source = Field(..., description="Who produced the image: user, agent or environment")


class WebObservation(Observation):
    """A web page state: HTML and/or accessibility tree, URL, screenshot and viewport size."""

    class_: Literal["web_observation"] = Field(
        "web_observation", description="The class of the observation"
    )
    html: str | None = Field(..., description="The page HTML (required, may be null)")
    axtree: str | None = Field(None, description="The page accessibility tree as text")
    url: str | None = Field(..., description="The page URL (required, may be null)")
    image_observation: ImageObservation | None = Field(
        ..., description="A screenshot of the page (required, may be null)"
    )
    viewport_size: tuple[int, int] | None = Field(
        ..., description="The viewport [width, height] (required, may be null)"
    )


Item = Annotated[
    ApiAction | CodeAction | MessageAction | TextObservation | ImageObservation | WebObservation,
    Field(discriminator="class_"),
]


class Trajectory(BaseModel):
    """One agent episode: an ``id``, a flat list of actions and observations, string details."""

    id: str = Field(..., description="A unique identifier of the trajectory")
    content: list[Item] = Field(..., description="Alternating actions and observations")
    details: dict[str, str] = Field(default_factory=dict, description="Dataset-specific details")


# ---------------------------------------------------------------------------------------------
# 1.2 extensions
# ---------------------------------------------------------------------------------------------

_FORBID = ConfigDict(extra="forbid")


class ApiActionV12(ApiAction):
    """``ApiAction`` with the 1.2 fields; unknown keys are rejected."""

    model_config = _FORBID
    function_call: str | None = Field(None, description="The call as written by the agent")
    reasoning_content: str | None = Field(None, description="Model reasoning before the action")
    tool_call_id: str | None = Field(None, description="Links the action to its observation")


class CodeActionV12(CodeAction):
    """``CodeAction`` with the 1.2 fields; unknown keys are rejected."""

    model_config = _FORBID
    reasoning_content: str | None = Field(None, description="Model reasoning before the action")
    tool_call_id: str | None = Field(None, description="Links the action to its observation")


class MessageActionV12(MessageAction):
    """``MessageAction`` with the 1.2 fields; unknown keys are rejected."""

    model_config = _FORBID
    reasoning_content: str | None = Field(None, description="Model reasoning before the action")
    tool_call_id: str | None = Field(None, description="Links the action to its observation")


class TextObservationV12(TextObservation):
    """``TextObservation`` with ``tool_call_id``; unknown keys are rejected."""

    model_config = _FORBID
    tool_call_id: str | None = Field(None, description="The action this observation answers")


class BoundingBoxV12(BoundingBox):
    """``BoundingBox``; unknown keys are rejected."""

    model_config = _FORBID


class ImageAnnotationV12(ImageAnnotation):
    """``ImageAnnotation``; unknown keys are rejected."""

    model_config = _FORBID
    bounding_box: BoundingBoxV12


class ImageObservationV12(ImageObservation):
    """``ImageObservation`` with ``tool_call_id``; unknown keys are rejected."""

    model_config = _FORBID
    annotations: list[ImageAnnotationV12] | None = Field(None, description="Annotated elements")
    tool_call_id: str | None = Field(None, description="The action this observation answers")


class WebObservationV12(WebObservation):
    """``WebObservation`` with ``tool_call_id``; unknown keys are rejected."""

    model_config = _FORBID
    image_observation: ImageObservationV12 | None = Field(
        ..., description="A screenshot of the page (required, may be null)"
    )
    tool_call_id: str | None = Field(None, description="The action this observation answers")


ItemV12 = Annotated[
    ApiActionV12
    | CodeActionV12
    | MessageActionV12
    | TextObservationV12
    | ImageObservationV12
    | WebObservationV12,
    Field(discriminator="class_"),
]


class TrajectoryV12(Trajectory):
    """A 1.2 trajectory: adds ``schema_version`` and ``available_apis``; unknown keys are rejected.

    When ``available_apis`` is given, every ``api_action.function`` must be listed in it. Whether the
    listed names exist in a dataset's API stubs is checked by :func:`jaxstack.data.adp.validate`
    (it needs to know the dataset).
    """

    model_config = _FORBID
    content: list[ItemV12] = Field(..., description="Alternating actions and observations")
    details: dict[str, Any] = Field(default_factory=dict, description="Dataset-specific details")
    schema_version: Literal["1.0.0", "1.1.0", "1.2.0"] = Field(
        "1.2.0", description="The ADP schema version of this record"
    )
    available_apis: list[str] | None = Field(
        None, description="The API functions the agent could call (names in the dataset stubs)"
    )

    @model_validator(mode="after")
    def _calls_use_available_apis(self) -> TrajectoryV12:
        if self.available_apis is None:
            return self
        allowed = set(self.available_apis)
        for index, item in enumerate(self.content):
            if isinstance(item, ApiAction) and item.function not in allowed:
                raise ValueError(
                    f"content[{index}].function {item.function!r} is not listed in "
                    f"available_apis {sorted(allowed)}"
                )
        return self


AnyAction = ApiAction | CodeAction | MessageAction
AnyObservation = TextObservation | ImageObservation | WebObservation

# ---------------------------------------------------------------------------------------------
# Helpers: version switch, JSON Schema, errors, completion convention
# ---------------------------------------------------------------------------------------------


def normalise_version(version: str) -> str:
    """Map ``"1.0"``, ``"1.0.0"``, ``"1.2"``, ``"1.2.0"`` onto ``"1.0"`` or ``"1.2"``."""
    text = str(version).strip()
    if text in ("1.0", "1.0.0", "1"):
        return "1.0"
    if text in ("1.2", "1.2.0"):
        return "1.2"
    raise ValueError(f"schema version {version!r} is not supported; expected '1.0' or '1.2'")


def trajectory_model(version: str = "1.0") -> type[Trajectory]:
    """The pydantic trajectory class of a schema version (``"1.0"`` or ``"1.2"``)."""
    return TrajectoryV12 if normalise_version(version) == "1.2" else Trajectory


def validate_trajectory(data: dict[str, Any] | str | bytes, version: str = "1.0") -> Trajectory:
    """Validate one record (a dict or a JSON string) as a trajectory of ``version``.

    Raises:
      pydantic.ValidationError: naming each offending field; format it with
        :func:`format_validation_error` for a one-line message.
    """
    model = trajectory_model(version)
    if isinstance(data, (str, bytes)):
        return model.model_validate_json(data)
    return model.model_validate(data)


def json_schema(version: str = "1.0") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12, as pydantic writes it) of a trajectory of ``version``."""
    schema = trajectory_model(version).model_json_schema()
    schema["title"] = f"ADP Trajectory v{normalise_version(version)}"
    return schema


def json_schema_text(version: str = "1.0") -> str:
    """:func:`json_schema` as deterministic, indented JSON text."""
    return json.dumps(json_schema(version), indent=2, sort_keys=True) + "\n"


ITEM_TAGS: tuple[str, ...] = (
    "api_action",
    "code_action",
    "message_action",
    "text_observation",
    "image_observation",
    "web_observation",
)
"""The ``class_`` values, in the order of the union."""


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in ITEM_TAGS:
            out += f"({part})"
        else:
            out += ("." if out else "") + str(part)
        previous = part
    return out or "<record>"


def format_validation_error(error: ValidationError, limit: int = 5) -> str:
    """One line per problem, ``field.path: message``; at most ``limit`` problems are listed."""
    parts = []
    for problem in error.errors()[:limit]:
        message = problem["msg"]
        message = message.removeprefix("Value error, ")
        parts.append(f"{_format_loc(tuple(problem['loc']))}: {message}")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


_FINISH_RE = re.compile(r"<finish>(.*?)</finish>", re.DOTALL)


def finish_message(text: str, description: str | None = None) -> MessageAction:
    """The completion action: a ``MessageAction`` holding ``<finish> text </finish>``."""
    body = f" {text.strip()} " if text.strip() else " "
    return MessageAction(content=f"<finish>{body}</finish>", description=description)


def finish_content(item: Any) -> str | None:
    """The stripped text inside ``<finish>...</finish>`` of a message action, else ``None``."""
    if not isinstance(item, MessageAction):
        return None
    match = _FINISH_RE.search(item.content)
    return match.group(1).strip() if match else None


def upgrade(
    trajectory: Trajectory,
    *,
    available_apis: list[str] | None = None,
    link_tool_calls: bool = True,
) -> TrajectoryV12:
    """Convert a 1.0 trajectory to 1.2.

    Args:
      trajectory: a 1.0 (or 1.2) trajectory.
      available_apis: stored as ``available_apis`` (sorted); must cover every ``api_action``.
      link_tool_calls: give each api/code action that is directly followed by an environment
        observation a ``tool_call_id`` ``call_{n:06d}`` (n counts such pairs from 0) on both items,
        unless the action already has one.
    """
    data = trajectory.model_dump()
    data["schema_version"] = "1.2.0"
    if available_apis is not None:
        data["available_apis"] = sorted(set(available_apis))
    if link_tool_calls:
        items = data["content"]
        pair = 0
        for first, second in itertools.pairwise(items):
            if (
                first["class_"] in ("api_action", "code_action")
                and second["class_"] in ("text_observation", "image_observation", "web_observation")
                and second.get("source", "environment") == "environment"
                and not first.get("tool_call_id")
            ):
                first["tool_call_id"] = second["tool_call_id"] = f"call_{pair:06d}"
                pair += 1
    return TrajectoryV12.model_validate(data)


def downgrade(trajectory: Trajectory) -> Trajectory:
    """Drop the 1.2-only fields (lossy) and stringify non-string ``details`` values as JSON."""
    keep_10 = {
        name: set(cls.model_fields)
        for name, cls in {
            "api_action": ApiAction,
            "code_action": CodeAction,
            "message_action": MessageAction,
            "text_observation": TextObservation,
            "image_observation": ImageObservation,
            "web_observation": WebObservation,
        }.items()
    }
    data = trajectory.model_dump()
    content = [{k: v for k, v in item.items() if k in keep_10[item["class_"]]} for item in data["content"]]
    details = {
        key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        for key, value in data.get("details", {}).items()
    }
    return Trajectory(id=data["id"], content=content, details=details)
