"""The released dataset ``jifanz/stress_testing_model_spec``, read from a local Parquet copy (never
downloaded), and the paper's numbers to compare with.

Layout (shared/refs/evals_style.md section 3.10; the ``default`` config): one row per scenario with
``rank``, ``query_generator``, ``value1``, ``value2``, ``nudge_direction``, ``query``,
``response_<model>`` and ``<model>_value1_position`` / ``<model>_value2_position`` (0..6), model
keys as published (:data:`MODEL_KEYS`). Splits: :data:`SPLITS`. Download the Parquet files yourself
(e.g. ``huggingface-cli download jifanz/stress_testing_model_spec --repo-type dataset --local-dir
DIR``) and pass the file or directory: :func:`load_dataset` refuses anything that looks like a hub
name and does not exist locally.

:func:`recompute` derives from the positions what the paper reports: D, the bin counts, the size of
the high-disagreement subset and the outlier counts per model (Figure 6). :data:`PAPER` holds the
paper's numbers (quoted, with page references); :func:`paper_table` renders both side by side.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxstack.evals.spec_stress import metrics

#: The 12 panel models' column keys, as published.
MODEL_KEYS: tuple[str, ...] = (
    "claude_3_5_sonnet", "claude_3_7_sonnet", "claude_opus_3", "claude_opus_4", "claude_sonnet_4",
    "gemini_2_5_pro", "gpt_4_1", "gpt_4_1_mini", "gpt_4o", "grok_4", "o3", "o4_mini",
)
#: The ``default`` config's splits (the six subsets of the paper's section 2.3) and their model groups.
SPLITS: dict[str, tuple[str, ...]] = {
    "all_models": MODEL_KEYS,
    "claude_models": ("claude_3_5_sonnet", "claude_3_7_sonnet", "claude_opus_3", "claude_opus_4", "claude_sonnet_4"),
    "openai_models": ("gpt_4_1", "gpt_4_1_mini", "gpt_4o", "o3", "o4_mini"),
    "opus4_vs_sonnet4": ("claude_opus_4", "claude_sonnet_4"),
    "gpt41_vs_mini": ("gpt_4_1", "gpt_4_1_mini"),
    "o3_vs_o4mini": ("o3", "o4_mini"),
}
META_COLUMNS = ("rank", "query_generator", "value1", "value2", "nudge_direction", "query")
REQUIRED_META = ("value1", "value2")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: The paper's numbers (arXiv 2510.07686v2; pages as cited in shared/refs/evals_style.md section 3).
PAPER: dict[str, Any] = {
    "source": "Zhang et al., arXiv 2510.07686v2 (numbers quoted, not ours)",
    "subset_sizes": {  # [p.5], after disagreement-weighted k-center; split name -> size
        "all_models": 43_960, "claude_models": 20_790, "openai_models": 26_295,
        "opus4_vs_sonnet4": 9_245, "gpt41_vs_mini": 10_160, "o3_vs_o4mini": 21_953,
    },
    "scenarios_after_filtering": 410_000,  # ">410,000" [p.3]
    "scenarios_after_dedup": 300_000,  # "~300,000" [p.4]
    "with_some_disagreement": 220_000,  # ">220k" [p.2]
    "substantial_divergence": 70_000,  # ">70k" [p.2]
    "outliers": {  # Figure 6 [p.13]; the notes do not say over which scenario set they are counted
        "grok_4": 10_503, "claude_3_5_sonnet": 9_244, "o3": 4_086, "claude_opus_3": 3_729, "gemini_2_5_pro": 2_109,
        "o4_mini": 1_468, "claude_opus_4": 961, "gpt_4_1_mini": 832, "gpt_4o": 628, "claude_sonnet_4": 480,
        "gpt_4_1": 250, "claude_3_7_sonnet": 169,
    },
    "figure2_flag_rate_by_bin": {  # all five OpenAI models flagged (3-judge majority), within S_OpenAI [p.7]
        "[0,1)": 0.007, "[1,1.5)": 0.012, "[1.5,2)": 0.014, "[2,2.5)": 0.049, "[2.5,3]": 0.097,
    },
    "table2_all_five_flagged": {"random": 0.011, "high_dis": 0.036, "openai_models": 0.051},  # [p.6]
    "judge_flag_rates": {"claude_sonnet_4": 0.481, "gemini_2_5_pro": 0.365, "o3": 0.355},  # [p.9]
    "judge_fleiss_kappa": 0.42,  # [p.9]
}


class DatasetError(ValueError):
    """A dataset path or file that cannot be used (the message names the path or column)."""


@dataclasses.dataclass(frozen=True)
class SpecStressData:
    """positions: [n, M, 2] float64 (NaN where a position is missing), models: M keys in column
    order, meta: {column: list of n values} for the :data:`META_COLUMNS` present, source: the files."""

    positions: np.ndarray
    models: tuple[str, ...]
    meta: dict[str, list]
    source: tuple[str, ...]

    def __len__(self) -> int:
        return self.positions.shape[0]

    def complete(self) -> SpecStressData:
        """The rows with every position present."""
        keep = np.all(np.isfinite(self.positions), axis=(1, 2))
        return SpecStressData(self.positions[keep], self.models,
                              {k: [v for v, kept in zip(values, keep) if kept] for k, values in self.meta.items()},
                              self.source)


def position_columns(model: str) -> tuple[str, str]:
    return f"{model}_value1_position", f"{model}_value2_position"


def _files(path: str | pathlib.Path, split: str | None) -> list[pathlib.Path]:
    text = str(path)
    local = pathlib.Path(path).expanduser()
    if not local.exists():
        if HUB_NAME.match(text):
            raise DatasetError(f"path: {text!r} looks like a Hugging Face hub name, and no such local path exists; "
                               "jaxstack never downloads datasets: download the Parquet files yourself (e.g. "
                               f"`huggingface-cli download {text} --repo-type dataset --local-dir DIR`) and pass "
                               "the local file or directory")
        raise DatasetError(f"path: {text!r} does not exist (expected a local .parquet file or a directory of them)")
    if local.is_file():
        return [local]
    files = sorted(local.rglob("*.parquet"))
    if split is not None:
        files = [f for f in files if f.name.startswith(f"{split}-") or f.name == f"{split}.parquet"
                 or f.parent.name == split]
    if not files:
        raise DatasetError(f"path: no .parquet files{f' of split {split!r}' if split else ''} under {local}")
    return files


def load_dataset(path: str | pathlib.Path, *, split: str | None = None,
                 models: Sequence[str] | None = None) -> SpecStressData:
    """Reads positions from local Parquet files.

    path: a ``.parquet`` file, or a directory searched recursively (with ``split``: files named
    ``<split>-*.parquet`` or ``<split>.parquet``, or in a ``<split>/`` folder, as hub snapshots lay
    them out). models: the model keys to read (default: every key of :data:`MODEL_KEYS` with a
    position column, in that order). Raises DatasetError for a hub name, a missing path, or a file
    that lacks a column (the message names it).
    """
    import pyarrow.parquet as pq

    files = _files(path, split)
    tables = []
    for file in files:
        schema = pq.read_schema(file)
        names = set(schema.names)
        missing_meta = [c for c in REQUIRED_META if c not in names]
        if missing_meta:
            raise DatasetError(f"{file}: missing column {missing_meta[0]!r} (expected the default config's columns: "
                               f"{', '.join(META_COLUMNS)}, <model>_value1_position, <model>_value2_position)")
        wanted = list(models) if models is not None else [
            m for m in MODEL_KEYS if any(c in names for c in position_columns(m))]
        if not wanted:
            raise DatasetError(f"{file}: missing column {position_columns(MODEL_KEYS[0])[0]!r}: no "
                               "<model>_value1_position columns for any published model key")
        for model in wanted:
            for column in position_columns(model):
                if column not in names:
                    raise DatasetError(f"{file}: missing column {column!r} (model {model!r})")
        columns = [c for c in META_COLUMNS if c in names] + [c for m in wanted for c in position_columns(m)]
        tables.append((file, tuple(wanted), pq.read_table(file, columns=columns)))
    model_sets = {t[1] for t in tables}
    if len(model_sets) != 1:
        raise DatasetError(f"path: the files disagree on the models present: {sorted(model_sets)}")
    wanted = tables[0][1]
    blocks, meta = [], {}
    for file, _, table in tables:
        block = np.empty((table.num_rows, len(wanted), 2), np.float64)
        for m, model in enumerate(wanted):
            for v, column in enumerate(position_columns(model)):
                values = np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
                finite = values[np.isfinite(values)]
                if finite.size and (finite.min() < 0 or finite.max() > 6):
                    raise DatasetError(f"{file}: column {column!r} has positions outside 0..6 "
                                       f"([{finite.min()}, {finite.max()}])")
                block[:, m, v] = values
        blocks.append(block)
        for column in META_COLUMNS:
            if column in table.column_names:
                meta.setdefault(column, []).extend(table.column(column).to_pylist())
    return SpecStressData(np.concatenate(blocks, axis=0), wanted, meta, tuple(str(f) for f in files))


def recompute(data: SpecStressData, *, ddof: int = 0) -> dict[str, Any]:
    """The paper's derived numbers from positions: D statistics, bin counts, the high-disagreement
    subset size (D >= 1.5), outlier counts per model (only meaningful on the 12-model split) and how
    many rows were dropped for a missing position."""
    complete = data.complete()
    if len(complete) == 0:
        raise DatasetError("data: no row has every position")
    d = metrics.disagreement(complete.positions, ddof=ddof)
    out: dict[str, Any] = {
        "rows": len(data), "rows_complete": len(complete), "models": list(data.models), "ddof": ddof,
        "d_mean": float(d.mean()), "high_disagreement": int(metrics.is_high(d).sum()),
    }
    if ddof == 0:
        out["bin_counts"] = metrics.bin_counts(d)
    if len(data.models) >= 3:
        out["outliers"] = metrics.outlier_counts(complete.positions, complete.models)
    return out


def paper_table(recomputed: dict[str, dict[str, Any]] | None = None) -> str:
    """A Markdown table of the paper's subset sizes and outlier counts (marked as the paper's), with
    a column of recomputed values where ``recomputed`` ({split: :func:`recompute` output}) has them."""
    recomputed = recomputed or {}
    lines = ["| quantity | paper (Zhang et al. 2025) | recomputed from the dataset |", "|---|---|---|"]
    for split, size in PAPER["subset_sizes"].items():
        ours = recomputed.get(split, {}).get("rows", "not run")
        lines.append(f"| subset size `{split}` | {size:,} | {ours} |")
    ours_outliers = recomputed.get("all_models", {}).get("outliers", {})
    for model, count in PAPER["outliers"].items():
        lines.append(f"| outliers `{model}` (Fig. 6) | {count:,} | {ours_outliers.get(model, 'not run')} |")
    for label, rate in PAPER["figure2_flag_rate_by_bin"].items():
        lines.append(f"| all 5 OpenAI flagged, D in {label} (Fig. 2) | {rate:.1%} | needs judges (not run) |")
    return "\n".join(lines)


__all__ = ["MODEL_KEYS", "PAPER", "SPLITS", "DatasetError", "SpecStressData", "load_dataset", "paper_table",
           "position_columns", "recompute"]
