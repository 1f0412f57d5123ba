"""ADP experiment: raw agent data -> ADP -> validation -> statistics -> SFT exports -> mixture.

``jaxstack run adp --preset data`` runs the model-free pipeline on the hand-written raw records in
``tests/fixtures/adp`` (seconds on a CPU) and writes to ``runs/adp/<stamp>/``:

* ``config.json``, ``summary.json`` (conversion success per dataset, Table-2 statistics, SFT quality
  checks per harness, mixture counts, the share of chat actions that parse back into ADP);
* ``std/<dataset>.jsonl`` (ADP), ``sft/<format>/<dataset>.jsonl`` (exports), ``stats.md``,
  ``mixture.chat.jsonl`` (the ``ceil(w * n)`` mixture of the chat exports).

The statistics describe the tiny hand-written samples, not the real datasets: they check the
definitions, they are not the paper's Table 2 (which is quoted in ``refs/agents.md``, not
reproduced).

The ``tiny`` and ``paper`` presets also fine-tune a jaxstack model on the chat exports (issue 6,
item 6). That stage needs the foundation trainer and model, which do not exist yet: after writing
the data record, ``run`` raises ``NotImplementedError`` naming them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxstack.data.adp import (
    DATASETS,
    ExportError,
    Trajectory,
    check_conversations,
    dataset_stats,
    export_trajectory,
    mixture_plan,
    overall,
    stats_table,
)
from jaxstack.data.adp.exporters.chat import chat_to_actions
from jaxstack.data.adp.mixture import PAPER_WEIGHTS, weight_for

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    """ADP experiment settings (serialised to ``config.json``)."""

    raw_dir: str = "tests/fixtures/adp"
    datasets: tuple[str, ...] = tuple(sorted(DATASETS))
    formats: tuple[str, ...] = ("openhands", "sweagent", "chat")
    schema_version: str = "1.0"
    seed: int = 0
    out_root: str = "runs/adp"
    train: bool = False
    # SFT settings for the training stage (used once the trainer exists).
    model_preset: str = "tiny"
    seq_len: int = 1024
    steps: int = 200
    learning_rate: float = 3e-4


PRESETS: dict[str, Config] = {
    "data": Config(),
    "tiny": Config(train=True),
    "paper": Config(train=True, model_preset="smollm2-135m", seq_len=4096, steps=2000),
}
"""Named configurations: ``data`` (model-free), ``tiny`` (CPU minutes), ``paper`` (accelerator)."""


def _resolve(path: str) -> Path:
    """``path`` itself when absolute, else relative to the repository root."""
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


def _convert(config: Config, run_dir: Path) -> tuple[dict[str, list[Trajectory]], dict[str, Any]]:
    trajectories, reports = {}, {}
    (run_dir / "std").mkdir(parents=True, exist_ok=True)
    errors = run_dir / "conversion_errors.txt"
    with open(errors, "w", encoding="utf-8") as err:
        for name in config.datasets:
            raw = _resolve(config.raw_dir) / f"{name}.raw.jsonl"
            out = io.StringIO()
            with open(raw, encoding="utf-8") as lines:
                report = DATASETS[name].convert_lines(lines, out, err, source=raw.name, version=config.schema_version)
            (run_dir / "std" / f"{name}.jsonl").write_text(out.getvalue(), encoding="utf-8")
            trajectories[name] = [Trajectory.model_validate_json(line) for line in out.getvalue().splitlines()]
            reports[name] = report.as_dict()
    return trajectories, reports


def _export(config: Config, run_dir: Path, trajectories: dict[str, list[Trajectory]]) -> dict[str, Any]:
    exported: dict[str, dict[str, list[dict[str, Any]]]] = {}
    failures: dict[str, dict[str, list[str]]] = {}
    for fmt in config.formats:
        (run_dir / "sft" / fmt).mkdir(parents=True, exist_ok=True)
        for name, items in trajectories.items():
            records = []
            for trajectory in items:
                try:
                    records.append(export_trajectory(trajectory, fmt, dataset=name))
                except ExportError as error:
                    failures.setdefault(fmt, {}).setdefault(name, []).append(f"{trajectory.id}: {error}")
            exported.setdefault(fmt, {})[name] = records
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (run_dir / "sft" / fmt / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return {"records": exported, "failures": failures}


def run(config: Config) -> Path:
    """Run the experiment; returns the run directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = _resolve(config.out_root) / stamp
    base, suffix = run_dir, 0
    while True:
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            suffix += 1
            run_dir = base.with_name(f"{base.name}-{suffix}")
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    trajectories, conversion = _convert(config, run_dir)
    per_dataset = {name: dataset_stats(items) for name, items in trajectories.items()}
    (run_dir / "stats.md").write_text(stats_table(per_dataset))
    exports = _export(config, run_dir, trajectories)

    quality = {}
    for harness in ("openhands", "sweagent"):
        if harness in exports["records"]:
            quality[harness] = {
                name: check_conversations(records, harness).as_dict()
                for name, records in exports["records"][harness].items()
                if records
            }

    chat = exports["records"].get("chat", {})
    actions = parsed = 0
    for records in chat.values():
        for record in records:
            actions += sum(m["role"] == "assistant" for m in record["messages"])
            parsed += len(chat_to_actions(record))
    sizes = {name: len(records) for name, records in chat.items()}
    plan = mixture_plan(sizes, PAPER_WEIGHTS, seed=config.seed)
    with open(run_dir / "mixture.chat.jsonl", "w", encoding="utf-8") as out:
        out.writelines(json.dumps(chat[name][index], ensure_ascii=False) + "\n" for name, index in plan)

    summary = {
        "note": "statistics of the hand-written fixture records, not of the real datasets",
        "conversion": conversion,
        "stats": {name: s.as_dict() for name, s in sorted(per_dataset.items())},
        "stats_overall": overall(per_dataset),
        "export_failures": exports["failures"],
        "quality": {h: {n: {"passed": r["passed"], "checks": r["checks"]} for n, r in q.items()} for h, q in quality.items()},
        "chat_action_parse_rate": parsed / actions if actions else None,
        "mixture": {
            name: {"n": sizes[name], "weight": weight_for(name, PAPER_WEIGHTS), "sampled": sum(1 for d, _ in plan if d == name)}
            for name in sorted(sizes)
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if config.train:
        # TODO(issue 6, item 6): Grain pipeline over sft/chat/*.jsonl (jaxstack.data.adp.sft builds
        # the masked, packed examples), then the foundation trainer on a jaxstack model; write
        # metrics.jsonl, the loss plot, held-out loss and the action-parse rate of generations.
        raise NotImplementedError(
            "ADP SFT training needs the foundation trainer (jaxstack.train) and a jaxstack model "
            f"(jaxstack.models); the data record is in {run_dir}. Use --preset data meanwhile."
        )
    return run_dir


if __name__ == "__main__":
    print(run(PRESETS["data"]))
