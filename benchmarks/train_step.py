"""Training throughput on CPU: jaxstack vs Hugging Face transformers (PyTorch), same workload.

Workload (both sides): the ``smollm2-135m`` shape (vocab 49152, d 576, 30 layers, 9 heads / 3 KV
heads, FFN 1536, tied embeddings), float32, random init, a batch of ``--batch`` sequences of
``--seq`` tokens; one step = forward + next-token cross entropy + backward + global-norm clipping
(1.0) + AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.01 on matrices only).

* jaxstack: ``LlamaForCausalLM`` + ``make_optimizer`` + the jitted, donated ``make_train_step``.
* torch: ``transformers.LlamaForCausalLM`` from a ``LlamaConfig`` (``attn_implementation="sdpa"``),
  ``torch.nn.functional.cross_entropy`` on float32 logits, ``clip_grad_norm_`` and
  ``torch.optim.AdamW(fused=True)`` (the fastest CPU implementation; torch's default for-loop
  AdamW is ~7x slower on this CPU: ``--torch-adamw for-loop``).

Each side runs in its own subprocess (no shared thread pools); warm-up steps (jit compile, torch
allocator warm-up) are excluded; the median of the timed steps gives tokens/s. Both processes are
started, compiled and warmed up first; then the timed steps alternate between them one step at a
time (never concurrently), so a change of machine load during the run hits both halves alike and the
ratio jaxstack/torch from one invocation is meaningful on a shared machine. Process CPU time per
step is recorded too.

    .venv/bin/python benchmarks/train_step.py            # full run, writes results/train_step_cpu.json
    .venv/bin/python benchmarks/train_step.py --quick    # 4-layer smoke test (seconds)
    .venv/bin/python benchmarks/train_step.py --only jax --quick --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train_step_cpu.json"

# The model shape (smollm2-135m), spelled out so the torch worker needs no jaxstack import.
FULL_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                  num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                  tie_word_embeddings=True)
QUICK_OVERRIDES = dict(num_layers=4)

OPT = dict(learning_rate=3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_norm=1.0)


def _shape(quick: bool) -> dict:
    return {**FULL_SHAPE, **(QUICK_OVERRIDES if quick else {})}


def _tokens(batch: int, seq: int, vocab: int, seed: int = 0):
    """[batch, seq + 1] int32 tokens, identical on both sides (numpy RNG)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _serve(step, warmup: int) -> tuple[list[float], list[dict]]:
    """Runs ``warmup`` untimed steps, then answers the driver: one timed step per ``step`` line on
    stdin (reply: a JSON line with wall and process-CPU seconds), until ``done``."""
    warm = []
    for _ in range(warmup):
        start = time.perf_counter()
        step()
        warm.append(time.perf_counter() - start)
    print(json.dumps({"ready": True}), flush=True)
    timed = []
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall0, cpu0 = time.perf_counter(), time.process_time()
        step()
        sample = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}
        timed.append(sample)
        print(json.dumps(sample), flush=True)
    return warm, timed


# ----------------------------------------------------------------------------------------- workers


def run_jax(args) -> dict:
    import jax
    import jax.numpy as jnp
    import jaxlib
    import flax
    import optax
    from flax import nnx

    from jaxstack.models.configs import get_config
    from jaxstack.models.llama import LlamaForCausalLM
    from jaxstack.train.optimizers import OptimizerConfig, make_optimizer
    from jaxstack.train.step import init_train_state, make_batch, make_train_step, split_model

    shape = _shape(args.quick)
    config = get_config("smollm2-135m", num_layers=shape["num_layers"], scan_layers=args.scan_layers,
                        remat=args.remat)
    model = LlamaForCausalLM(config, policy="fp32", rngs=nnx.Rngs(0))
    graphdef, params = split_model(model)
    del model
    opt_config = OptimizerConfig(schedule="constant", warmup_steps=0, **OPT)
    tx = make_optimizer(opt_config, total_steps=1000, params=params)
    state = init_train_state(params, tx, seed=0)
    step_fn = make_train_step(graphdef, tx)
    batch = make_batch(jnp.asarray(_tokens(args.batch, args.seq, shape["vocab_size"])))
    num_params = sum(x.size for x in jax.tree.leaves(params))

    holder = {"state": state, "loss": None}

    def step():
        holder["state"], metrics = step_fn(holder["state"], batch)
        holder["loss"] = float(jax.block_until_ready(metrics["loss"]))

    # The first call traces, compiles and runs one step (the jit cache then holds the executable).
    compile_start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - compile_start
    warm, timed = _serve(step, args.warmup)
    return {
        "framework": "jaxstack",
        "num_params": int(num_params),
        "first_step_with_compile_s": compile_s,
        "warmup_step_s": warm,
        "steps": timed,
        "final_loss": holder["loss"],
        "threads": {
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu_devices": len(jax.devices("cpu")),
            "cpus_available": len(os.sched_getaffinity(0)),
            "note": "XLA:CPU runs intra-op work on a thread pool sized to the available cores",
        },
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__},
        "options": {"scan_layers": args.scan_layers, "remat": args.remat},
    }


