"""AgentInstruct (THUDM/AgentInstruct, "AgentTuning"): the OS and DB subsets.

Raw shape: ``{id, conversations: [{role, content}]}`` (ShareGPT ``{from, value}`` also accepted).

OS subset. The task turn contains ``... My problem is:`` followed by the problem; earlier turns (the
instructions and a worked example) are dropped. Agent turns are ``Think: <thought>\\n\\nAct: <act>``
with ``<act>`` one of ``bash`` + a fenced bash block (-> ``CodeAction(bash)``), ``answer(<x>)``
(-> ``MessageAction("<solution> x </solution>")``) or ``finish`` (-> ``<finish> </finish>``). User
turns ``The output of the OS:\\n...`` are environment observations.

DB subset. A leading instruction turn answered by a short acknowledgement (``"Ok."``) is dropped;
the next user turn is the task. Agent turns are ``<thought>\\nAction: Operation`` + a fenced
``sql`` block (-> ``CodeAction(sql)``) or ``Action: Answer\\nFinal Answer: <x>`` (-> a solution
message). A user turn that follows an operation is the database's output (environment).

In both subsets the final solution message is wrapped as ``<finish> <solution> x </solution>
</finish>``.
"""

from __future__ import annotations

import re

from jaxstack.data.adp.datasets.base import Conversation, DatasetSpec
from jaxstack.data.adp.schema import (
    CodeAction,
    MessageAction,
    TextObservation,
    Trajectory,
    finish_message,
)
from jaxstack.data.adp.stream import ConversionError

SOLUTION_HINT = (
    "When you know the answer, reply with <solution> your answer </solution>; when the task "
    "needs no answer, say that you are done."
)

_THINK_ACT_RE = re.compile(r"^\s*Think:\s*(.*?)\s*\n\s*\nAct:\s*(.*)$", re.DOTALL)
_BASH_RE = re.compile(r"^bash\s*\n+\s*```(?:bash|sh)?\s*\n(.*?)\n?```", re.DOTALL)
_ANSWER_RE = re.compile(r"^answer\((.*)\)\s*$", re.DOTALL)
_OS_OUTPUT_PREFIX = "The output of the OS:"
_PROBLEM_RE = re.compile(r"my problem is:\s*", re.IGNORECASE)


def _wrap_solution(content: list) -> list:
    last = content[-1] if content else None
    if isinstance(last, MessageAction) and last.content.startswith("<solution>"):
        content[-1] = MessageAction(
            content=f"<finish> {last.content} </finish>", description=last.description
        )
    return content


def convert_os(raw: Conversation) -> Trajectory:
    """Convert one AgentInstruct-OS record (see the module docstring)."""
    turns = raw.conversations
    start, task = None, None
    for index, turn in enumerate(turns):
        if turn.role == "user":
            matches = list(_PROBLEM_RE.finditer(turn.content))
            if matches:
                start, task = index, turn.content[matches[-1].end() :].strip()
    if start is None:
        start = next((i for i, turn in enumerate(turns) if turn.role == "user"), None)
        if start is None:
            raise ConversionError("conversations has no user turn holding the task")
        task = turns[start].content.strip()
    content: list = [TextObservation(content=f"{task}\n\n{SOLUTION_HINT}", source="user")]
    for index in range(start + 1, len(turns)):
        turn = turns[index]
        if turn.role == "assistant":
            match = _THINK_ACT_RE.match(turn.content)
            if not match:
                raise ConversionError(
                    f"conversations[{index}]: agent turn must read 'Think: ...\\n\\nAct: ...'"
                )
            thought, act = match.group(1).strip() or None, match.group(2).strip()
            if bash := _BASH_RE.match(act):
                content.append(CodeAction(language="bash", content=bash.group(1), description=thought))
            elif answer := _ANSWER_RE.match(act):
                content.append(
                    MessageAction(
                        content=f"<solution> {answer.group(1).strip()} </solution>",
                        description=thought,
                    )
                )
            elif act == "finish":
                content.append(finish_message("", description=thought))
            else:
                raise ConversionError(
                    f"conversations[{index}]: 'Act:' must be followed by a bash block, "
                    f"answer(...) or finish; got {act[:40]!r}"
                )
        elif turn.content.startswith(_OS_OUTPUT_PREFIX):
            output = turn.content[len(_OS_OUTPUT_PREFIX) :].lstrip("\n")
            content.append(TextObservation(content=output, source="environment"))
        else:
            content.append(TextObservation(content=turn.content, source="user"))
    return Trajectory(id=raw.id, content=_wrap_solution(content), details={"subset": "os"})


_DB_ACTION_RE = re.compile(r"^(.*?)\s*Action:\s*(Operation|Answer)\s*\n(.*)$", re.DOTALL)
_SQL_RE = re.compile(r"```(?:sql|mysql)?\s*\n(.*?)\n?```", re.DOTALL)
_FINAL_ANSWER_RE = re.compile(r"Final Answer:\s*(.*)$", re.DOTALL)


def convert_db(raw: Conversation) -> Trajectory:
    """Convert one AgentInstruct-DB record (see the module docstring)."""
    turns = raw.conversations
    start = 0
    if (
        len(turns) >= 3
        and turns[0].role == "user"
        and turns[1].role == "assistant"
        and len(turns[1].content.strip()) < 40
        and "Action:" not in turns[1].content
    ):
        start = 2
    if turns[start].role != "user":
        raise ConversionError(f"conversations[{start}] must be the user turn holding the task")
    content: list = [TextObservation(content=turns[start].content.strip(), source="user")]
    for index in range(start + 1, len(turns)):
        turn = turns[index]
        if turn.role == "assistant":
            match = _DB_ACTION_RE.match(turn.content)
            if not match:
                raise ConversionError(
                    f"conversations[{index}]: agent turn must contain 'Action: Operation' or "
                    "'Action: Answer'"
                )
            thought, kind, rest = match.group(1).strip() or None, match.group(2), match.group(3)
            if kind == "Operation":
                sql = _SQL_RE.search(rest)
                if not sql:
                    raise ConversionError(
                        f"conversations[{index}]: 'Action: Operation' needs a fenced sql block"
                    )
                content.append(CodeAction(language="sql", content=sql.group(1), description=thought))
            else:
                answer = _FINAL_ANSWER_RE.search(rest)
                if not answer:
                    raise ConversionError(
                        f"conversations[{index}]: 'Action: Answer' needs 'Final Answer: ...'"
                    )
                content.append(
                    MessageAction(
                        content=f"<solution> {answer.group(1).strip()} </solution>",
                        description=thought,
                    )
                )
        else:
            after_code = isinstance(content[-1], CodeAction)
            content.append(
                TextObservation(
                    content=turn.content, source="environment" if after_code else "user"
                )
            )
    return Trajectory(id=raw.id, content=_wrap_solution(content), details={"subset": "db"})


OS_SPEC = DatasetSpec(
    name="agenttuning_os",
    raw_model=Conversation,
    convert=convert_os,
    source="THUDM/AgentInstruct (os)",
)
DB_SPEC = DatasetSpec(
    name="agenttuning_db",
    raw_model=Conversation,
    convert=convert_db,
    source="THUDM/AgentInstruct (db)",
)
