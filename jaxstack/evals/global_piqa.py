"""Global PIQA (Chang, Arnett et al., arXiv 2510.24081): loading, cloze and prompted evaluation, reports.

**Accepted local layout** (the published Hugging Face layout, one directory per variety config)::

    DATA/
      eng_latn/test.jsonl                       # JSON Lines, one item per line
      cmn_hans/test-00000-of-00001.parquet      # or Parquet shards (HF's layout; needs pyarrow)
      apc_arab_jord/test/part-0.jsonl           # or a test/ directory of such files
      dev_xxx/...                               # configs starting with "dev" are skipped (as lm-eval)

A variety directory name is ``<iso639-3>_<script>[_<variety>...]`` in lowercase (``eng_latn``,
``srp_cyrl_torl``); the script is its second part. The ``test`` split is every ``.jsonl`` / ``.json`` /
``.parquet`` file whose name starts with ``test`` (or every such file under ``test/``). Records
have ``prompt``, ``solution0``, ``solution1`` and ``label`` (an int index); the parallel variant adds
``solution2`` and ``solution3``. ``DATA`` may also be a single variety directory.

Formats (lm-eval's ``global_piqa_{nonparallel,parallel}_{cloze,generation}``):

* **cloze** (base models): context ``prompt``, choices ``" " + solution_i``; acc, acc_norm, acc_bytes.
* **prompted** (instruct models): the harness's instruction prompt, a sampled answer (T=0.8,
  top_p=0.95), the harness's answer-extraction regex, exact match against ``A``/``B`` (``A``-``D``).

Reports: per variety, per script (macro-average over that script's varieties) and the macro-average
over varieties (lm-eval's group mean, unweighted), as JSON, a markdown table and a bar plot sorted by
accuracy.

Global PIQA is licensed for evaluation only; :mod:`jaxstack.data.guard` keeps it out of training.
"""

from __future__ import annotations

import json
import pathlib
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxstack.evals.multiple_choice import (
    MultipleChoiceItem,
    evaluate_multiple_choice,
    mean_stderr,
)
from jaxstack.evals.tasks import (
    DATA_SUFFIXES,
    GLOBAL_PIQA_NONPARALLEL_CLOZE,
    GLOBAL_PIQA_PARALLEL_CLOZE,
    TaskDataError,
    read_records,
)

VARIETY_PATTERN = re.compile(r"^[a-z]{3}_[a-z]{4}(?:_[a-z0-9]+)*$")
VARIANTS = ("auto", "nonparallel", "parallel")
FORMATS = ("cloze", "prompted")

NONPARALLEL_PROMPT = (
    "Given the following situation, which option is more likely to be correct?\n\nSituation:\n{prompt} ...\n\n"
    "Option A: {solution0}\n\nOption B: {solution1}\n\n"
    'Your response should end with "The best answer is: [answer_letter]" where [answer_letter] is one of A or B.'
)
PARALLEL_PROMPT = (
    "{prompt}\n\nOption A: {solution0}\n\nOption B: {solution1}\n\nOption C: {solution2}\n\nOption D: {solution3}\n\n"
    'Your response should end with "The best answer is: [answer_letter]" where [answer_letter] is one of '
    "A, B, C, or D."
)
# lm-eval's filter regex (group_select -1, take_first); [A-B] or [A-D] by variant.
ANSWER_REGEX = (
    r"[Tt]he (?:[Bb]est [Aa]nswer|[Ff]inal [Aa]nswer|[Aa]nswer)[^A-{last}]*([A-{last}])"
    r"|[Aa]nswer\s*:[^A-{last}]*([A-{last}])|\\boxed\{{([A-{last}])\}}"
)
# lm-eval's generation_kwargs for these tasks
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 2048}


def script_of(variety: str) -> str:
    """``apc_arab_jord`` -> ``arab``."""
    parts = variety.split("_")
    if len(parts) < 2:
        raise ValueError(f"variety: expected <language>_<script>[_<variety>], got {variety!r}")
    return parts[1]


def _test_files(directory: pathlib.Path) -> list[pathlib.Path]:
    test_dir = directory / "test"
    if test_dir.is_dir():
        files = [p for p in test_dir.rglob("*") if p.suffix in DATA_SUFFIXES]
    else:
        files = [p for p in directory.iterdir() if p.is_file() and p.name.startswith("test")
                 and p.suffix in DATA_SUFFIXES]
    return sorted(files)


