"""``jaxstack adp convert|validate|export|stats|mix|qc|schema``: the ADP pipeline from the shell.

Wire it into the ``jaxstack`` CLI with :func:`add_subparser` (``jaxstack adp ...``), or run it
alone with ``python -m jaxstack.data.adp.cli ...``. Inputs and outputs are JSONL files or ``-``
(stdin / stdout). Bad rows (a line that is not UTF-8 or not JSON included) are reported on stderr as
``<file>:<line>: <stage>: <reason>`` and skipped, by every command that reads rows (``convert``,
``validate``, ``export``, ``qc``, ``stats``; ``mix``, which copies lines verbatim, leaves out the
lines that are not UTF-8); a file and stdin behave the same. Each of these commands ends with a
JSON summary line on stderr (``rows_read``, ``rows_failed``, ... per input), and the exit status is
1 when any row failed (0 otherwise), so a pipeline can stop on it. Large files show a progress bar
on stderr when it is a terminal.

Examples::

    jaxstack adp convert --dataset swe_gym raw.jsonl -o std.jsonl
    jaxstack adp validate std.jsonl --dataset swe_gym --schema-version 1.2
    jaxstack adp export --format openhands --dataset swe_gym std.jsonl -o sft.jsonl
    jaxstack adp qc --harness openhands sft.jsonl
    jaxstack adp stats swe_gym=std.jsonl synatra=synatra_std.jsonl
    jaxstack adp mix swe_gym=sft_a.jsonl synatra=sft_b.jsonl --seed 0 -o mixed.jsonl
    jaxstack adp schema --schema-version 1.2 -o adp-1.2.schema.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

PROGRESS_MIN_BYTES = 8 << 20


@contextlib.contextmanager
def _open_in(path: str) -> Iterator[tuple[Any, str]]:
    from jaxstack.data.adp.stream import open_jsonl

    if path == "-":
        with open_jsonl(path) as handle:
            yield handle, "<stdin>"
        return
    size = os.path.getsize(path)
    with open_jsonl(path) as handle:
        if size >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
            from tqdm import tqdm

            with tqdm(total=size, unit="B", unit_scale=True, desc=Path(path).name, file=sys.stderr) as bar:

                def lines() -> Iterator[str]:
                    for line in handle:
                        bar.update(len(line.encode("utf-8", "surrogateescape")))
                        yield line

                yield lines(), path
        else:
            yield handle, path


@contextlib.contextmanager
def _open_out(path: str | None) -> Iterator[TextIO]:
    if path in (None, "-"):
        yield sys.stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        yield handle


def _named_inputs(values: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            path, name = value, Path(value).name.split(".")[0]
        pairs.append((name, path))
    return pairs


def _summary(command: str, report: Any, **extra: Any) -> None:
    print(json.dumps({"command": command, **extra, **report.as_dict()}, sort_keys=True), file=sys.stderr)


def cmd_convert(args: argparse.Namespace) -> int:
    """Raw JSONL -> ADP JSONL."""
    from jaxstack.data.adp.datasets import get_dataset

    spec = get_dataset(args.dataset)
    with _open_in(args.input) as (lines, source), _open_out(args.output) as out:
        report = spec.convert_lines(lines, out, sys.stderr, source=source, version=args.schema_version)
    _summary("convert", report)
    return int(report.rows_failed > 0)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate ADP JSONL (and bind API calls when ``--dataset`` is given)."""
    from jaxstack.data.adp.datasets import get_dataset
    from jaxstack.data.adp.stream import validate_stream

    stubs = get_dataset(args.dataset).stubs if args.dataset else None
    with _open_in(args.input) as (lines, source), contextlib.ExitStack() as stack:
        out = stack.enter_context(_open_out(args.output)) if args.output else None
        report = validate_stream(
            lines,
            version=args.schema_version,
            stubs=stubs,
            check_apis=args.dataset is not None,
            err=sys.stderr,
            source=source,
            out=out,
        )
    _summary("validate", report)
    return int(report.rows_failed > 0)


def cmd_export(args: argparse.Namespace) -> int:
    """ADP JSONL -> SFT JSONL in a harness format."""
    from jaxstack.data.adp.exporters import export_trajectory
    from jaxstack.data.adp.stream import map_stream

    def function(trajectory):
        return export_trajectory(trajectory, args.format, dataset=args.dataset)

    with _open_in(args.input) as (lines, source), _open_out(args.output) as out:
        report = map_stream(
            lines, function=function, out=out, err=sys.stderr, source=source, version=args.schema_version
        )
    _summary("export", report)
    return int(report.rows_failed > 0)


def cmd_qc(args: argparse.Namespace) -> int:
    """SFT quality checks per input file."""
    from jaxstack.data.adp.quality import check_conversations, sft_record
    from jaxstack.data.adp.stream import StreamReport, iter_records

    results, failed = {}, False
    for name, path in _named_inputs(args.inputs):
        rows = StreamReport()
        with _open_in(path) as (lines, source):
            records = iter_records(lines, parse=sft_record, stage="SFT record", report=rows, err=sys.stderr,
                                   source=source)
            report = check_conversations(records, harness=args.harness)
        _summary("qc", rows, input=name)
        results[name] = report.as_dict()
        failed |= not report.passed or rows.rows_failed > 0
    print(json.dumps(results, indent=2, sort_keys=True))
    return int(failed)


