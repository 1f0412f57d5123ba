"""Per-dataset statistics of ADP trajectories, with the definitions of the ADP paper's Table 2.

For one dataset:

* ``avg_rounds``: the mean number of actions (agent turns) per trajectory;
* ``action_shares``: the share (%) of ``api`` / ``code`` / ``message`` actions among all actions
  of the dataset (pooled over its trajectories);
* ``thought_coverage``: the share (%) of function calls (api and code actions) whose
  ``description`` is non-blank; ``None`` when there are no function calls.

The paper's "Overall" row is the unweighted mean of the per-dataset values (its 10.1 average rounds
is the mean of the 13 rows), which :func:`overall` reproduces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jaxstack.data.adp.schema import ApiAction, CodeAction, MessageAction, Trajectory


@dataclass(frozen=True)
class DatasetStats:
    """Table-2 statistics of one dataset."""

    trajectories: int
    actions: int
    api_actions: int
    code_actions: int
    message_actions: int
    function_calls_with_thought: int

    @property
    def avg_rounds(self) -> float | None:
        """Mean actions per trajectory."""
        return self.actions / self.trajectories if self.trajectories else None

    @property
    def action_shares(self) -> dict[str, float | None]:
        """Percentages of api / code / message actions."""
        total = self.actions
        return {
            kind: (100.0 * count / total if total else None)
            for kind, count in (
                ("api", self.api_actions),
                ("code", self.code_actions),
                ("message", self.message_actions),
            )
        }

    @property
    def thought_coverage(self) -> float | None:
        """Percentage of api + code actions with a non-blank description."""
        calls = self.api_actions + self.code_actions
        return 100.0 * self.function_calls_with_thought / calls if calls else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form with the derived values."""
        return {
            "trajectories": self.trajectories,
            "actions": self.actions,
            "avg_rounds": self.avg_rounds,
            "action_shares": self.action_shares,
            "thought_coverage": self.thought_coverage,
        }


def dataset_stats(trajectories: Iterable[Trajectory]) -> DatasetStats:
    """Count actions and thoughts over one dataset's trajectories."""
    n = actions = api = code = message = with_thought = 0
    for trajectory in trajectories:
        n += 1
        for item in trajectory.content:
            if isinstance(item, ApiAction):
                api += 1
            elif isinstance(item, CodeAction):
                code += 1
            elif isinstance(item, MessageAction):
                message += 1
            else:
                continue
            actions += 1
            if isinstance(item, (ApiAction, CodeAction)) and (item.description or "").strip():
                with_thought += 1
    return DatasetStats(n, actions, api, code, message, with_thought)


def overall(per_dataset: Mapping[str, DatasetStats]) -> dict[str, Any]:
    """The unweighted mean over datasets of each Table-2 value (``None`` values are left out)."""

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    stats = list(per_dataset.values())
    return {
        "datasets": len(stats),
        "avg_rounds": mean([s.avg_rounds for s in stats]),
        "action_shares": {
            kind: mean([s.action_shares[kind] for s in stats]) for kind in ("api", "code", "message")
        },
        "thought_coverage": mean([s.thought_coverage for s in stats]),
    }


def stats_table(per_dataset: Mapping[str, DatasetStats]) -> str:
    """A Markdown table in the layout of the paper's Table 2 (datasets sorted by name)."""

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| dataset | trajectories | avg rounds | A/C/M % | thought % |", "|---|---|---|---|---|"]
    for name in sorted(per_dataset):
        s = per_dataset[name]
        shares = "/".join(fmt(s.action_shares[k], 0) for k in ("api", "code", "message"))
        lines.append(
            f"| {name} | {s.trajectories} | {fmt(s.avg_rounds)} | {shares} | {fmt(s.thought_coverage)} |"
        )
    total = overall(per_dataset)
    shares = "/".join(fmt(total["action_shares"][k], 0) for k in ("api", "code", "message"))
    lines.append(
        f"| **overall (mean)** | {sum(s.trajectories for s in per_dataset.values())} | "
        f"{fmt(total['avg_rounds'])} | {shares} | {fmt(total['thought_coverage'])} |"
    )
    return "\n".join(lines) + "\n"