def variety_dirs(path: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """{variety: directory} under a Global PIQA root (or the single variety directory ``path``)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise TaskDataError(f"{path}: does not exist (expected a Global PIQA directory with one sub-directory "
                            "per variety, e.g. eng_latn/test.jsonl)")
    if not path.is_dir():
        raise TaskDataError(f"{path}: expected a directory, got a file")
    if VARIETY_PATTERN.match(path.name) and _test_files(path):
        return {path.name: path}
    found = {p.name: p for p in sorted(path.iterdir())
             if p.is_dir() and VARIETY_PATTERN.match(p.name) and not p.name.startswith("dev")}
    if not found:
        raise TaskDataError(f"{path}: no variety directories (names like eng_latn, cmn_hans, apc_arab_jord)")
    return found


def load_global_piqa(path: str | pathlib.Path, *, variant: str = "auto",
                     varieties: Sequence[str] | None = None) -> dict[str, list[MultipleChoiceItem]]:
    """{variety: items} from the local layout (module docstring). Items' meta: variety, script, index, record.

    variant: ``nonparallel`` (2 choices), ``parallel`` (4 choices) or ``auto`` (4 if ``solution3`` is present).
    varieties: restrict to these configs (error if one is missing).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    dirs = variety_dirs(path)
    if varieties is not None:
        unknown = sorted(set(varieties) - set(dirs))
        if unknown:
            raise TaskDataError(f"{path}: varieties {unknown} not found; available: {sorted(dirs)}")
        dirs = {v: dirs[v] for v in varieties}
    out: dict[str, list[MultipleChoiceItem]] = {}
    for variety, directory in dirs.items():
        files = _test_files(directory)
        if not files:
            raise TaskDataError(f"{directory}: no test split (expected test.jsonl, test-*.parquet or test/*.jsonl)")
        records = [r for f in files for r in read_records(f)]
        if not records:
            raise TaskDataError(f"{directory}: the test split is empty")
        chosen = variant
        if chosen == "auto":
            chosen = "parallel" if "solution3" in records[0] else "nonparallel"
        task = GLOBAL_PIQA_PARALLEL_CLOZE if chosen == "parallel" else GLOBAL_PIQA_NONPARALLEL_CLOZE
        items = []
        for index, record in enumerate(records):
            meta = {"variety": variety, "script": script_of(variety), "index": index, "variant": chosen,
                    "record": {k: record[k] for k in ("prompt", *task.choice_fields, "label") if k in record}}
            items.append(task.to_item(record, where=f"{directory}[{index}]", meta=meta))
        out[variety] = items
    return out


# ----------------------------------------------------------------------------------------------------
# Prompted (generation) format


def prompted_text(item: MultipleChoiceItem) -> str:
    """The harness's instruction prompt for one item (2 or 4 options)."""
    record = item.meta.get("record") or {"prompt": item.context,
                                         **{f"solution{i}": c for i, c in enumerate(item.choices)}}
    template = PARALLEL_PROMPT if len(item.choices) == 4 else NONPARALLEL_PROMPT
    if len(item.choices) not in (2, 4):
        raise ValueError(f"prompted format: expected 2 or 4 choices, got {len(item.choices)}")
    return template.format(**record)


def extract_answer(response: str, num_choices: int = 2) -> str:
    """lm-eval's regex filter: the last match's first non-empty group, stripped; ``[invalid]`` if none."""
    last = "ABCD"[num_choices - 1]
    matches = re.findall(ANSWER_REGEX.format(last=last), response)
    if not matches:
        return "[invalid]"
    match = matches[-1]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def _normalise(text: str) -> str:
    """exact_match with ignore_case and ignore_punctuation."""
    return text.lower().translate(str.maketrans("", "", string.punctuation))


def score_prompted(items: Sequence[MultipleChoiceItem], responses: Sequence[str]) -> dict[str, Any]:
    """exact_match of the extracted letter against ``ABCD[label]``, with records."""
    if len(items) != len(responses):
        raise ValueError(f"responses: {len(responses)} for {len(items)} items")
    records = []
    for item, response in zip(items, responses):
        answer = extract_answer(response, len(item.choices))
        target = "ABCD"[item.label]
        correct = _normalise(answer) == _normalise(target)
        records.append({"response": response, "extracted": answer, "target": target, "correct": correct,
                        "exact_match": float(correct), "label": item.label, "meta": dict(item.meta)})
    values = [r["exact_match"] for r in records]
    return {"n": len(items), "exact_match": float(np.mean(values)), "exact_match_stderr": mean_stderr(values),
            "records": records}


def generate_responses(model, tokenizer, prompts: Sequence[str], *, chat: bool = True, temperature: float = 0.8,
                       top_p: float = 0.95, max_new_tokens: int = 2048, batch_size: int = 8, seed: int = 0,
                       progress: bool = True) -> list[str]:
    """Sampled responses from an in-process jaxstack model (ChatML-wrapped when ``chat``)."""
    from tqdm.auto import tqdm

    from jaxstack.data.chat import apply_chat_template
    from jaxstack.inference.sampler import SamplingConfig, generate

    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop_tokens=tuple(t for t in (tokenizer.eos_id, _im_end(tokenizer)) if t is not None))
    template = getattr(tokenizer, "chat_template", None)
    texts = [apply_chat_template([{"role": "user", "content": p}], template) if chat else p for p in prompts]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    responses = []
    for start in tqdm(range(0, len(texts), batch_size), desc="generating", disable=not progress):
        batch = [tokenizer.encode(t) or [tokenizer.eos_id] for t in texts[start:start + batch_size]]
        longest = max(len(ids) for ids in batch)
        if context is not None and longest + max_new_tokens > context:
            raise ValueError(f"max_new_tokens: a {longest}-token prompt + {max_new_tokens} new tokens exceed the "
                             f"model's context of {context}; lower --max-new-tokens")
        result = generate(model, batch, config, seed=seed + start)
        for row in range(len(batch)):
            n = int(result.lengths[row])
            ids = [t for t in result.tokens[row, :n].tolist() if t not in config.stop_tokens]
            responses.append(tokenizer.decode(ids))
    return responses