def run_torch(args) -> dict:
    import torch
    import transformers

    shape = _shape(args.quick)
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        rope_theta=shape["rope_theta"],
        rms_norm_eps=shape["rms_norm_eps"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=shape["tie_word_embeddings"],
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(hf_config).to(torch.float32)
    model.train()
    # Same weight-decay rule as jaxstack: matrices decay, 1-D parameters (norm scales) do not.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": OPT["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=OPT["learning_rate"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"],
        **({"fused": True} if args.torch_adamw == "fused" else {"foreach": True} if args.torch_adamw == "foreach" else {}),
    )
    tokens = torch.from_numpy(_tokens(args.batch, args.seq, shape["vocab_size"]).astype("int64"))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    num_params = sum(p.numel() for p in model.parameters())
    holder = {"loss": None}

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["clip_norm"])
        optimizer.step()
        holder["loss"] = float(loss.detach())

    warm, timed = _serve(step, args.warmup)
    return {
        "framework": "torch",
        "num_params": int(num_params),
        "attn_implementation": model.config._attn_implementation,
        "warmup_step_s": warm,
        "steps": timed,
        "final_loss": holder["loss"],
        "threads": {"torch_num_threads": torch.get_num_threads(),
                    "torch_num_interop_threads": torch.get_num_interop_threads(),
                    "cpus_available": len(os.sched_getaffinity(0))},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "options": {"adamw": args.torch_adamw},
    }


# ------------------------------------------------------------------------------------------ driver


def _summarise(result: dict, tokens_per_step: int) -> dict:
    walls = [sample["wall_s"] for sample in result["steps"]]
    cpus = [sample["cpu_s"] for sample in result["steps"]]
    result["median_step_s"] = statistics.median(walls)
    result["min_step_s"] = min(walls)
    result["median_step_cpu_s"] = statistics.median(cpus)
    result["tokens_per_s"] = tokens_per_step / result["median_step_s"]
    result["tokens_per_s_best_step"] = tokens_per_step / result["min_step_s"]
    return result


def _worker_cmd(args, which: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, "--batch", str(args.batch),
           "--seq", str(args.seq), "--warmup", str(args.warmup)]
    if args.quick:
        cmd.append("--quick")
    if args.scan_layers:
        cmd.append("--scan-layers")
    if args.remat:
        cmd.append("--remat")
    cmd += ["--torch-adamw", args.torch_adamw]
    return cmd


class Worker:
    """One half of the benchmark in its own interpreter, driven one step at a time over pipes."""

    def __init__(self, args, which: str):
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        repo = str(HERE.parent)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.which = which
        self.proc = subprocess.Popen(_worker_cmd(args, which), env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(f"{self.which} worker exited with code {code} (its stderr is above)")
        return json.loads(line)

    def wait_ready(self) -> None:
        assert self._read().get("ready")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.close()
        result = self._read()
        self.proc.wait()
        return result


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4-layer model (smoke test)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 2; quick: 1)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512; quick: 128)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compile (default 2; quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per half, interleaved (default 5; quick: 2)")
    parser.add_argument("--only", choices=("jax", "torch"), default=None, help="run one half only")
    parser.add_argument("--scan-layers", action="store_true", help="jaxstack: lax.scan over layers")
    parser.add_argument("--remat", action="store_true", help="jaxstack: rematerialise layers (with --scan-layers)")
    parser.add_argument("--torch-adamw", choices=("fused", "foreach", "for-loop"), default="fused",
                        help="torch.optim.AdamW implementation (default fused: the fastest on CPU, 7x the "
                             "for-loop default here)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-write", action="store_true", help="print the JSON, do not write it")
    parser.add_argument("--worker", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = dict(batch=1, seq=128, warmup=1, steps=2) if args.quick else dict(batch=2, seq=512, warmup=2, steps=5)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    if args.worker is not None:
        result = run_jax(args) if args.worker == "jax" else run_torch(args)
        print(json.dumps(result))
        return result

    tokens_per_step = args.batch * args.seq
    record = {
        "benchmark": "train_step",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/train_step.py"] + list(argv if argv is not None else sys.argv[1:])),
        "model": "smollm2-135m" + (" (quick: 4 layers)" if args.quick else ""),
        "shape": _shape(args.quick),
        "dtype": "float32",
        "batch": args.batch,
        "seq_len": args.seq,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "optimizer": {**OPT, "name": "AdamW + clip_by_global_norm"},
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": _load_avg(),
    }
    halves = ["jax", "torch"] if args.only is None else [args.only]
    workers = {}
    for which in halves:  # set-up, compile and warm-up one at a time (not timed)
        print(f"[train_step] {which}: set-up and {args.warmup} warm-up steps ...", file=sys.stderr, flush=True)
        workers[which] = Worker(args, which)
        workers[which].wait_ready()
    record["load_avg_before"] = _load_avg()
    # Timed steps alternate between the two processes (only one computes at a time), so a change of
    # machine load during the run hits both halves alike.
    for i in range(args.steps):
        for which in (halves if i % 2 == 0 else halves[::-1]):
            sample = workers[which].step()
            print(f"[train_step] step {i + 1}/{args.steps} {which}: {sample['wall_s']:.3f} s "
                  f"(cpu {sample['cpu_s']:.2f} s)", file=sys.stderr, flush=True)
    for which in halves:
        result = _summarise(workers[which].finish(), tokens_per_step)
        record["jaxstack" if which == "jax" else "torch"] = result
        print(f"[train_step] {which}: median step {result['median_step_s']:.3f} s, "
              f"{result['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    record["load_avg_after"] = _load_avg()
    if "jaxstack" in record and "torch" in record:
        jx, pt = record["jaxstack"], record["torch"]
        record["ratio_jaxstack_over_torch"] = jx["tokens_per_s"] / pt["tokens_per_s"]
        record["ratio_best_step"] = jx["tokens_per_s_best_step"] / pt["tokens_per_s_best_step"]
        record["ratio_cpu_time"] = pt["median_step_cpu_s"] / jx["median_step_cpu_s"]
        print(f"[train_step] ratio jaxstack/torch (tokens/s): {record['ratio_jaxstack_over_torch']:.3f}",
              file=sys.stderr, flush=True)
    if args.no_write:
        print(json.dumps(record, indent=2))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"[train_step] wrote {args.out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