def cmd_stats(args: argparse.Namespace) -> int:
    """Table-2 statistics per input file."""
    from jaxstack.data.adp.schema import trajectory_model
    from jaxstack.data.adp.stats import dataset_stats, overall, stats_table
    from jaxstack.data.adp.stream import StreamReport, iter_records

    model = trajectory_model(args.schema_version)
    per_dataset, failed = {}, False
    for name, path in _named_inputs(args.inputs):
        rows = StreamReport()
        with _open_in(path) as (lines, source):
            records = iter_records(lines, parse=model.model_validate, stage="ADP schema", report=rows,
                                   err=sys.stderr, source=source)
            per_dataset[name] = dataset_stats(records)
        _summary("stats", rows, input=name)
        failed |= rows.rows_failed > 0
    if args.markdown:
        print(stats_table(per_dataset), end="")
    else:
        result = {name: stats.as_dict() for name, stats in sorted(per_dataset.items())}
        result["overall"] = overall(per_dataset)
        print(json.dumps(result, indent=2, sort_keys=True))
    return int(failed)


def cmd_mix(args: argparse.Namespace) -> int:
    """Mix JSONL files with ``ceil(w * n)`` examples each; writes the chosen lines."""
    from jaxstack.data.adp.mixture import PAPER_WEIGHTS, mixture_plan, weight_for
    from jaxstack.data.adp.stream import RowProblem, decode_line

    weights = PAPER_WEIGHTS if args.weights == "paper" else json.loads(args.weights)
    inputs = dict(_named_inputs(args.inputs))
    rows: dict[str, list[str]] = {}
    undecodable = 0
    for name, path in sorted(inputs.items()):
        rows[name] = []
        with _open_in(path) as (lines, source):
            for number, line in enumerate(lines, start=1):
                text, reason = decode_line(line)
                if reason is not None:  # lines are copied verbatim: one that is not UTF-8 is left out
                    print(RowProblem(number, "invalid UTF-8", reason).render(source), file=sys.stderr)
                    undecodable += 1
                elif text.strip():
                    rows[name].append(text if text.endswith("\n") else text + "\n")
    plan = mixture_plan(
        {name: len(lines) for name, lines in rows.items()},
        weights,
        seed=args.seed,
        upsample=args.upsample,
        shuffle=not args.no_shuffle,
    )
    with _open_out(args.output) as out:
        for name, index in plan:
            out.write(rows[name][index])
    counts: dict[str, int] = {}
    for name, _ in plan:
        counts[name] = counts.get(name, 0) + 1
    summary = {
        name: {"n": len(rows[name]), "weight": weight_for(name, weights), "sampled": counts.get(name, 0)}
        for name in sorted(rows)
    }
    print(json.dumps({"command": "mix", "seed": args.seed, "datasets": summary, "rows_failed": undecodable},
                     sort_keys=True), file=sys.stderr)
    return int(undecodable > 0)


def cmd_schema(args: argparse.Namespace) -> int:
    """Write the JSON Schema of a schema version."""
    from jaxstack.data.adp.schema import json_schema_text

    with _open_out(args.output) as out:
        out.write(json_schema_text(args.schema_version))
    return 0


def add_subparser(subparsers: Any, name: str = "adp") -> argparse.ArgumentParser:
    """Add ``adp`` and its sub-commands to an ``argparse`` sub-parser collection."""
    from jaxstack.data.adp.datasets import DATASETS
    from jaxstack.data.adp.exporters import EXPORTERS

    parser = subparsers.add_parser(name, help="Agent Data Protocol: convert, validate, export, stats, mix")
    commands = parser.add_subparsers(dest="adp_command", required=True)

    def common(p: argparse.ArgumentParser, *, single_input: bool = True, output: bool = True) -> None:
        if single_input:
            p.add_argument("input", nargs="?", default="-", help="input JSONL file, or - for stdin")
        if output:
            p.add_argument("-o", "--output", default=None, help="output file (default: stdout)")
        p.add_argument("--schema-version", default="1.0", choices=["1.0", "1.2"], help="ADP schema version")

    p = commands.add_parser("convert", help="raw dataset JSONL -> ADP JSONL")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    common(p)
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("validate", help="validate ADP JSONL (API calls too with --dataset)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None)
    common(p)
    p.set_defaults(func=cmd_validate)

    p = commands.add_parser("export", help="ADP JSONL -> SFT JSONL")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS))
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None, help="for its API stubs")
    common(p)
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("qc", help="SFT quality checks of exported JSONL (name=path ...)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--harness", choices=["openhands", "sweagent"], default="openhands")
    p.set_defaults(func=cmd_qc)

    p = commands.add_parser("stats", help="Table-2 statistics of ADP JSONL (name=path ...)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    common(p, single_input=False, output=False)
    p.set_defaults(func=cmd_stats)

    p = commands.add_parser("mix", help="mix JSONL files with ceil(w * n) examples each (name=path ...)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--weights", default="paper", help="'paper' or a JSON object name/glob -> weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upsample", choices=["replacement", "repeat"], default="replacement")
    p.add_argument("--no-shuffle", action="store_true", help="group by dataset instead of interleaving")
    p.add_argument("-o", "--output", default=None)
    p.set_defaults(func=cmd_mix)

    p = commands.add_parser("schema", help="write the JSON Schema of a version")
    common(p, single_input=False)
    p.set_defaults(func=cmd_schema)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run parsed ``adp`` arguments; errors that stop a command are printed, exit status 2."""
    try:
        return args.func(args)
    except (KeyError, ValueError, OSError) as error:
        print(f"jaxstack adp {args.adp_command}: error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m jaxstack.data.adp.cli <command> ...``."""
    parser = argparse.ArgumentParser(prog="jaxstack")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparser(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "adp":
        argv = ["adp", *argv]
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