def _im_end(tokenizer) -> int | None:
    backend = getattr(tokenizer, "backend", None)
    return None if backend is None else backend.token_to_id("<|im_end|>")


# ----------------------------------------------------------------------------------------------------
# Running and reporting


def evaluate_global_piqa(model, tokenizer, data: dict[str, list[MultipleChoiceItem]], *, format: str = "cloze",
                         batch_size: int = 16, progress: bool = True, responses: Sequence[str] | None = None,
                         generation: dict | None = None) -> dict[str, Any]:
    """Scores every variety and returns ``{"format", "varieties": {v: metrics}, "scripts", "macro"}``.

    model: a jaxstack model or a backend with ``loglikelihoods`` (cloze) / ``complete`` (prompted).
    All cloze items are scored in one batched pass, then split by variety.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    all_items = [item for items in data.values() for item in items]
    if not all_items:
        raise ValueError("data: no items")
    if format == "cloze":
        result = evaluate_multiple_choice(model, tokenizer, all_items, batch_size=batch_size, progress=progress)
        metric_names = ("acc", "acc_norm", "acc_bytes")
    else:
        if responses is None:
            settings = {**GENERATION_DEFAULTS, **(generation or {})}
            prompts = [prompted_text(item) for item in all_items]
            if callable(getattr(model, "complete_chat", None)):
                responses = model.complete_chat(prompts, **settings)
            else:
                responses = generate_responses(model, tokenizer, prompts, batch_size=batch_size, progress=progress,
                                               **settings)
        result = score_prompted(all_items, responses)
        metric_names = ("exact_match",)
    by_variety: dict[str, list[dict]] = {}
    for record in result["records"]:
        by_variety.setdefault(record["meta"]["variety"], []).append(record)
    varieties = {}
    for variety, records in by_variety.items():
        row: dict[str, Any] = {"variety": variety, "script": script_of(variety), "n": len(records)}
        for name in metric_names:
            values = [r[name] for r in records]
            row[name] = float(np.mean(values))
            row[f"{name}_stderr"] = mean_stderr(values)
        varieties[variety] = row
    scripts: dict[str, dict[str, Any]] = {}
    for script in sorted({row["script"] for row in varieties.values()}):
        rows = [row for row in varieties.values() if row["script"] == script]
        scripts[script] = {"script": script, "varieties": len(rows), "n": sum(r["n"] for r in rows),
                           **{name: float(np.mean([r[name] for r in rows])) for name in metric_names}}
    macro = {"varieties": len(varieties), "n": len(all_items),
             **{name: float(np.mean([r[name] for r in varieties.values()])) for name in metric_names}}
    return {"format": format, "metrics": list(metric_names), "varieties": varieties, "scripts": scripts,
            "macro": macro, "records": result["records"], "n_truncated": result.get("n_truncated", 0)}


def markdown_report(report: dict[str, Any]) -> str:
    """Per-variety table (sorted by the first metric, descending), per-script table, macro average."""
    names = report["metrics"]
    key = names[0]
    lines = [f"## Global PIQA ({report['format']})", "",
             "| variety | script | n | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for row in sorted(report["varieties"].values(), key=lambda r: (-r[key], r["variety"])):
        cells = " | ".join(f"{row[n]:.3f} ± {row[n + '_stderr']:.3f}" for n in names)
        lines.append(f"| {row['variety']} | {row['script']} | {row['n']} | {cells} |")
    lines += ["", "| script | varieties | n | " + " | ".join(names) + " (macro) |",
              "|---|---:|---:|" + "---:|" * len(names)]
    for row in sorted(report["scripts"].values(), key=lambda r: (-r[key], r["script"])):
        lines.append(f"| {row['script']} | {row['varieties']} | {row['n']} | "
                     + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    macro = report["macro"]
    lines += ["", f"Macro-average over {macro['varieties']} varieties ({macro['n']} items): "
              + ", ".join(f"{n} {macro[n]:.3f}" for n in names)]
    if report.get("n_truncated"):
        lines.append(f"\n{report['n_truncated']} requests were truncated from the left to fit the model's context.")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | pathlib.Path, *, chance: float | None = None) -> pathlib.Path:
    """Horizontal bars per variety, one panel per metric (acc, acc_norm, acc_bytes or exact_match),
    varieties sorted by the first metric, coloured by script, ± stderr, a dashed line at chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["metrics"]
    key = names[0]
    rows = sorted(report["varieties"].values(), key=lambda r: (r[key], r["variety"]))
    scripts = sorted({r["script"] for r in rows})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(scripts)}
    if chance is None:  # 1 / number of options
        parallel = any(r["meta"].get("variant") == "parallel" for r in report.get("records", []))
        chance = 0.25 if parallel else 0.5
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1.5, max(2.5, 0.32 * len(rows) + 1.4)),
                             sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        errors = [0.0 if np.isnan(r[f"{name}_stderr"]) else r[f"{name}_stderr"] for r in rows]
        ax.barh([r["variety"] for r in rows], [r[name] for r in rows], xerr=errors,
                color=[colours[r["script"]] for r in rows], capsize=2)
        chance_line = ax.axvline(chance, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"{name} (macro {report['macro'][name]:.3f})", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in scripts] + [chance_line]
    # outside the panels, so that no bar is hidden behind it
    axes[0][-1].legend(handles, scripts + [f"chance {chance:.2f}"], loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       fontsize=8, title="script", title_fontsize=8)
    fig.suptitle(f"Global PIQA ({report['format']}): {len(rows)} varieties, sorted by {key}, ± stderr")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes ``report.json`` (summary), ``records.jsonl`` (per item), ``report.md`` and ``accuracy.png``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in report.items() if k != "records"}
    paths = {"json": out / "report.json", "records": out / "records.jsonl", "markdown": out / "report.md",
             "plot": out / "accuracy.png"}
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(paths["records"], "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in report["records"])
    paths["markdown"].write_text(markdown_report(report), encoding="utf-8")
    plot_report(report, paths["plot"])
    return paths


__all__ = [
    "ANSWER_REGEX",
    "NONPARALLEL_PROMPT",
    "PARALLEL_PROMPT",
    "evaluate_global_piqa",
    "extract_answer",
    "generate_responses",
    "load_global_piqa",
    "markdown_report",
    "plot_report",
    "prompted_text",
    "score_prompted",
    "script_of",
    "variety_dirs",
    "write_report",
]
