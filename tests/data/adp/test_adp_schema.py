"""ADP schema: round trips, rejections naming the field, the 1.0 / 1.2 switch, JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from jaxstack.data.adp import (
    DATASETS,
    ApiAction,
    CodeAction,
    TextObservation,
    Trajectory,
    TrajectoryV12,
    WebObservation,
    downgrade,
    format_validation_error,
    json_schema,
    upgrade,
    validate_trajectory,
)


def _record(item: dict) -> dict:
    return {"id": "t", "content": [item], "details": {}}


CODE = {"class_": "code_action", "language": "python", "content": "print(1)", "description": None}
WEB = {"class_": "web_observation", "html": None, "url": None, "image_observation": None, "viewport_size": None}


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_every_sample_round_trips(converted, name, version):
    assert converted[name], f"no converted trajectory for {name}"
    for trajectory in converted[name]:
        obj = validate_trajectory(trajectory.model_dump(), version=version)
        assert type(obj).model_validate_json(obj.model_dump_json()) == obj


def test_wire_form_matches_the_release():
    trajectory = Trajectory(
        id="x",
        content=[
            TextObservation(content="hi", source="user"),
            CodeAction(language="bash", content="ls", description=None),
        ],
    )
    assert json.loads(trajectory.model_dump_json()) == {
        "id": "x",
        "content": [
            {"class_": "text_observation", "content": "hi", "name": None, "source": "user"},
            {"class_": "code_action", "language": "bash", "content": "ls", "description": None},
        ],
        "details": {},
    }


@pytest.mark.parametrize("version", ["1.0", "1.2"])
@pytest.mark.parametrize(
    "item, field, needle",
    [
        ({**CODE, "class_": "code_act"}, "content[0]", "class_"),
        ({**CODE, "language": "pyhton"}, "content[0](code_action).language", "unknown language 'pyhton'"),
        ({"class_": "text_observation", "content": "x", "source": "system"}, "(text_observation).source", "'user', 'agent' or 'environment'"),
        ({k: v for k, v in CODE.items() if k != "description"}, "(code_action).description", "Field required"),
        ({k: v for k, v in WEB.items() if k != "html"}, "(web_observation).html", "Field required"),
        ({k: v for k, v in WEB.items() if k != "url"}, "(web_observation).url", "Field required"),
        ({k: v for k, v in WEB.items() if k != "image_observation"}, "(web_observation).image_observation", "Field required"),
        ({k: v for k, v in WEB.items() if k != "viewport_size"}, "(web_observation).viewport_size", "Field required"),
        ({"content": "x", "source": "user"}, "content[0]", "discriminator 'class_'"),
    ],
)
def test_rejections_name_the_field(version, item, field, needle):
    with pytest.raises(ValidationError) as info:
        validate_trajectory(_record(item), version=version)
    message = format_validation_error(info.value)
    assert field in message and needle in message, message


def test_class_literal_checked_on_direct_construction():
    with pytest.raises(ValidationError, match="class_"):
        ApiAction(class_="code_action", function="f", kwargs={})


def test_required_nullable_fields_accept_null():
    item = validate_trajectory(_record(WEB)).content[0]
    assert isinstance(item, WebObservation) and item.html is None and item.viewport_size is None
    with pytest.raises(ValidationError):
        WebObservation(html=None, url=None, image_observation=None)  # viewport_size missing


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_v10_sample_validates_as_v12(converted, name):
    for trajectory in converted[name]:
        v12 = TrajectoryV12.model_validate_json(trajectory.model_dump_json())
        assert v12.schema_version == "1.2.0"
        assert downgrade(v12) == trajectory


def test_v10_ignores_unknown_keys_v12_forbids_them():
    record = {"id": "t", "content": [{**CODE, "thoughts": "x"}], "extra": 1}
    assert validate_trajectory(record, "1.0").content[0] == CodeAction(**CODE)
    with pytest.raises(ValidationError) as info:
        validate_trajectory(record, "1.2")
    message = format_validation_error(info.value)
    assert "content[0](code_action).thoughts: Extra inputs are not permitted" in message
    assert "extra: Extra inputs are not permitted" in message


def test_v12_fields_and_available_apis():
    record = {
        "id": "t",
        "schema_version": "1.2.0",
        "available_apis": ["click"],
        "details": {"score": 1.5},
        "content": [
            {"class_": "api_action", "function": "click", "kwargs": {"element_id": "3"}, "description": None,
             "reasoning_content": "r", "tool_call_id": "call_000000", "function_call": "click('3')"},
            {"class_": "text_observation", "content": "ok", "source": "environment", "tool_call_id": "call_000000"},
        ],
    }
    trajectory = validate_trajectory(record, "1.2")
    assert trajectory.content[0].tool_call_id == trajectory.content[1].tool_call_id
    with pytest.raises(ValidationError, match="content\\[0\\].function 'click' is not listed in available_apis"):
        validate_trajectory({**record, "available_apis": ["goto"]}, "1.2")
    with pytest.raises(ValidationError, match="schema_version"):
        validate_trajectory({**record, "schema_version": "2.0.0"}, "1.2")
    with pytest.raises(ValidationError, match="details"):
        validate_trajectory({**record, "schema_version": None} | {"details": {"score": 1.5}}, "1.0")


def test_upgrade_links_adjacent_calls(converted):
    trajectory = converted["swe_gym"][0]
    v12 = upgrade(trajectory, available_apis=DATASETS["swe_gym"].stubs.names)
    ids = [(item.class_, getattr(item, "tool_call_id", None)) for item in v12.content]
    assert ids == [
        ("text_observation", None),
        ("api_action", "call_000000"),
        ("text_observation", "call_000000"),
        ("api_action", "call_000001"),
        ("text_observation", "call_000001"),
        ("code_action", "call_000002"),
        ("text_observation", "call_000002"),
        ("message_action", None),
    ]
    assert v12.available_apis == ["str_replace_editor", "think"]


@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_json_schema_export(version):
    schema = json_schema(version)
    defs = schema["$defs"]
    code = defs["CodeAction" if version == "1.0" else "CodeActionV12"]
    assert "description" in code["required"] and "language" in code["required"]
    assert "python" in code["properties"]["language"]["enum"]
    web = defs["WebObservation" if version == "1.0" else "WebObservationV12"]
    assert set(web["required"]) == {"html", "url", "image_observation", "viewport_size"}
    discriminator = schema["properties"]["content"]["items"]["discriminator"]
    assert discriminator["propertyName"] == "class_"
    if version == "1.2":
        assert schema["additionalProperties"] is False
        assert "schema_version" in schema["properties"]
    else:
        assert "schema_version" not in schema["properties"]
    json.dumps(schema)  # serialisable
