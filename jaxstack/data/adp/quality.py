"""SFT quality checks on exported OpenHands / SWE-agent conversations (ADP paper section 3.3).

Per dataset, over ShareGPT records ``{"conversations": [{"from", "value"}]}``:

* **roles alternate**: even positions are ``human`` / ``observation``, odd ones ``gpt`` /
  ``function_call``;
* **known functions**: every ``<function=NAME>`` names a tool of the harness;
* **thought coverage**: the share of function calls with non-blank text before ``<function=``;
  completion calls (``finish`` / ``submit``) count as having one, as in the reference checker;
  the dataset passes at >= 80 %;
* **ends with completion**: the last assistant turn is a ``finish`` / ``submit`` call; the
  dataset passes when > 80 % of conversations do, or when > 80 % are one-turn (2 messages);
* **observation prefix** (OpenHands only): every ``observation`` right after a function call
  starts ``EXECUTION RESULT of [<tool>]:``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from jaxstack.data.adp.exporters.openhands import OPENHANDS_TOOLS
from jaxstack.data.adp.exporters.sweagent import SWEAGENT_TOOLS

_FUNCTION_RE = re.compile(r"<function=([^>\s]+)>")
_COMPLETION = {"openhands": "finish", "sweagent": "submit"}
VALID_TOOLS = {"openhands": frozenset(OPENHANDS_TOOLS), "sweagent": frozenset(SWEAGENT_TOOLS)}
THOUGHT_THRESHOLD = 0.8
ENDING_THRESHOLD = 0.8


@dataclass
class QualityReport:
    """Counts and verdicts of the SFT checks for one dataset in one harness format."""

    harness: str
    conversations: int = 0
    alternation_failures: int = 0
    function_calls: int = 0
    calls_with_thought: int = 0
    function_names: dict[str, int] = field(default_factory=dict)
    unknown_functions: list[str] = field(default_factory=list)
    ending_with_completion: int = 0
    one_turn: int = 0
    missing_observation_prefix: int = 0

    @property
    def thought_coverage(self) -> float | None:
        """Share of function calls with a thought (``None`` without calls)."""
        return self.calls_with_thought / self.function_calls if self.function_calls else None

    @property
    def checks(self) -> dict[str, bool]:
        """Each check's verdict."""
        n = max(self.conversations, 1)
        return {
            "roles_alternate": self.alternation_failures == 0,
            "known_functions": not self.unknown_functions and self.function_calls > 0,
            "thought_coverage": (self.thought_coverage or 0.0) >= THOUGHT_THRESHOLD,
            "ends_with_completion": self.ending_with_completion / n > ENDING_THRESHOLD
            or self.one_turn / n > ENDING_THRESHOLD,
            "observation_prefix": self.missing_observation_prefix == 0,
        }

    @property
    def passed(self) -> bool:
        """Whether every check passes."""
        return all(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form with the derived values."""
        out = asdict(self)
        out.update(thought_coverage=self.thought_coverage, checks=self.checks, passed=self.passed)
        return out


def sft_record(value: Any) -> dict[str, Any]:
    """``value`` if it has the shape the checks read, ``{"conversations": [{"from": str, "value":
    str}, ...]}``; else ``ValueError`` naming the first offending field (``qc`` reports and skips
    such a row, stage ``SFT record``)."""
    if not isinstance(value, dict):
        raise ValueError(f'expected an object {{"conversations": [...]}}, got {type(value).__name__}')
    messages = value.get("conversations", [])
    if not isinstance(messages, list):
        raise ValueError(f"conversations: expected a list of messages, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f'conversations[{index}]: expected an object {{"from", "value"}}, '
                             f"got {type(message).__name__}")
        for key in ("from", "value"):
            if not isinstance(message.get(key, ""), str):
                raise ValueError(f"conversations[{index}].{key}: expected a string, "
                                 f"got {type(message[key]).__name__}")
    return value


def check_conversations(records: Iterable[dict[str, Any]], harness: str = "openhands") -> QualityReport:
    """Run the checks over exported records of one dataset (see the module docstring)."""
    if harness not in VALID_TOOLS:
        raise KeyError(f"unknown harness {harness!r}; expected one of {sorted(VALID_TOOLS)}")
    report = QualityReport(harness=harness)
    names: Counter[str] = Counter()
    unknown: set[str] = set()
    completion = _COMPLETION[harness]
    for record in records:
        messages = record.get("conversations", [])
        report.conversations += 1
        if len(messages) == 2:
            report.one_turn += 1
        alternates = True
        last_assistant_call = None
        previous_call = None
        for index, message in enumerate(messages):
            role, value = message.get("from"), message.get("value", "")
            expected = ("human", "observation") if index % 2 == 0 else ("gpt", "function_call")
            alternates &= role in expected
            match = _FUNCTION_RE.search(value) if role in ("gpt", "function_call") else None
            if role in ("gpt", "function_call"):
                last_assistant_call = match.group(1) if match else None
            if match:
                name = match.group(1)
                report.function_calls += 1
                names[name] += 1
                if name not in VALID_TOOLS[harness]:
                    unknown.add(name)
                if name in ("finish", "submit") or value[: match.start()].strip():
                    report.calls_with_thought += 1
            if (
                harness == "openhands"
                and role == "observation"
                and previous_call is not None
                and not value.startswith(f"EXECUTION RESULT of [{previous_call}]:")
            ):
                report.missing_observation_prefix += 1
            previous_call = match.group(1) if match else None
        report.alternation_failures += not alternates
        report.ending_with_completion += last_assistant_call == completion
    report.function_names = dict(sorted(names.items()))
    report.unknown_functions = sorted(unknown)
    return report
