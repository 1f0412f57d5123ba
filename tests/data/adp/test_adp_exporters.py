"""Exporters: hand-written goldens, reviewed per-dataset goldens, chat parse-back, SFT checks."""

from __future__ import annotations

import json

import pytest
from adp_helpers import FIXTURES

from jaxstack.data.adp import (
    DATASETS,
    ActionParseError,
    ApiAction,
    CodeAction,
    ExportError,
    MessageAction,
    TextObservation,
    Trajectory,
    action_parse_rate,
    check_conversations,
    export_trajectory,
    parse_action,
    render_action,
    to_chat,
    to_openhands,
    to_sweagent,
)
from jaxstack.data.adp.exporters.chat import SYSTEM_PROMPT as CHAT_SYSTEM

LIST_FILES = Trajectory(
    id="t1",
    content=[
        TextObservation(content="List the files.", source="user"),
        CodeAction(language="bash", content="ls", description="I will list them."),
        TextObservation(content="a.txt\nb.txt", source="environment"),
        MessageAction(content="<finish> a.txt and b.txt </finish>", description=None),
    ],
)


def test_openhands_hand_written_golden():
    assert to_openhands(LIST_FILES)["conversations"] == [
        {"from": "human", "value": "List the files."},
        {
            "from": "function_call",
            "value": "I will list them.\n\n<function=execute_bash>\n<parameter=command>\nls\n</parameter>\n</function>",
        },
        {"from": "observation", "value": "EXECUTION RESULT of [execute_bash]:\na.txt\nb.txt"},
        {
            "from": "function_call",
            "value": "<function=finish>\n<parameter=message>\na.txt and b.txt\n</parameter>\n"
            "<parameter=task_completed>\ntrue\n</parameter>\n</function>",
        },
    ]


def test_sweagent_hand_written_golden():
    record = to_sweagent(LIST_FILES)
    assert record["id"] == "t1" and "submit()" in record["system"]
    assert record["conversations"] == [
        {"from": "human", "value": "List the files."},
        {"from": "gpt", "value": "I will list them.\n\n<function=bash>\n<parameter=command>\nls\n</parameter>\n</function>"},
        {"from": "human", "value": "OBSERVATION:\na.txt\nb.txt"},
        {"from": "gpt", "value": "a.txt and b.txt\n\n<function=submit>\n</function>"},
    ]


def test_chat_hand_written_golden():
    assert to_chat(LIST_FILES) == {
        "id": "t1",
        "messages": [
            {"role": "system", "content": CHAT_SYSTEM},
            {"role": "user", "content": "List the files."},
            {"role": "assistant", "content": '<think>\nI will list them.\n</think>\n\n<execute language="bash">\nls\n</execute>'},
            {"role": "tool", "content": "a.txt\nb.txt"},
            {"role": "assistant", "content": "<finish> a.txt and b.txt </finish>"},
        ],
    }
    click = ApiAction(function="click", kwargs={"element_id": "15"}, description=None)
    assert render_action(click) == '<tool_call>\n{"name": "click", "arguments": {"element_id": "15"}}\n</tool_call>'


@pytest.mark.parametrize("fmt", ["openhands", "sweagent", "chat"])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reviewed_goldens_per_dataset(converted, name, fmt):
    """``tests/fixtures/adp/goldens`` were written by make_fixtures.py and reviewed by eye."""
    golden = json.loads((FIXTURES / "goldens" / f"{name}.{fmt}.json").read_text())
    try:
        record = export_trajectory(converted[name][0], fmt, dataset=name)
    except ExportError as error:
        record = {"error": str(error)}
    assert record == golden


def test_web_and_completion_mappings(converted):
    stop = export_trajectory(converted["synatra"][1], "openhands", dataset="synatra")
    assert stop["conversations"][-1]["value"].endswith(
        "<function=finish>\n<parameter=message>\n$19.99\n</parameter>\n<parameter=task_completed>\ntrue\n</parameter>\n</function>"
    )
    with pytest.raises(ExportError, match="SWE-agent has no browser"):
        export_trajectory(converted["synatra"][0], "sweagent", dataset="synatra")
    with pytest.raises(ExportError, match="SWE-agent runs only bash and python code; got language 'sql'"):
        export_trajectory(converted["agenttuning_db"][0], "sweagent", dataset="agenttuning_db")
    with pytest.raises(ExportError, match="neither an OpenHands tool nor an API of the dataset"):
        to_openhands(converted["nebius_swe_agent"][0])  # no dataset -> no stubs
    nebius = export_trajectory(converted["nebius_swe_agent"][0], "openhands", dataset="nebius_swe_agent")
    assert "<parameter=code>\nopen(path='textutil/count.py')\n</parameter>" in nebius["conversations"][1]["value"]
    assert "def open(path: str, line_number: int | None = None) -> None:" in nebius["conversations"][0]["value"]


def test_openhands_rejects_wrong_tool_arguments():
    bad = Trajectory(id="b", content=[ApiAction(function="str_replace_editor", kwargs={"path": "/a"}, description="x")])
    with pytest.raises(ExportError, match=r"str_replace_editor expects arguments \['command', 'path'\].*missing \['command'\]"):
        to_openhands(bad)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_chat_actions_parse_back_exactly(converted, name):
    for trajectory in converted[name]:
        record = export_trajectory(trajectory, "chat", dataset=name)
        actions = [item for item in trajectory.content if item.class_.endswith("_action")]
        parsed = [parse_action(m["content"]) for m in record["messages"] if m["role"] == "assistant"]
        assert parsed == actions


def test_parse_action_rejections():
    bad = [
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n{"name": 3}\n</tool_call>',
        '<execute language="pyhton">\nx\n</execute>',
        '<execute language="python">\nx',
        "<think>\nunclosed",
        "",
    ]
    for text in bad:
        with pytest.raises(ActionParseError):
            parse_action(text)
    assert action_parse_rate(bad + ["hello", '<execute language="python">\nx\n</execute>']) == 2 / 8


def test_quality_checks_on_exports(converted):
    for harness in ("openhands", "sweagent"):
        for name in ("swe_gym", "swe_smith", "nebius_swe_agent", "agenttuning_os", "codeactinstruct"):
            records = [export_trajectory(t, harness, dataset=name) for t in converted[name]]
            report = check_conversations(records, harness)
            assert report.passed, (harness, name, report.as_dict())
    code_feedback = [export_trajectory(t, "openhands", dataset="code_feedback") for t in converted["code_feedback"]]
    report = check_conversations(code_feedback, "openhands")
    assert report.function_calls == 4 and report.calls_with_thought == 3  # 1 of 2 code calls + 2 finishes
    assert report.thought_coverage == 0.75 and not report.checks["thought_coverage"]
    assert report.checks["ends_with_completion"]
    # Record 102 is code then an answer with no execution result between: two calls in a row.
    assert report.alternation_failures == 1 and not report.checks["roles_alternate"]


def test_quality_checks_catch_problems():
    records = [
        {"conversations": [
            {"from": "human", "value": "task"},
            {"from": "function_call", "value": "<function=rm_rf>\n</function>"},
            {"from": "observation", "value": "done"},
            {"from": "observation", "value": "again"},
        ]}
    ]
    report = check_conversations(records, "openhands")
    assert report.unknown_functions == ["rm_rf"]
    assert report.alternation_failures == 1 and report.missing_observation_prefix == 1
    assert report.calls_with_thought == 0 and report.ending_with_completion == 0
    assert report.checks == {
        "roles_alternate": False,
        "known_functions": False,
        "thought_coverage": False,
        "ends_with_completion": False,
        "observation_prefix": False,
    }
