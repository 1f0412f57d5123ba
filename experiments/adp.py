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

The ``tiny`` and ``paper`` presets also fine-tune a jaxstack model on the mixed chat exports
(issue 6, item 6; :func:`jaxstack.data.adp.sft_run.train_chat_sft`): a held-out split by record id,
ChatML with the loss on assistant tokens only, packing with segment ids / positions, a Grain
iterator into the foundation trainer, then greedy replies sampled for held-out and training turns
before and after training and parsed back into ADP actions. Written under ``<run>/sft_train/``:
``metrics.jsonl``, ``loss.png``, ``samples.jsonl``, ``sft_summary.json``, ``hf/`` and
``tokenizer.json``; the headline numbers are copied into ``summary.json["sft"]``.

* ``tiny`` (CPU, a few minutes): a ~0.7M-parameter SmolLM2-shaped model from scratch with a
  byte-level BPE trained on the exported training text. The fixture data are ~10 trajectories
  (~6k tokens), so this is a *toy*: it shows the pipeline runs, the loss falls and the replies
  acquire the action format; held-out numbers over 2-3 records measure nothing about agents.
* ``paper`` (accelerator): SmolLM2-135M-shaped, fine-tuned from a local Hugging Face directory
  given as ``--init_from=DIR`` (parameters via ``train.init_from``, ``tokenizer.json`` from the
  same directory); point ``--raw_dir`` at real raw dataset files. The ADP paper's gains (e.g.
  SWE-Bench Verified 0.4 -> 20.2 for Qwen2.5-Coder-7B, arXiv 2510.24702) are not reproduced here.
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
from jaxstack.data.adp.exporters.chat import (
    ActionParseError,
    chat_to_actions,
    parse_action,
)
from jaxstack.data.adp.mixture import PAPER_WEIGHTS, weight_for
from jaxstack.data.adp.schema import ApiAction, CodeAction
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


# ~0.7M parameters: SmolLM2-shaped (GQA 2:1, tied embeddings), vocab filled by the BPE.
TINY_MODEL = get_config("smollm2-tiny", vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=3,
                        num_heads=4, num_kv_heads=2, max_position_embeddings=1024)
# 60 steps x 2 rows x 1024 tokens (~25 passes over the ~5k training tokens): ~2-4 minutes on 2 CPU cores.
TINY_TRAIN = TrainConfig(steps=60, batch_size=2, seq_len=1024, log_every=2, eval_every=10, eval_batches=4,
                         checkpoint_every=60, keep_checkpoints=1)
TINY_OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=20, decay_fraction=0.2)


@dataclass(frozen=True)
class Config:
    """ADP experiment settings (serialised to ``config.json``).

    Training stage (``train=True``): ``model`` / ``trainer`` / ``optimizer`` go to the foundation
    trainer (``trainer.seq_len`` is the packed row length); ``init_from`` is a local HF directory
    whose parameters and ``tokenizer.json`` start the run (its config.json then defines the model
    shape; ``model`` only contributes execution fields such as ``scan_layers``); ``eval_fraction``
    of the record ids are held out; ``max_prompts`` replies of at most ``max_new_tokens`` tokens
    are sampled per split for the action-parse rate.
    """

    raw_dir: str = "tests/fixtures/adp"
    datasets: tuple[str, ...] = tuple(sorted(DATASETS))
    formats: tuple[str, ...] = ("openhands", "sweagent", "chat")
    schema_version: str = "1.0"
    seed: int = 0
    out_root: str = "runs/adp"
    train: bool = False
    model: LlamaConfig = TINY_MODEL
    trainer: TrainConfig = TINY_TRAIN
    optimizer: OptimizerConfig = TINY_OPTIMIZER
    init_from: str | None = None
    eval_fraction: float = 0.3
    max_new_tokens: int = 64
    max_prompts: int = 16
    show_progress: bool = True


PRESETS: dict[str, Config] = {
    "data": Config(),
    "tiny": Config(train=True),
    "paper": Config(
        train=True,
        model=get_config("smollm2-135m", scan_layers=True),
        trainer=TrainConfig(steps=2000, batch_size=16, seq_len=4096, log_every=20, eval_every=200,
                            eval_batches=8, checkpoint_every=500, policy="bf16-mixed"),
        optimizer=OptimizerConfig(learning_rate=2e-5, schedule="cosine", warmup_steps=100, weight_decay=0.0),
        max_new_tokens=512, max_prompts=256,
    ),
}
"""Named configurations: ``data`` (model-free), ``tiny`` (CPU minutes), ``paper`` (accelerator, needs
``--init_from=DIR``)."""


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


