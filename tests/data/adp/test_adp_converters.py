"""Raw converters on the hand-written records: shapes, determinism, bad-row reporting, API binding."""

from __future__ import annotations

import io
import json

import pytest
from adp_helpers import convert_fixture, raw_path

from jaxstack.data.adp import DATASETS, ApiBindingError, validate_stream
from jaxstack.data.adp.datasets.base import text_to_actions

# Per dataset: (rows written, rows skipped, class_ sequence of the first trajectory), by hand.
EXPECTED = {
    "agenttuning_os": (2, 0, ["text_observation", "code_action", "text_observation", "message_action"]),
    "agenttuning_db": (1, 0, ["text_observation", "code_action", "text_observation", "message_action"]),
    "code_feedback": (2, 0, ["text_observation", "code_action", "text_observation", "message_action"]),
    "codeactinstruct": (1, 0, ["text_observation", "code_action", "text_observation", "message_action"]),
    "orca_agentinstruct": (2, 0, ["text_observation", "message_action"]),
    "synatra": (2, 0, ["text_observation", "web_observation", "api_action"]),
    "swe_gym": (1, 1, ["text_observation", "api_action", "text_observation", "api_action",
                       "text_observation", "code_action", "text_observation", "message_action"]),
    "swe_smith": (1, 1, ["text_observation", "code_action", "text_observation", "api_action",
                         "text_observation", "api_action", "text_observation", "api_action"]),
    "nebius_swe_agent": (1, 1, ["text_observation", "api_action", "text_observation", "api_action",
                                "text_observation", "code_action", "text_observation", "api_action"]),
}


def test_every_dataset_has_a_fixture_and_expectation():
    assert set(EXPECTED) == set(DATASETS)
    for name in DATASETS:
        assert raw_path(name).exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converter_on_fixture(converted, name):
    written, skipped, classes = EXPECTED[name]
    _, err = convert_fixture(name)
    assert len(converted[name]) == written
    assert err.count(": skipped: ") == skipped and err.count("\n") == skipped, err
    assert [item.class_ for item in converted[name][0].content] == classes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_fixture_validates_against_raw_schema(name):
    for line in raw_path(name).read_text().splitlines():
        DATASETS[name].raw_model.model_validate_json(line)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_converting_twice_is_byte_identical(name):
    first, _ = convert_fixture(name)
    second, _ = convert_fixture(name)
    assert first == second and first.endswith("\n")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_calls_bind_to_stubs(converted, name):
    stubs = DATASETS[name].stubs
    for trajectory in converted[name]:
        for item in trajectory.content:
            if item.class_ == "api_action":
                stubs.bind(item.function, item.kwargs)


def test_corrupt_line_in_the_middle_is_reported_and_the_rest_converts():
    lines = raw_path("code_feedback").read_text().splitlines(keepends=True)
    corrupt = [lines[0], '{"id": 7, "messages": [\n', "\n", '{"id": 8}\n', lines[1]]
    out, err = io.StringIO(), io.StringIO()
    report = DATASETS["code_feedback"].convert_lines(corrupt, out, err, source="cf.jsonl")
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["101", "102"]
    problems = err.getvalue().splitlines()
    assert problems[0].startswith("cf.jsonl:2: invalid JSON: ")
    assert problems[1] == "cf.jsonl:4: raw schema: messages: Field required"
    assert len(problems) == 2
    assert report.as_dict() == {
        "rows_read": 4,
        "rows_written": 2,
        "rows_failed": 2,
        "rows_skipped": 0,
        "success_rate": 0.5,
        "failures_by_stage": {"invalid JSON": 1, "raw schema": 1},
    }


