"""Decode speed on CPU: jaxstack's sampler vs transformers' ``generate``, and Kimi Linear's per-token
decode time vs context length.

**Part 1 (``llama``): jaxstack vs transformers, same weights.** A random-init model of the
``smollm2-135m`` shape (vocab 49152, d 576, 30 layers, 9 heads / 3 KV heads, FFN 1536, tied
embeddings), float32, is built by ``transformers`` (``torch.manual_seed``) and saved with
``save_pretrained`` (safetensors, HF layout); jaxstack loads that directory with ``load_pretrained``.
Greedy decoding of a ``--prompt-len`` (512) token prompt to exactly ``--new-tokens`` (128) new tokens,
at each batch size of ``--batches`` (1 and 16); prompts are random ids (numpy RNG), identical on both
sides.

* jaxstack: ``jaxstack.inference.sampler.generate(model, prompts, SamplingConfig(max_new_tokens=128,
  temperature=0.0))`` -- prefill and a ``lax.scan`` over the decode steps in one jitted function;
  no stop tokens (``stop_tokens=()``), so every row generates 128 tokens.
* transformers: ``model.generate(input_ids, attention_mask=..., max_new_tokens=128,
  min_new_tokens=128, do_sample=False, cache_implementation="static")`` under
  ``torch.inference_mode()``, ``attn_implementation="sdpa"``, ``torch.get_num_threads()`` threads.
  The checkpoint's config has no EOS id, so neither side can stop early and ``min_new_tokens``
  suppresses nothing (with an EOS id it would mask that token's logit and could change the argmax).

One timed call = the whole ``generate`` (prefill + 128 decode steps), what a user waits for. Each
(side, batch) runs in its own subprocess (train_step.py's protocol: no shared thread pools); the first
call is the untimed warm-up (it includes jit compilation for jaxstack, the first ``generate`` for
torch); then the timed calls alternate between the two sides one call at a time (never
concurrently), so that load changes on a shared machine hit both alike. Median call -> tokens/s
(batch * new tokens / s) and ms per decode step (call time / new tokens); 3 timed calls per side at
batch 1 and 2 at batch 16 (``--reps``), which keeps the whole run near 12 minutes. For each timed
call the driver also records the CPU seconds that *other* processes used meanwhile (``/proc/stat``'s
busy time minus the worker's own), as ``other_cpu_share`` of the machine: on a shared machine that
tells a clean call from one that competed for the cores; ``ratio_clean_calls`` is the ratio of the
median clean calls (other processes < 5%), when each side has one. The generated tokens of the
two sides are compared and the agreement recorded (random-init models can have near-ties, so a
mismatch is reported, not raised). The init std is ``--init-std`` (0.1): at the config's 0.02 the
random model emits one token forever, which would make the agreement check vacuous; the weights'
values do not change the work done.

**Part 2 (``kimi``): Kimi Linear decode time vs context.** A moderate Kimi Linear (``KIMI_SHAPE``
below: 8 layers, KDA:MLA 3:1, d 512, float32, ``kda_backend="xla"``), batch 1. One prompt of
max(contexts) random tokens is prefilled once (untimed) in chunks of ``--kimi-chunk`` tokens through
the model's cache (KDA chunk path, MLA latent cache); after 1k, 2k, 4k, 8k and 16k tokens the cache
is snapshotted (KDA states as they are, MLA latents cut to ``context + decode steps`` slots, as the
sampler would size them). For each context the script times ``--kimi-steps`` greedy decode steps
(``lax.scan``, the sampler's step: ``select_tokens`` then one-token model call) of

* the whole model (ms/token),
* one KDA mixer (``KimiDeltaAttention``, recurrent mode) from that context's KDA state,
* one MLA mixer (``MultiHeadLatentAttention``) over that context's latent cache,

round-robin over contexts and kinds for ``--kimi-reps`` rounds (median), and fits ms/step = a + b *
context_k (least squares; b in ms per 1k tokens of context) plus the slope of each doubling, so a
super-linear growth shows as rising segment slopes. Nothing is asserted; the numbers are recorded.

    .venv/bin/python benchmarks/decode.py            # full run (~11 min on 2 idle cores) -> results/decode_cpu.json
    .venv/bin/python benchmarks/decode.py --quick    # tiny shapes, a smoke test (seconds)
    .venv/bin/python benchmarks/decode.py --quick --only jax --no-write
    .venv/bin/python benchmarks/decode.py --part kimi
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "decode_cpu.json"
CLEAN_SHARE = 0.05  # a timed call is "clean" when other processes used < 5% of the machine meanwhile


def _load_train_step():
    """benchmarks/train_step.py as a module (benchmarks/ is not a package): its worker protocol and
    machine-description helpers are reused here."""
    name = "_jaxstack_bench_train_step"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


train_step = _load_train_step()
_serve, _cpu_model, _load_avg = train_step._serve, train_step._cpu_model, train_step._load_avg

# The smollm2-135m shape (train_step.py's), and a tiny one for --quick.
FULL_SHAPE = dict(train_step.FULL_SHAPE)
QUICK_SHAPE = {**FULL_SHAPE, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
               "num_heads": 4, "num_kv_heads": 2}

# Kimi Linear for part 2: kimi-linear-small's layout (8 layers, MLA at 4 and 8, MoE after a dense
# first layer, KDA head dim 128) at half width and fewer heads / experts, so that a 16k-token prefill
# fits in ~1 min on 2 CPU cores.
KIMI_SHAPE = dict(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_layers=8,
                  full_attn_layers=(4, 8), kda_layers=(1, 2, 3, 5, 6, 7),
                  num_heads=4, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                  kda_num_heads=4, kda_head_dim=128, num_experts=4, num_experts_per_token=2, num_shared_experts=1,
                  moe_intermediate_size=256, first_k_dense_replace=1, max_position_embeddings=65536)
KIMI_QUICK = "kimi-linear-tiny"  # the preset as is (d 64, 4 layers, MLA at 4)


def _shape(quick: bool) -> dict:
    return dict(QUICK_SHAPE if quick else FULL_SHAPE)


def _prompts(batch: int, length: int, vocab: int, seed: int = 0):
    """[batch, length] int32 prompt ids in [1, vocab), identical on both sides (numpy RNG)."""
    import numpy as np

    return np.random.default_rng(seed).integers(1, vocab, size=(batch, length), dtype=np.int32)


# ---------------------------------------------------------------------------------------- checkpoint


def make_checkpoint(path: Path, shape: dict, init_std: float, source: str) -> str:
    """Writes a random-init Llama of ``shape`` as an HF directory (config.json + model.safetensors).

    source ``"transformers"``: ``transformers.LlamaForCausalLM`` after ``torch.manual_seed(0)``, then
    ``save_pretrained`` (both sides then load an HF checkpoint, as a user would); ``"jaxstack"``:
    jaxstack's init and its ``save_pretrained`` (for ``--only jax`` without torch). No EOS / BOS ids.
    """
    if source == "transformers":
        import torch
        import transformers

        torch.manual_seed(0)
        hf_config = transformers.LlamaConfig(
            vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
            intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
            num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
            rope_theta=shape["rope_theta"], rms_norm_eps=shape["rms_norm_eps"],
            max_position_embeddings=shape["max_position_embeddings"],
            tie_word_embeddings=shape["tie_word_embeddings"], hidden_act="silu", attention_bias=False,
            mlp_bias=False, initializer_range=init_std, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        transformers.LlamaForCausalLM(hf_config).to(torch.float32).save_pretrained(path, safe_serialization=True)
    else:
        from flax import nnx

        from jaxstack.models.checkpoint import save_pretrained
        from jaxstack.models.configs import LlamaConfig
        from jaxstack.models.llama import LlamaForCausalLM

        config = LlamaConfig(**shape, initializer_range=init_std, bos_token_id=None, eos_token_id=None)
        save_pretrained(LlamaForCausalLM(config, policy="fp32", rngs=nnx.Rngs(0)), path)
    return source


# ----------------------------------------------------------------------------------------- workers


def run_jax(args) -> dict:
    import flax
    import jax
    import jaxlib
    import numpy as np

    from jaxstack.inference.sampler import SamplingConfig, generate
    from jaxstack.models.checkpoint import load_pretrained

    model = load_pretrained(args.checkpoint, policy="fp32")
    prompts = list(_prompts(args.batch, args.prompt_len, model.config.vocab_size))
    config = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)  # greedy, no stop tokens
    holder = {}

    def call():
        result = generate(model, prompts, config)
        holder["tokens"] = np.asarray(result.tokens)  # waits for the computation
        holder["lengths"] = np.asarray(result.lengths)

    start = time.perf_counter()
    call()  # traces, compiles and runs once: the untimed warm-up
    first = time.perf_counter() - start
    warm, timed = _serve(call, args.warmup)
    return {
        "framework": "jaxstack",
        "num_params": int(sum(x.size for x in jax.tree.leaves(flax.nnx.state(model)))),
        "first_call_with_compile_s": first,
        "warmup_call_s": warm,
        "calls": timed,
        "tokens": holder["tokens"].tolist(),
        "generated_per_row": holder["lengths"].tolist(),
        "threads": {"xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_devices": len(jax.devices("cpu")),
                    "cpus_available": len(os.sched_getaffinity(0)),
                    "note": "XLA:CPU runs intra-op work on a thread pool sized to the available cores"},
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__},
        "call": f"generate(model, prompts, SamplingConfig(max_new_tokens={args.new_tokens}, temperature=0.0))",
    }


def run_torch(args) -> dict:
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32,
                                                          attn_implementation="sdpa").eval()
    ids = torch.from_numpy(_prompts(args.batch, args.prompt_len, model.config.vocab_size).astype("int64"))
    mask = torch.ones_like(ids)
    holder = {}

    def call():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False,
                                 cache_implementation=args.torch_cache, pad_token_id=0)
        holder["tokens"] = out[:, args.prompt_len:].numpy()

    start = time.perf_counter()
    call()  # the first generate: the untimed warm-up
    first = time.perf_counter() - start
    warm, timed = _serve(call, args.warmup)
    return {
        "framework": "torch",
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "attn_implementation": model.config._attn_implementation,
        "first_call_s": first,
        "warmup_call_s": warm,
        "calls": timed,
        "tokens": holder["tokens"].tolist(),
        "generated_per_row": [len(row) for row in holder["tokens"]],
        "threads": {"torch_num_threads": torch.get_num_threads(),
                    "torch_num_interop_threads": torch.get_num_interop_threads(),
                    "cpus_available": len(os.sched_getaffinity(0))},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "call": (f"model.generate(input_ids, attention_mask=..., max_new_tokens={args.new_tokens}, "
                 f"min_new_tokens={args.new_tokens}, do_sample=False, cache_implementation={args.torch_cache!r})"),
    }


def _kimi_config(quick: bool):
    from jaxstack.models.configs import get_kimi_config

    if quick:
        return get_kimi_config(KIMI_QUICK, kda_backend="xla"), KIMI_QUICK
    name = "kimi-linear-small, scaled (KIMI_SHAPE)"
    return get_kimi_config("kimi-linear-small", **KIMI_SHAPE, kda_backend="xla"), name


def _fit(contexts: list[int], ms: list[float]) -> dict:
    """Least squares ms = a + b * (context / 1024); plus the slope of each step between contexts."""
    xs = [c / 1024 for c in contexts]
    mx, my = statistics.fmean(xs), statistics.fmean(ms)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ms)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ms))
    ss_tot = sum((y - my) ** 2 for y in ms)
    segments = [{"from": c0, "to": c1, "ms_per_1k": (y1 - y0) / ((c1 - c0) / 1024)}
                for c0, c1, y0, y1 in zip(contexts, contexts[1:], ms, ms[1:])]
    return {"intercept_ms": a, "slope_ms_per_1k_tokens": b, "r2": 1 - ss_res / ss_tot if ss_tot else None,
            "max_abs_residual_ms": max(abs(y - a - b * x) for x, y in zip(xs, ms)),
            "ratio_last_over_first": ms[-1] / ms[0], "segment_slopes": segments}


def run_kimi(args) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpy as np
    from flax import nnx

    from jaxstack.inference.sampler import RowSampling, SamplingConfig, select_tokens
    from jaxstack.layers.kda import KDAState
    from jaxstack.models.kimi_linear import KimiLinearForCausalLM, init_cache

    config, name = _kimi_config(args.quick)
    contexts = sorted(args.kimi_contexts)
    steps, chunk, batch = args.kimi_steps, args.kimi_chunk, 1
    if any(c % chunk for c in contexts):
        raise SystemExit(f"--kimi-contexts must be multiples of --kimi-chunk={chunk}, got {contexts}")
    model = KimiLinearForCausalLM(config, policy="fp32", rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    num_params = int(sum(x.size for x in jax.tree.leaves(state)))
    kda_layer = config.layer_types.index("linear_attention")
    mla_layer = config.layer_types.index("full_attention")
    kda_graph, kda_params = nnx.split(model.layers[kda_layer].self_attn)
    mla_graph, mla_params = nnx.split(model.layers[mla_layer].self_attn)

    # -- prefill once, in chunks, snapshotting the cache at each context (untimed)
    @jax.jit
    def prefill_chunk(state, cache, tokens):
        out = nnx.merge(graphdef, state)(tokens, cache=cache)
        return out.cache, out.logits[:, -1]

    total = contexts[-1]
    prompt = jnp.asarray(np.random.default_rng(0).integers(1, config.vocab_size, size=(batch, total), dtype=np.int32))
    cache = init_cache(config, batch, total + steps, jnp.float32)
    snapshots = {}
    start = time.perf_counter()
    for offset in range(0, total, chunk):
        cache, last = prefill_chunk(state, cache, prompt[:, offset:offset + chunk])
        context = offset + chunk
        if context in snapshots or context not in contexts:
            continue
        # (prefill_chunk does not donate, so these arrays stay valid; the latent slice is a copy)
        snapshots[context] = (cache.replace(latents=tuple(b[:, :, :context + steps] for b in cache.latents)), last)
        jax.block_until_ready(snapshots[context])
        print(f"[decode] kimi: prefilled {context} tokens ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)
    prefill_s = time.perf_counter() - start
    del cache

    # -- the timed functions: `steps` decode steps each, in a lax.scan, the cache donated
    sampling = RowSampling.from_config(SamplingConfig(max_new_tokens=steps, temperature=0.0), batch)
    keys = jax.random.split(jax.random.key(0), steps)
    donated = functools.partial(jax.jit, donate_argnums=(1,))

    @donated
    def model_steps(state, cache, logits):
        model = nnx.merge(graphdef, state)

        def step(carry, key):  # the sampler's decode step (greedy)
            cache, logits = carry
            token, _, _ = select_tokens(logits, key, sampling)
            out = model(token[:, None], cache=cache)
            return (out.cache, out.logits[:, -1]), token

        (cache, _), tokens = jax.lax.scan(step, (cache, logits), keys)
        return cache, tokens

    @donated
    def kda_steps(params, kda_state, xs):
        attn = nnx.merge(kda_graph, params)

        def step(s, x):
            y, s = attn(x[:, None], state=s, mode="recurrent")
            return s, y

        return jax.lax.scan(step, kda_state, jnp.moveaxis(xs, 1, 0))

    @donated
    def mla_steps(params, latent, lengths, xs):
        attn = nnx.merge(mla_graph, params)

        def step(carry, x):
            latent, lengths = carry
            y, latent = attn(x[:, None], None, cache=(latent, lengths))
            return (latent, lengths + 1), y

        return jax.lax.scan(step, (latent, lengths), jnp.moveaxis(xs, 1, 0))

    xs = jax.random.normal(jax.random.key(1), (batch, steps, config.hidden_size), jnp.float32)

    def prepare(kind, context):
        """A zero-argument call of one timed function, its donated input already copied (untimed)."""
        cache, last = snapshots[context]
        if kind == "model":
            fresh = jax.block_until_ready(jax.tree.map(jnp.copy, cache))
            return lambda: model_steps(state, fresh, last)
        if kind == "kda":
            fresh = KDAState(conv=jnp.copy(cache.convs[0][0]), recurrent=jnp.copy(cache.recurrents[0][0]))
            jax.block_until_ready(fresh)
            return lambda: kda_steps(kda_params, fresh, xs)
        fresh = jax.block_until_ready(jnp.copy(cache.latents[0][0]))
        return lambda: mla_steps(mla_params, fresh, cache.lengths, xs)

    kinds = ("model", "kda", "mla")
    compile_s = {}
    for context in contexts:  # compile (one shape per context for model / mla) + one untimed run
        for kind in kinds:
            fn = prepare(kind, context)
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            compile_s[f"{kind}@{context}"] = time.perf_counter() - t0
    samples = {kind: {c: [] for c in contexts} for kind in kinds}
    cpu_samples = {kind: {c: [] for c in contexts} for kind in kinds}
    load_before = _load_avg()
    busy0, own0, wall0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
    for rep in range(args.kimi_reps):  # round-robin, so load drift spreads over all contexts
        order = contexts if rep % 2 == 0 else contexts[::-1]
        for context in order:
            for kind in kinds:
                fn = prepare(kind, context)
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn())
                samples[kind][context].append((time.perf_counter() - t0) * 1000 / steps)
                cpu_samples[kind][context].append((time.process_time() - c0) * 1000 / steps)
    other_share = None
    if busy0 is not None:
        other = max(0.0, _busy_cpu_s() - busy0 - (time.process_time() - own0))
        other_share = other / ((time.perf_counter() - wall0) * (os.cpu_count() or 1))
    series = {}
    for kind in kinds:
        ms = [statistics.median(samples[kind][c]) for c in contexts]
        series[kind] = {
            "ms_per_step": dict(zip(map(str, contexts), ms)),
            "cpu_ms_per_step": {str(c): statistics.median(cpu_samples[kind][c]) for c in contexts},
            "samples_ms": {str(c): samples[kind][c] for c in contexts},
            "fit": _fit(contexts, ms),
        }
    kda_slope = series["kda"]["fit"]["slope_ms_per_1k_tokens"]
    mla_slope = series["mla"]["fit"]["slope_ms_per_1k_tokens"]
    return {
        "model": name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()},
        "num_params": num_params,
        "num_kda_layers": config.num_kda_layers,
        "num_mla_layers": config.num_mla_layers,
        "batch": batch,
        "contexts": contexts,
        "decode_steps_per_call": steps,
        "reps": args.kimi_reps,
        "prefill_chunk": chunk,
        "prefill_s": prefill_s,
        "compile_and_first_run_s": compile_s,
        "load_avg_before_timing": load_before,
        "load_avg_after_timing": _load_avg(),
        "other_cpu_share_during_timing": other_share,
        "kinds": {"model": "whole model, one greedy decode step (ms/token)",
                  "kda": f"layer {kda_layer + 1}'s KDA mixer, recurrent decode step",
                  "mla": f"layer {mla_layer + 1}'s MLA mixer, decode step over context + step slots"},
        "series": series,
        "model_slope_predicted_from_mixers": config.num_mla_layers * mla_slope + config.num_kda_layers * kda_slope,
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__},
    }


# ------------------------------------------------------------------------------------------ driver


class Worker(train_step.Worker):
    """train_step.py's pipe-driven worker, started with this script's worker command."""

    def __init__(self, cmd: list[str], which: str):
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        repo = str(HERE.parent)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.which = which
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def _worker_cmd(args, which: str, batch: int | None = None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, "--prompt-len", str(args.prompt_len),
           "--new-tokens", str(args.new_tokens), "--warmup", str(args.warmup), "--torch-cache", args.torch_cache,
           "--init-std", str(args.init_std), "--kimi-steps", str(args.kimi_steps), "--kimi-reps", str(args.kimi_reps),
           "--kimi-chunk", str(args.kimi_chunk), "--kimi-contexts", *map(str, args.kimi_contexts)]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    if args.checkpoint:
        cmd += ["--checkpoint", str(args.checkpoint)]
    if args.checkpoint_source:
        cmd += ["--checkpoint-source", args.checkpoint_source]
    if args.quick:
        cmd.append("--quick")
    return cmd


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine (all cores, every process) has been busy since boot (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields)
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _summarise(result: dict, batch: int, new_tokens: int) -> dict:
    walls = [c["wall_s"] for c in result["calls"]]
    result["median_call_s"] = statistics.median(walls)
    result["min_call_s"] = min(walls)
    result["median_call_cpu_s"] = statistics.median(c["cpu_s"] for c in result["calls"])
    result["ms_per_step"] = 1000 * result["median_call_s"] / new_tokens
    result["tokens_per_s"] = batch * new_tokens / result["median_call_s"]
    result["tokens_per_s_best_call"] = batch * new_tokens / result["min_call_s"]
    shares = [c["other_cpu_share"] for c in result["calls"] if "other_cpu_share" in c]
    if shares:
        result["max_other_cpu_share"] = max(shares)
    return result


def _agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How far two [B, N] greedy generations agree: the fraction of equal tokens, the mean length of
    the common prefix per row (as a fraction of N), and the rows whose first 8 tokens agree."""
    n = len(a[0])
    equal = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    prefixes = []
    for ra, rb in zip(a, b):
        k = 0
        while k < n and ra[k] == rb[k]:
            k += 1
        prefixes.append(k)
    return {"token_match_fraction": equal / (len(a) * n), "mean_common_prefix_fraction": statistics.fmean(prefixes) / n,
            "common_prefix_per_row": prefixes, "rows_first_8_agree": sum(p >= min(8, n) for p in prefixes) / len(a),
            "row0_first_16": {"jaxstack": a[0][:16], "torch": b[0][:16]}}