def classify_action(text: str, record: dict | None = None, turn: int | None = None) -> str:
    """The ADP action kind of assistant ``text``: ``api_action``, ``code_action``, ``finish`` (a
    message holding ``<finish>``) or ``message``. Raises ActionParseError (a ValueError) when it
    does not parse. Note that any other non-empty text parses as a message action, so the parse
    rate is lenient; the kind match against the reference reply is the stricter number."""
    del record, turn
    action = parse_action(text)
    if isinstance(action, ApiAction):
        return "api_action"
    if isinstance(action, CodeAction):
        return "code_action"
    if "<finish>" in action.content:
        if "</finish>" not in action.content:
            raise ActionParseError("<finish> is not closed by </finish>")
        return "finish"
    return "message"


def _check_train_config(config: Config) -> None:
    if config.init_from is None and config.model.num_params() > 50_000_000:
        raise ValueError(
            f"init_from: this preset fine-tunes a {config.model.num_params() / 1e6:.0f}M-parameter model and needs a "
            "local Hugging Face model directory (config.json, model.safetensors, tokenizer.json), e.g. "
            "--init_from=/models/SmolLM2-135M-Instruct"
        )
    if config.init_from is not None and not (Path(config.init_from) / "tokenizer.json").is_file():
        raise ValueError(f"init_from: {config.init_from} has no tokenizer.json (the SFT data are tokenised with it)")


def _train_sft(config: Config, run_dir: Path) -> dict[str, Any]:
    from jaxstack.data.adp.sft import split_records
    from jaxstack.data.adp.sft_run import train_chat_sft
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.models.hf import config_from_hf

    records = [json.loads(line) for line in (run_dir / "mixture.chat.jsonl").read_text().splitlines() if line.strip()]
    train_records, eval_records = split_records(records, config.eval_fraction, seed=config.seed)
    model, trainer, tokenizer = config.model, config.trainer, None
    if config.init_from is not None:
        hf = json.loads((Path(config.init_from) / "config.json").read_text())
        model = config_from_hf(hf, scan_layers=model.scan_layers, remat=model.remat,
                               attention_implementation=model.attention_implementation)
        trainer = dataclasses.replace(trainer, init_from=str(config.init_from))
        tokenizer = load_tokenizer(config.init_from)
    summary = train_chat_sft(
        train_records, eval_records, model_config=model, train_config=trainer, optimizer_config=config.optimizer,
        run_dir=run_dir / "sft_train", classify=classify_action, tokenizer=tokenizer, tokenizer_name="adp-chat",
        max_new_tokens=config.max_new_tokens, max_prompts=config.max_prompts,
        extra_config={"experiment": "adp", "heldout_ids": sorted({str(r["id"]) for r in eval_records})},
        show_progress=config.show_progress,
    )
    summary["label"] = ("toy: a tiny model trained on the hand-written fixture trajectories; shows the pipeline "
                        "and the format being learned, not agent ability"
                        if config.init_from is None else "fine-tuned from " + str(config.init_from))
    return summary


def run(config: Config) -> Path:
    """Run the experiment; returns the run directory."""
    if config.train:
        _check_train_config(config)
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
        sft = _train_sft(config, run_dir)
        summary["sft"] = {k: sft[k] for k in ("label", "model", "data", "steps", "train_loss_first", "train_loss_last",
                                              "heldout_loss_initial", "heldout_loss_final", "parse_before",
                                              "parse_after", "durations_s", "files")}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        after, before = sft["parse_after"], sft["parse_before"]
        print(f"[adp] {summary['sft']['label']}")
        print(f"[adp] train loss {sft['train_loss_first']:.3f} -> {sft['train_loss_last']:.3f} over {sft['steps']} steps; "
              f"held-out loss {sft['heldout_loss_initial']:.3f} -> {sft['heldout_loss_final']:.3f}")
        for split in ("heldout", "train"):
            b, a = before.get(split, {}), after[split]
            print(f"[adp] {split} replies (n={a['n']}): valid {b.get('valid', float('nan')):.2f} -> {a['valid']:.2f}, "
                  f"kind match {b.get('kind_match', float('nan')):.2f} -> {a['kind_match']:.2f}, "
                  f"exact {b.get('exact', float('nan')):.2f} -> {a['exact']:.2f}")
        print(f"[adp] loss plot {sft['files']['loss_plot']}; run {run_dir}")
    return run_dir


if __name__ == "__main__":
    print(run(PRESETS["data"]))
