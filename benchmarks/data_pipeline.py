"""Is the data pipeline ever the bottleneck? Grain mixture tokens/s next to train-step tokens/s (CPU).

Pipeline side (``num_workers=0``: everything in the training process, no mp_prefetch): the staged
Grain mixture of :mod:`jaxstack.data.mixture` over the embedded corpus -- read ArrayRecord, tokenize
(byte-level BPE) + EOS, concat-then-split per source, mix by token share, batch -- timed over
``--batches`` batches after ``--warmup``; tokens/s counts model input tokens (batch x seq_len).
Two shapes:

* ``tiny``: the smollm2-mixture tiny preset (batch 16 x 128, 2,048-token vocabulary, the A schedule);
* ``smollm2-135m``: the shape of ``benchmarks/train_step.py`` (batch 2 x 512) and a pretraining-like
  batch of 8 x 2048, with an 8,192-token vocabulary (the 49,152-entry cosmo2 vocabulary is not
  available offline; the pipeline's cost per token barely depends on vocabulary size).

Trainer side: ``tiny`` times ``--train-steps`` jitted train steps of the tiny preset's model
(median after a compile + warm-up); ``smollm2-135m`` reads ``benchmarks/results/train_step_cpu.json``
(the jaxstack half of ``benchmarks/train_step.py``, batch 2 x 512) or, with ``--time-135m``, times it
here; the 8 x 2048 shape reports the pipeline only (a CPU train step at that shape takes minutes).
The acceptance criterion is pipeline / trainer >= 5 for every shape.

    .venv/bin/python benchmarks/data_pipeline.py                 # writes results/data_pipeline_cpu.json
    .venv/bin/python benchmarks/data_pipeline.py --quick --no-write   # seconds: a dry run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = HERE / "results" / "data_pipeline_cpu.json"
TRAIN_STEP_RESULT = HERE / "results" / "train_step_cpu.json"


def _load_avg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pipeline_tokens_per_s(*, vocab_size: int, seq_len: int, batch_size: int, warmup: int, batches: int,
                          schedule_name: str = "tiny-single") -> dict:
    """Times the staged mixture (num_workers=0) over the embedded corpus."""
    from jaxstack.data import embedded
    from jaxstack.data import mixture as mx
    from jaxstack.data import tokenizer as tokenizer_lib

    schedule = mx.get_schedule(schedule_name)
    names = schedule.source_names
    documents = {n: embedded.embedded_source(n, "train") for n in names}
    sample = [text for n in names for text, _ in zip(documents[n], range(200))]
    tokenizer = tokenizer_lib.cached_bpe(sample, vocab_size, "bench")
    staged = mx.StagedMixture(schedule, documents, tokenizer, seq_len=seq_len, batch_size=batch_size)
    iterator = iter(staged)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    cpu_start = time.process_time()
    for _ in range(batches):
        batch = next(iterator)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    assert batch["tokens"].shape == (batch_size, seq_len + 1)
    tokens = batches * batch_size * seq_len
    return {"schedule": schedule_name, "vocab_size": vocab_size, "seq_len": seq_len, "batch_size": batch_size,
            "batches": batches, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": tokens / wall,
            "realised_shares": iterator.realised_shares()}


def trainer_tokens_per_s(model_config, *, seq_len: int, batch_size: int, warmup: int, steps: int) -> dict:
    """Median jitted train-step time of ``model_config`` on random tokens (AdamW + WSD, fp32)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxstack.models import build_model
    from jaxstack.precision import get_policy
    from jaxstack.train.optimizers import OptimizerConfig, make_optimizer, make_schedule
    from jaxstack.train.step import (
        init_train_state,
        make_batch,
        make_train_step,
        split_model,
    )

    model = build_model(model_config, policy=get_policy("fp32"), rngs=nnx.Rngs(0))
    graphdef, params = split_model(model)
    optimizer = OptimizerConfig(warmup_steps=2)
    tx = make_optimizer(optimizer, 1000, params)
    step_fn = make_train_step(graphdef, tx, make_schedule(optimizer, 1000))
    state = init_train_state(params, tx, 0)
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    batch = make_batch(jnp.asarray(tokens))
    for _ in range(1 + warmup):  # the first call compiles
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"steps": steps, "step_s": times, "median_step_s": median,
            "tokens_per_s": batch_size * seq_len / median, "num_params": model_config.num_params()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few batches / steps (a dry run, seconds)")
    parser.add_argument("--batches", type=int, default=None, help="timed pipeline batches (default 300; quick 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches / steps (default 20 / 2; quick 2 / 1)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed tiny train steps (default 10; quick 2)")
    parser.add_argument("--time-135m", action="store_true",
                        help="time smollm2-135m train steps here instead of reading results/train_step_cpu.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    batches = args.batches or (10 if quick else 300)
    warmup = args.warmup if args.warmup is not None else (2 if quick else 20)
    train_steps = args.train_steps or (2 if quick else 10)

    import experiments.smollm2_mixture as experiment
    from jaxstack.models.configs import get_config

    record = {"benchmark": "data_pipeline", "date": datetime.datetime.now(datetime.UTC).isoformat(),
              "command": "python benchmarks/data_pipeline.py" + (" --quick" if quick else ""),
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "python": platform.python_version(), "load_avg_at_start": _load_avg(), "num_workers": 0, "shapes": {}}

    tiny = experiment.PRESETS["tiny"]
    seq, batch = tiny.train.seq_len, tiny.train.batch_size
    pipe = pipeline_tokens_per_s(vocab_size=tiny.model.vocab_size, seq_len=seq, batch_size=batch, warmup=warmup,
                                 batches=batches)
    trainer = trainer_tokens_per_s(tiny.model, seq_len=seq, batch_size=batch, warmup=warmup if not quick else 1,
                                   steps=train_steps)
    record["shapes"]["tiny"] = {"pipeline": pipe, "trainer": trainer,
                                "ratio_pipeline_over_trainer": pipe["tokens_per_s"] / trainer["tokens_per_s"]}

    for seq, batch in ((512, 2), (2048, 8)):
        pipe = pipeline_tokens_per_s(vocab_size=8192, seq_len=seq, batch_size=batch, warmup=warmup,
                                     batches=max(batches // (seq // 128), 5))
        if args.time_135m and (seq, batch) == (512, 2):  # 8 x 2048 would take minutes per step on a CPU
            trainer = trainer_tokens_per_s(get_config("smollm2-135m"), seq_len=seq, batch_size=batch, warmup=1,
                                           steps=2 if quick else 3)
            trainer["source"] = "timed here"
        elif TRAIN_STEP_RESULT.exists() and (seq, batch) == (512, 2):
            measured = json.loads(TRAIN_STEP_RESULT.read_text())
            trainer = {"tokens_per_s": measured["jaxstack"]["tokens_per_s"],
                       "source": f"{TRAIN_STEP_RESULT.relative_to(ROOT)} ({measured.get('date')}, "
                                 f"batch {measured['batch']} x {measured['seq_len']})"}
        else:
            trainer = None
        entry = {"pipeline": pipe, "trainer": trainer}
        if trainer is not None:
            entry["ratio_pipeline_over_trainer"] = pipe["tokens_per_s"] / trainer["tokens_per_s"]
        record["shapes"][f"smollm2-135m seq {seq} x batch {batch}"] = entry

    ratios = [s["ratio_pipeline_over_trainer"] for s in record["shapes"].values() if "ratio_pipeline_over_trainer" in s]
    record["min_ratio"] = min(ratios)
    record["pipeline_never_the_bottleneck"] = record["min_ratio"] >= 5.0
    record["load_avg_at_end"] = _load_avg()
    for name, entry in record["shapes"].items():
        ratio = entry.get("ratio_pipeline_over_trainer")
        trainer = (f"{entry['trainer']['tokens_per_s']:>10,.1f} tok/s" if entry["trainer"]
                   else f"{'not timed':>16s}")
        print(f"{name:34s} pipeline {entry['pipeline']['tokens_per_s']:>12,.0f} tok/s   trainer {trainer}"
              + (f"   ratio {ratio:,.1f}" if ratio else ""))
    print(f"min ratio {record['min_ratio']:.1f} (>= 5 required): "
          f"{'ok' if record['pipeline_never_the_bottleneck'] else 'NOT MET'}")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":  # a guard: Grain's mp_prefetch workers (not used here) re-import this file
    main()