def test_conversion_error_names_the_turn():
    record = {"id": "os_9", "conversations": [
        {"role": "user", "content": "Now, my problem is:\n\nlist files"},
        {"role": "assistant", "content": "I will just do it"},
    ]}
    out, err = io.StringIO(), io.StringIO()
    DATASETS["agenttuning_os"].convert_lines([json.dumps(record)], out, err, source="os")
    assert out.getvalue() == ""
    assert err.getvalue().startswith("os:1: conversion: ConversionError: conversations[1]: agent turn must read")


def test_unknown_fence_language_is_a_clear_error():
    with pytest.raises(ValueError, match="code fence language 'klingon' is not a known CodeAction language"):
        text_to_actions("```klingon\nQapla'\n```")


def test_api_call_that_does_not_bind_is_rejected():
    prompt = json.loads(raw_path("synatra").read_text().splitlines()[0])
    prompt["response"] = "# step 1: go\ngoto(\"http://a\", \"http://b\")"
    out, err = io.StringIO(), io.StringIO()
    DATASETS["synatra"].convert_lines([json.dumps(prompt)], out, err, source="s")
    assert "s:1: conversion: ConversionError: response: goto takes 1 argument(s)" in err.getvalue()
    # A well-formed ADP record whose kwargs do not bind: reported by validate with --dataset.
    std = {"id": "x", "content": [{"class_": "api_action", "function": "click", "kwargs": {"bid": "3"}, "description": None}]}
    err = io.StringIO()
    report = validate_stream([json.dumps(std)], stubs=DATASETS["synatra"].stubs, check_apis=True, err=err, source="v")
    assert report.rows_failed == 1
    assert err.getvalue() == (
        "v:1: API binding: content[0].kwargs: kwargs of click(element_id: str) -> None do not bind: "
        "missing a required argument: 'element_id' (got ['bid'])\n"
    )
    with pytest.raises(ApiBindingError, match="function 'clack' is not an API of dataset 'synatra'"):
        DATASETS["synatra"].stubs.bind("clack", {})


def test_hand_checked_contents(converted):
    os0 = converted["agenttuning_os"][0]
    assert os0.content[0].content.startswith("How many files ending in .log are in /var/app?")
    assert os0.content[1].content == "ls /var/app/*.log | wc -l"
    assert os0.content[-1].content == "<finish> <solution> 3 </solution> </finish>"
    assert converted["agenttuning_os"][1].content[-1].content == "<finish> </finish>"
    db = converted["agenttuning_db"][0]
    assert db.content[1].language == "sql" and db.content[2].source == "environment"
    cf = converted["code_feedback"][1]
    assert cf.content[1].language == "javascript" and cf.content[1].description is None
    assert converted["code_feedback"][0].content[2].content == "[1, 4, 9]"
    orca = converted["orca_agentinstruct"][1]
    assert orca.id.startswith("orca-") and orca.content[0].name == "system"
    synatra = converted["synatra"][1]
    assert synatra.content[2].function == "stop" and synatra.content[2].kwargs == {"answer": "$19.99"}
    smith = converted["swe_smith"][0]
    assert smith.content[3].kwargs["view_range"] == [3, 4]
    assert smith.content[5].kwargs["old_str"] == "    return text.lower()"
    nebius = converted["nebius_swe_agent"][0]
    assert nebius.content[1].function == "open" and nebius.content[1].kwargs == {"path": "textutil/count.py"}
    assert nebius.content[3].kwargs == {"start_line": 2, "end_line": 2, "replacement_text": "    return len(text.split())"}
    gym = converted["swe_gym"][0]
    assert gym.content[-1].content == "<finish> add now returns the sum. </finish>"
    assert gym.details == {"instance_id": "demo__calc-1", "run_id": "run-0", "resolved": "true"}


def test_v12_conversion_output_validates():
    out, err = io.StringIO(), io.StringIO()
    with open(raw_path("synatra")) as handle:
        DATASETS["synatra"].convert_lines(handle, out, err, version="1.2")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert err.getvalue() == "" and len(records) == 2
    assert records[0]["schema_version"] == "1.2.0" and "click" in records[0]["available_apis"]
