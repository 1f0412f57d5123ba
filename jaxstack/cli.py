"""The ``jaxstack`` command: train, generate, run <experiment>, bench, adp, eval, serve.

Presets by name, dotted overrides for any config field (``--model.num_layers=4``,
``--train.steps=100``, ``--optimizer.learning_rate=1e-3``). ``jaxstack --help`` lists presets and
experiments; ``jaxstack run <experiment> --help`` lists an experiment's fields.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import subprocess
import sys


# `jaxstack run NAME` finds experiment modules through this entry-point group (pyproject.toml), so the
# library never imports the experiments package itself; re-run `pip install -e .` after editing the group.
EXPERIMENT_GROUP = "jaxstack.experiments"


def _experiments() -> dict[str, importlib.metadata.EntryPoint]:
    """Experiment name -> its entry point (nothing is imported)."""
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=EXPERIMENT_GROUP)}


def _load_experiment(name: str):
    """The experiment module registered as ``name``; ValueError listing the known names otherwise."""
    experiments = _experiments()
    if name not in experiments:
        raise ValueError(f"experiment: unknown {name!r}; known experiments are {sorted(experiments)} (the "
                         f"{EXPERIMENT_GROUP!r} entry points of the installed jaxstack; after editing pyproject.toml "
                         "re-run `pip install -e .`)")
    return experiments[name].load()


def _epilog() -> str:
    from jaxstack.models.configs import PRESETS

    return (
        "model presets: " + ", ".join(PRESETS) + "\n"
        "experiments:   " + ", ".join(sorted(_experiments())) + "  (jaxstack run NAME --preset tiny|paper)\n"
        "overrides:     --model.FIELD=VALUE --train.FIELD=VALUE --optimizer.FIELD=VALUE (train);\n"
        "               --FIELD=VALUE / --section.FIELD=VALUE on an experiment's Config (run)"
    )


def _distributed(args) -> None:
    if args.distributed:
        from jaxstack.train.sharding import initialize_distributed

        if args.coordinator:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        else:
            initialize_distributed()


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() before anything else (one process per host)")
    group.add_argument("--coordinator", help="host:port of process 0 (default: from the cluster environment)")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)


def cmd_train(args, overrides: dict[str, str]) -> int:
    from jaxstack.config import apply_overrides
    from jaxstack.data.lm import text_data
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.models.configs import get_config
    from jaxstack.train.optimizers import OptimizerConfig
    from jaxstack.train.trainer import NonFiniteTrainingError, TrainConfig, train

    _distributed(args)
    bundle = {"model": get_config(args.model), "train": TrainConfig(), "optimizer": OptimizerConfig()}
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if section not in bundle or not field:
            raise ValueError(f"--{key}: expected --model.FIELD, --train.FIELD or --optimizer.FIELD")
        bundle[section] = apply_overrides(bundle[section], {field: value}, prefix=f"{section}.")
    model_config, train_config, optimizer_config = bundle["model"], bundle["train"], bundle["optimizer"]

    # text_data refuses a --text-dir of evaluation-only data (jaxstack.data.guard)
    text = text_data(args.text_dir or None, vocab_size=model_config.vocab_size, seq_len=train_config.seq_len,
                     batch_size=train_config.batch_size, seed=train_config.seed,
                     tokenizer=load_tokenizer(args.tokenizer) if args.tokenizer else None, tokenizer_name="train",
                     exact_vocab=False, preflight=args.preflight)
    tokenizer, data, eval_data = text.tokenizer, iter(text.dataset), text.eval_data
    run_dir = pathlib.Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    import jax

    main_process = jax.process_index() == 0
    if main_process:
        tokenizer.save(run_dir / "tokenizer.json")
    try:
        _, summary = train(model_config, train_config, optimizer_config, data, run_dir, eval_data=eval_data,
                           show_progress=not args.no_progress, allow_config_change=args.allow_config_change)
    except NonFiniteTrainingError as error:  # the run failed (not a usage error): exit status 1
        print(f"jaxstack train: error: {error}", file=sys.stderr)
        return 1
    if main_process and (run_dir / "hf").exists():
        tokenizer.save(run_dir / "hf" / "tokenizer.json")
    if main_process:
        print(json.dumps(summary["final"]))
    return 0


def cmd_generate(args, overrides: dict[str, str]) -> int:
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.inference import SamplingConfig, generate
    from jaxstack.models.checkpoint import load_pretrained

    if overrides:
        raise ValueError(f"generate: unexpected options {sorted(overrides)}")
    model = load_pretrained(args.model, policy=args.policy)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    stop = tuple(t for t in (tokenizer.eos_id,) if t is not None)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, stop_tokens=stop)
    prompts = args.prompt or [""]
    result = generate(model, [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts], config, seed=args.seed)
    for row, prompt in enumerate(prompts):
        n = int(result.lengths[row])
        print(prompt + tokenizer.decode(result.tokens[row, :n].tolist()))
    return 0


def cmd_run(args, overrides: dict[str, str]) -> int:
    from jaxstack.config import apply_overrides, to_dict

    _distributed(args)
    module = _load_experiment(args.experiment)
    presets = getattr(module, "PRESETS", {})
    if args.preset not in presets:
        raise ValueError(f"--preset: {args.experiment} has presets {sorted(presets)}, not {args.preset!r}")
    config = apply_overrides(presets[args.preset], overrides)
    if args.show_config:
        print(json.dumps(to_dict(config), indent=2))
        return 0
    result = module.run(config)
    if result is not None:
        print(f"{args.experiment}: record written to {result}")
    return 0


# The project's own benchmarks (benchmarks/NAME.py); `jaxstack bench` runs these and nothing else.
BENCHMARKS = ("data_pipeline", "decode", "eval_throughput", "kda", "kimi_decode", "serve_load", "train_step")


def cmd_bench(args, overrides: dict[str, str]) -> int:
    name = args.name.replace("-", "_")
    if name not in BENCHMARKS:
        raise ValueError(f"bench: unknown benchmark {args.name!r}; expected one of {list(BENCHMARKS)}")
    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise ValueError(f"bench: {script} is missing (benchmarks need a source checkout of jaxstack)")
    extra = [f"--{k}={v}" for k, v in overrides.items()]
    return subprocess.call([sys.executable, str(script), *extra])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxstack", description=__doc__.splitlines()[0], epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a Llama-family model on local text", epilog=_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", default="smollm2-tiny", help="model preset (see below)")
    train.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    train.add_argument("--text-dir", help="directory of .txt files (default: the embedded corpus)")
    train.add_argument("--tokenizer", help="tokenizer.json to use (default: train a byte-level BPE)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--preflight", action=argparse.BooleanOptionalAction, default=True,
                       help="read every --text-dir file before training and report all undecodable ones at once")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume even though run-defining fields differ from the run's config.json (the "
                            "change is recorded in config_changes.jsonl)")
    _add_distributed_flags(train)

    gen = sub.add_parser("generate", help="sample from a local HF-format model directory")
    gen.add_argument("--model", required=True, help="directory with config.json + model.safetensors")
    gen.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    gen.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--policy", default="fp32", help="dtype policy preset")

    run = sub.add_parser("run", help="run an experiment module", epilog=_epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("experiment")
    run.add_argument("--preset", default="tiny")
    run.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    _add_distributed_flags(run)

    bench = sub.add_parser("bench", help="run one of the project's benchmarks (benchmarks/NAME.py)")
    bench.add_argument("name", nargs="?", default="train_step", help="one of: " + ", ".join(BENCHMARKS))

    from jaxstack.data.adp.cli import add_subparser as add_adp

    add_adp(sub)

    from jaxstack.evals.cli import add_subparsers as add_eval
    from jaxstack.inference.cli import add_subparser as add_serve

    add_eval(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxstack.config import parse_overrides

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "adp":
        from jaxstack.data.adp.cli import run as run_adp

        if rest:
            parser.error(f"adp: unrecognised arguments {rest}")
        return run_adp(args)
    if args.command in ("eval", "serve"):
        from jaxstack.evals.cli import run_eval
        from jaxstack.inference.cli import run_serve

        if rest:
            parser.error(f"{args.command}: unrecognised arguments {rest}")
        try:
            return (run_eval if args.command == "eval" else run_serve)(args)
        except (ValueError, FileNotFoundError) as error:
            parser.exit(2, f"jaxstack {args.command}: error: {error}\n")
    try:
        overrides = parse_overrides(rest)
        return {"train": cmd_train, "generate": cmd_generate, "run": cmd_run, "bench": cmd_bench}[args.command](
            args, overrides
        )
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"jaxstack {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