def _run_llama(args, record: dict, halves: list[str]) -> None:
    shape = _shape(args.quick)
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as tmp:
        args.checkpoint = Path(tmp) / "checkpoint"
        args.checkpoint_source = "transformers" if "torch" in halves else "jaxstack"
        print(f"[decode] writing the checkpoint ({args.checkpoint_source}) ...", file=sys.stderr, flush=True)
        if args.checkpoint_source == "jaxstack":  # in this process (jax only; saves a subprocess start)
            make_checkpoint(args.checkpoint, shape, args.init_std, "jaxstack")
        else:  # torch stays out of the driver process
            subprocess.run(_worker_cmd(args, "checkpoint"), check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        record["checkpoint_source"] = args.checkpoint_source
        record["llama"] = {}
        for batch, reps in zip(args.batches, args.reps):
            workers = {}
            for which in halves:  # set-up and the warm-up call, one at a time (untimed)
                print(f"[decode] B={batch} {which}: set-up and warm-up call ...", file=sys.stderr, flush=True)
                workers[which] = Worker(_worker_cmd(args, which, batch), which)
                workers[which].wait_ready()
            entry = {"batch": batch, "timed_calls": reps, "load_avg_before": _load_avg()}
            other = {which: [] for which in halves}  # CPU seconds other processes used during each call
            for i in range(reps):  # alternate sides, one call at a time
                for which in (halves if i % 2 == 0 else halves[::-1]):
                    busy = _busy_cpu_s()
                    sample = workers[which].step()
                    if busy is not None:
                        other[which].append(max(0.0, _busy_cpu_s() - busy - sample["cpu_s"]))
                    share = f", other processes {other[which][-1]:.1f} cpu s" if other[which] else ""
                    print(f"[decode] B={batch} call {i + 1}/{reps} {which}: {sample['wall_s']:.2f} s "
                          f"(cpu {sample['cpu_s']:.1f} s{share})", file=sys.stderr, flush=True)
            for which in halves:
                key = "jaxstack" if which == "jax" else "torch"
                result = workers[which].finish()
                for call, seconds in zip(result["calls"], other[which]):
                    call["other_cpu_s"] = seconds
                    call["other_cpu_share"] = seconds / (call["wall_s"] * (os.cpu_count() or 1))
                entry[key] = _summarise(result, batch, args.new_tokens)
                print(f"[decode] B={batch} {which}: median {entry[key]['median_call_s']:.2f} s, "
                      f"{entry[key]['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
            entry["load_avg_after"] = _load_avg()
            if "jaxstack" in entry and "torch" in entry:
                jx, pt = entry["jaxstack"], entry["torch"]
                entry["ratio_jaxstack_over_torch"] = jx["tokens_per_s"] / pt["tokens_per_s"]
                entry["ratio_best_call"] = jx["tokens_per_s_best_call"] / pt["tokens_per_s_best_call"]
                entry["ratio_cpu_time"] = pt["median_call_cpu_s"] / jx["median_call_cpu_s"]
                entry["agreement"] = _agreement(jx["tokens"], pt["tokens"])
                # the same ratio over the calls that other processes left alone (< 5% of the machine)
                clean = {key: [c["wall_s"] for c in entry[key]["calls"]
                               if c.get("other_cpu_share", 1.0) < CLEAN_SHARE] for key in ("jaxstack", "torch")}
                entry["clean_calls"] = {key: len(walls) for key, walls in clean.items()}
                if all(clean.values()):
                    jx_clean, pt_clean = statistics.median(clean["jaxstack"]), statistics.median(clean["torch"])
                    entry["ratio_clean_calls"] = pt_clean / jx_clean
                print(f"[decode] B={batch} ratio jaxstack/torch: {entry['ratio_jaxstack_over_torch']:.2f}, "
                      f"token agreement {entry['agreement']['token_match_fraction']:.3f}", file=sys.stderr, flush=True)
            for key in ("jaxstack", "torch"):
                if key in entry:
                    entry[key]["tokens_row0_first_16"] = entry[key].pop("tokens")[0][:16]
            record["llama"][str(batch)] = entry
        if record["llama"] and all("ratio_jaxstack_over_torch" in e for e in record["llama"].values()):
            ratios = [e["ratio_jaxstack_over_torch"] for e in record["llama"].values()]
            record["min_ratio_jaxstack_over_torch"] = min(ratios)


def _run_kimi(args, record: dict) -> None:
    print(f"[decode] kimi: contexts {sorted(args.kimi_contexts)} ...", file=sys.stderr, flush=True)
    worker = Worker(_worker_cmd(args, "kimi"), "kimi")
    record["kimi"] = worker._read()
    worker.proc.wait()
    for kind, s in record["kimi"]["series"].items():
        ms = ", ".join(f"{c}: {v:.2f}" for c, v in s["ms_per_step"].items())
        print(f"[decode] kimi {kind}: ms/step {{{ms}}}; slope {s['fit']['slope_ms_per_1k_tokens']:.4f} ms per 1k",
              file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few tokens (smoke test)")
    parser.add_argument("--part", choices=("all", "llama", "kimi"), default="all")
    parser.add_argument("--only", choices=("jax", "torch"), default=None, help="llama part: one side only")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 16; quick: 1 2)")
    parser.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 512; quick: 16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 128; quick: 8)")
    parser.add_argument("--reps", type=int, nargs="+", default=None,
                        help="timed calls per side: one number for every batch size or one per batch size "
                             "(default 3 2: 3 at batch 1, 2 at batch 16, to keep the run near 12 min; quick: 1)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls after the first (warm-up) call")
    parser.add_argument("--torch-cache", default="static", help="transformers cache_implementation (default static)")
    parser.add_argument("--init-std", type=float, default=0.1, help="random-init std of the Llama weights")
    parser.add_argument("--kimi-contexts", type=int, nargs="+", default=None,
                        help="context lengths (default 1024 2048 4096 8192 16384; quick: 32 64)")
    parser.add_argument("--kimi-steps", type=int, default=None,
                        help="decode steps per timed call (default 16; quick: 2)")
    parser.add_argument("--kimi-reps", type=int, default=None, help="timed rounds (default 5; quick: 1)")
    parser.add_argument("--kimi-chunk", type=int, default=None, help="prefill chunk tokens (default 1024; quick: 32)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-write", action="store_true", help="print the JSON, do not write it")
    parser.add_argument("--worker", choices=("jax", "torch", "kimi", "checkpoint"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-source", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        defaults = dict(batches=[1, 2], prompt_len=16, new_tokens=8, reps=[1], kimi_contexts=[32, 64], kimi_steps=2,
                        kimi_reps=1, kimi_chunk=32)
    else:
        defaults = dict(batches=[1, 16], prompt_len=512, new_tokens=128, reps=[3, 2],
                        kimi_contexts=[1024, 2048, 4096, 8192, 16384], kimi_steps=16, kimi_reps=5, kimi_chunk=1024)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.reps) == 1:
        args.reps = args.reps * len(args.batches)
    if len(args.reps) != len(args.batches):
        parser.error(f"--reps: expected 1 or {len(args.batches)} numbers (one per batch size), got {args.reps}")

    if args.worker is not None:
        if args.worker == "checkpoint":
            make_checkpoint(args.checkpoint, _shape(args.quick), args.init_std, args.checkpoint_source)
            return {}
        result = {"jax": run_jax, "torch": run_torch, "kimi": run_kimi}[args.worker](args)
        print(json.dumps(result), flush=True)
        return result

    args.checkpoint = args.checkpoint_source = None
    record = {
        "benchmark": "decode",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/decode.py"]
                            + list(argv if argv is not None else sys.argv[1:])),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": _load_avg(),
    }
    if args.part in ("all", "llama"):
        record["llama_workload"] = {
            "model": "smollm2-135m shape, random init" + (" (quick: tiny shape)" if args.quick else ""),
            "shape": _shape(args.quick), "init_std": args.init_std, "dtype": "float32", "batches": args.batches,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "timed_calls_per_batch": dict(zip(map(str, args.batches), args.reps)),
            "warmup_calls": 1 + args.warmup, "decoding": "greedy, no stop tokens",
            "torch_cache_implementation": args.torch_cache,
        }
        start = time.perf_counter()
        _run_llama(args, record, ["jax", "torch"] if args.only is None else [args.only])
        record["llama_wall_s"] = time.perf_counter() - start
    if args.part in ("all", "kimi"):
        start = time.perf_counter()
        _run_kimi(args, record)
        record["kimi_wall_s"] = time.perf_counter() - start
    record["load_avg_at_end"] = _load_avg()
    if args.no_write:
        print(json.dumps(record, indent=2))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"[decode] wrote {args.out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
