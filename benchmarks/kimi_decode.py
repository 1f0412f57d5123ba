"""Kimi Linear decode: ms/token vs context for all-MLA, the 3:1 hybrid and all-KDA, and the library's
in-place decode step against a hand-written in-place loop over the same cache (issue 21, item 4).

Model: ``kimi-linear-tiny`` (d 64, 4 layers, MLA latent 32 + 8 = 40 values per token, KDA 4 heads x 16,
MoE 2-of-4 + 1 shared after a dense first layer), float32, ``kda_backend="xla"``, batch 1, with three
layer schedules: all-MLA (4 MLA layers), hybrid (KDA 1-3, MLA 4) and all-KDA (4 KDA layers).

Cache: for each context ``c`` a cache of ``c + steps`` slots filled with random values (MLA latents, KDA
states, conv inputs) and ``lengths = c``: the work per decoded token is what it is after a real prefill,
without paying for a 64k-token prefill on 2 CPU cores.

Timed: one jitted call = ``--steps`` greedy decode steps in a ``lax.fori_loop`` (argmax of the last
logits fed back), the cache donated (a fresh copy made before each call, untimed). Per (arm, context):
one untimed compile call, then ``--reps`` timed calls, round-robin over contexts and arms so that load
drift spreads over all of them; the median call / steps -> ms/token. ``os.getloadavg()`` is recorded
before and after each call, and per round the CPU share other processes used meanwhile (``/proc/stat``
busy time minus this process's own, as in ``decode.py``; per call it would be below the clock tick).

* ``library``: ``KimiLinearForCausalLM(token, cache=cache)``, the model's decode step.
* ``hand``: a hand-written decode step over the same weights and the same cache (each layer's buffers
  passed as plain arrays): per MLA layer the absorbed attention written out over the latent buffer,
  the new latent written with ``lax.dynamic_update_slice`` after the buffer's reads; per KDA layer the
  projections, the short conv as a shift of its W-1 input rows, ``kda_decode_step``, the gated norm.
  Stateless parts (embedding, RMSNorm, the dense / MoE FFN, the LM head) call the library's modules:
  they are the same work on both sides and do not touch the cache. Checked to give the library's logits
  (max-abs <= 1e-4 over 4 greedy steps at the first context) and to compile with no cache-sized copy.

Reported per arm: ms/token per context, the log-log slope of ms/token vs context (least squares over
all contexts and over the contexts >= 8k: ~0 for a fixed-size state, -> 1 where reading the cache
dominates), and at ``--check-context`` (16k) library / hand (acceptance: <= 1.3).

    .venv/bin/python benchmarks/kimi_decode.py                       # -> results/kimi_decode_cpu.{json,png}
    .venv/bin/python benchmarks/kimi_decode.py --contexts 1024 4096 --reps 2 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.layers.kda import gated_rms_norm, l2_normalize
from jaxstack.layers.norms import rms_norm
from jaxstack.models.configs import get_kimi_config
from jaxstack.models.kimi_linear import KimiCache, KimiLinearForCausalLM, init_cache
from jaxstack.pallas_kernels.kda import kda_decode_step, kda_gate_softplus

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {
    "all-MLA": ["full_attention"] * 4,
    "hybrid 3:1": ["linear_attention"] * 3 + ["full_attention"],
    "all-KDA": ["linear_attention"] * 4,
}


def _busy_cpu_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (/proc/stat), or None off Linux."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------------------
# The cache (random contents) and the two decode steps


def random_cache(config, context: int, steps: int, seed: int = 0) -> KimiCache:
    """A cache of ``context + steps`` slots, random contents, ``lengths = context`` (batch 1)."""
    cache = init_cache(config, 1, context + steps)
    leaves, treedef = jax.tree.flatten(cache.replace(lengths=None))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, leaves).replace(lengths=jnp.full((1,), context, jnp.int32))


def _hand_weights(model: KimiLinearForCausalLM):
    """Per layer the arrays the hand-written step uses (float32, the model's layout)."""
    weights = []
    for layer in model.layers:
        a = layer.self_attn
        if layer.kind == "linear_attention":
            conv = jnp.concatenate([a.q_conv1d.weight[...], a.k_conv1d.weight[...], a.v_conv1d.weight[...]], -1)
            weights.append({"qkv": jnp.concatenate([a.q_proj[...], a.k_proj[...], a.v_proj[...]], 1), "conv": conv,
                            "f_a": a.f_a_proj[...], "f_b": a.f_b_proj[...], "A_log": a.A_log[...],
                            "dt_bias": a.dt_bias[...], "b": a.b_proj[...], "g_a": a.g_a_proj[...],
                            "g_b": a.g_b_proj[...], "o_norm": a.o_norm[...], "o": a.o_proj[...]})
        else:
            w_uk, w_uv = jnp.split(a.kv_b_proj[...], [a.qk_nope_head_dim], axis=-1)
            weights.append({"q": a.q_proj[...], "kv_a": a.kv_a_proj_with_mqa[...],
                            "kv_norm": a.kv_a_layernorm.scale[...], "w_uk": w_uk, "w_uv": w_uv, "o": a.o_proj[...]})
    return weights


def hand_step(model: KimiLinearForCausalLM, weights, buffers, position, token):
    """One decode step written out. buffers: per layer (conv [1, W-1, 3HK], state [1, H, K, V]) or
    latent [1, S, C]; position: int32 scalar (slots filled before this token); token: [1] int32.
    Returns (new buffers, logits [1, vocab])."""
    config = model.config
    eps = config.rms_norm_eps
    x = model.embed(token[:, None])[:, 0]  # [1, d]
    new_buffers = []
    for layer, w, buf in zip(model.layers, weights, buffers):
        h = layer.input_norm(x)
        if layer.kind == "linear_attention":
            conv_state, state = buf
            heads, k = layer.self_attn.num_heads, layer.self_attn.head_dim
            qkv = jnp.einsum("bd,dhk->bhk", h, w["qkv"]).reshape(1, -1)  # [1, 3HK]
            window = jnp.concatenate([conv_state, qkv[:, None]], axis=1)  # [1, W, 3HK]
            qkv = jax.nn.silu(jnp.einsum("bwc,wc->bc", window, w["conv"])).reshape(1, 3, heads, k)
            q = l2_normalize(qkv[:, 0], policy=model.policy)
            kk = l2_normalize(qkv[:, 1], policy=model.policy)
            g = kda_gate_softplus(jnp.einsum("br,rhk->bhk", h @ w["f_a"], w["f_b"]), w["A_log"], w["dt_bias"])
            beta = jax.nn.sigmoid(h @ w["b"])
            o, state = kda_decode_step(q, kk, qkv[:, 2], g, beta, state)
            gate = jnp.einsum("br,rhk->bhk", h @ w["g_a"], w["g_b"])
            o = gated_rms_norm(o, gate, w["o_norm"], eps=eps, policy=model.policy)
            mixed = jnp.einsum("bhk,hkd->bd", o, w["o"])
            new_buffers.append((window[:, 1:], state))
        else:
            attn = layer.self_attn
            q = jnp.einsum("bd,dhq->bhq", h, w["q"])
            q_nope, q_rot = q[..., : attn.qk_nope_head_dim], q[..., attn.qk_nope_head_dim:]
            compressed = h @ w["kv_a"]
            c_kv = rms_norm(compressed[:, : attn.kv_lora_rank], w["kv_norm"], eps=1e-6, policy=model.policy)
            new = jnp.concatenate([c_kv, compressed[:, attn.kv_lora_rank:]], -1)  # [1, C]
            q_full = jnp.concatenate([jnp.einsum("bhn,chn->bhc", q_nope, w["w_uk"]), q_rot], -1)  # [1, H, C]
            old = jnp.einsum("bhc,bsc->bhs", q_full, buf) * attn.scale
            old = jnp.where(jnp.arange(buf.shape[1]) < position, old, -jnp.inf)
            own = jnp.einsum("bhc,bc->bh", q_full, new)[..., None] * attn.scale
            top = jnp.maximum(old.max(-1, keepdims=True), own)
            p_old, p_own = jnp.exp(old - top), jnp.exp(own - top)
            total = p_old.sum(-1, keepdims=True) + p_own
            latent = (jnp.einsum("bsc,bhs->bhc", buf, p_old / total) + (p_own / total) * new[:, None])
            out = jnp.einsum("bhc,chv->bhv", latent[..., : attn.kv_lora_rank], w["w_uv"])
            mixed = jnp.einsum("bhv,hvd->bd", out, w["o"])
            # Written after the reads (the update depends on them), so the buffer is updated in place.
            new = new + 0.0 * jnp.isfinite(out[0, 0, 0]).astype(new.dtype)
            new_buffers.append(jax.lax.dynamic_update_slice(buf, new[:, None], (0, position, 0)))
        x = x + mixed
        x = x + layer.mlp(layer.post_attention_norm(x))
    return tuple(new_buffers), model.norm(x) @ model.lm_head[...]


def _to_buffers(model, cache: KimiCache):
    slots, out = model._slot, []
    for index, layer in enumerate(model.layers):
        if layer.kind == "linear_attention":
            out.append((cache.convs[slots[index]][0], cache.recurrents[slots[index]][0]))
        else:
            out.append(cache.latents[slots[index]][0])
    return tuple(out)


def make_loops(model, steps: int):
    """(library_loop, hand_loop): jitted ``steps``-token greedy decodes, the cache / buffers donated.
    Each takes (state, cache or buffers, position, token [1]) and returns (cache or buffers, last token)."""
    graphdef, _ = nnx.split(model)

    def library(state, cache, position, token):
        m = nnx.merge(graphdef, state)

        def body(_, carry):
            cache, token = carry
            out = m(token[:, None], cache=cache)
            return out.cache, jnp.argmax(out.logits[:, -1], -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, steps, body, (cache, token))

    def hand(state, buffers, position, token):
        m = nnx.merge(graphdef, state)
        weights = _hand_weights(m)

        def body(i, carry):
            buffers, token = carry
            buffers, logits = hand_step(m, weights, buffers, position + i, token)
            return buffers, jnp.argmax(logits, -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, steps, body, (buffers, token))

    return jax.jit(library, donate_argnums=(1,)), jax.jit(hand, donate_argnums=(1,))


def check_hand_matches_library(model, context: int, steps: int = 4) -> float:
    """Max-abs difference of the logits of ``steps`` greedy steps, library vs hand (same cache)."""
    state = nnx.state(model)
    graphdef = nnx.graphdef(model)
    cache = random_cache(model.config, context, steps)
    buffers = _to_buffers(model, cache)
    weights = _hand_weights(model)
    token = jnp.ones((1,), jnp.int32)
    worst = 0.0

    @jax.jit
    def both(state, cache, buffers, position, token):
        m = nnx.merge(graphdef, state)
        out = m(token[:, None], cache=cache)
        buffers, logits = hand_step(m, weights, buffers, position, token)
        return out.cache, buffers, out.logits[:, -1], logits

    for i in range(steps):
        cache, buffers, a, b = both(state, cache, buffers, jnp.int32(context + i), token)
        worst = max(worst, float(jnp.abs(a - b).max()))
        token = jnp.argmax(a, -1).astype(jnp.int32)
    return worst


def _log_slope(contexts, ms) -> float | None:
    if len(contexts) < 2:
        return None
    xs, ys = np.log(np.asarray(contexts, float)), np.log(np.asarray(ms, float))
    return float(np.polyfit(xs, ys, 1)[0])


# ----------------------------------------------------------------------------------------------------


def run(args) -> dict:
    contexts = sorted(args.contexts)
    base = get_kimi_config("kimi-linear-tiny", kda_backend="xla")
    arms = {name: ARMS[name] for name in args.arms}
    models, loops, hand_error = {}, {}, {}
    for name, schedule in arms.items():
        config = base.with_schedule(schedule)
        models[name] = KimiLinearForCausalLM(config, policy="fp32", rngs=nnx.Rngs(0))
        loops[name] = make_loops(models[name], args.steps)
        if not args.no_hand:
            hand_error[name] = check_hand_matches_library(models[name], contexts[0])
            print(f"[kimi_decode] {name}: hand vs library logits max-abs {hand_error[name]:.2e}", file=sys.stderr)
            assert hand_error[name] <= 1e-4, hand_error
    hand_contexts = [c for c in contexts if c in args.hand_contexts] if not args.no_hand else []
    kinds = [(name, "library", c) for name in arms for c in contexts] + [(name, "hand", c) for name in arms
                                                                        for c in hand_contexts]
    caches = {}

    def call(name, kind, context):
        """A zero-argument timed call; its donated input is made (and the old one dropped) untimed."""
        model = models[name]
        key = (name, context)
        if key not in caches:
            caches.clear()  # one context's caches at a time (64k all-MLA: 4 x 10 MB)
            caches[key] = random_cache(model.config, context, args.steps)
        fresh = jax.tree.map(jnp.copy, caches[key])
        if kind == "hand":
            fresh = _to_buffers(model, fresh)
        jax.block_until_ready(fresh)
        state = nnx.state(model)
        fn = loops[name][0 if kind == "library" else 1]
        position, token = jnp.int32(context), jnp.ones((1,), jnp.int32)
        return lambda: fn(state, fresh, position, token)

    compile_s = {}
    for name, kind, context in kinds:
        fn = call(name, kind, context)
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[f"{name}/{kind}@{context}"] = time.perf_counter() - t0
    samples = {(n, k, c): [] for n, k, c in kinds}
    loads = {(n, k, c): [] for n, k, c in kinds}
    rounds = []
    for rep in range(args.reps):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        # Other processes' CPU share over the whole round (one call is a few ms: below /proc/stat's tick).
        busy0, own0, round0, load0 = _busy_cpu_s(), time.process_time(), time.perf_counter(), _load()
        for key in order:
            fn = call(*key)
            before = _load()
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            samples[key].append((time.perf_counter() - t0) * 1e3 / args.steps)
            loads[key].append([before, _load()])
        seconds = time.perf_counter() - round0
        share = None
        if busy0 is not None:
            used = max(0.0, _busy_cpu_s() - busy0 - (time.process_time() - own0))
            share = used / (seconds * (os.cpu_count() or 1))
        rounds.append({"seconds": seconds, "load_avg_before_after": [load0, _load()], "other_cpu_share": share})
        print(f"[kimi_decode] round {rep + 1}/{args.reps}: {seconds:.1f} s, others used "
              f"{'?' if share is None else f'{100 * share:.0f}%'} of the CPUs, load {_load()}", file=sys.stderr)
    series = {}
    for name in arms:
        for kind in ("library", "hand"):
            cs = contexts if kind == "library" else hand_contexts
            if not cs:
                continue
            ms = [statistics.median(samples[(name, kind, c)]) for c in cs]
            long = [(c, m) for c, m in zip(cs, ms) if c >= 8192]
            series.setdefault(name, {})[kind] = {
                "ms_per_token": dict(zip(map(str, cs), ms)),
                "samples_ms": {str(c): samples[(name, kind, c)] for c in cs},
                "load_avg_before_after": {str(c): loads[(name, kind, c)] for c in cs},
                "loglog_slope_all": _log_slope(cs, ms),
                "loglog_slope_from_8k": _log_slope([c for c, _ in long], [m for _, m in long]),
            }
    ratio = {}
    for name in arms:
        s = series.get(name, {})
        if "hand" in s and str(args.check_context) in s["hand"]["ms_per_token"]:
            lib = s["library"]["ms_per_token"][str(args.check_context)]
            hand = s["hand"]["ms_per_token"][str(args.check_context)]
            ratio[name] = {"library_ms": lib, "hand_ms": hand, "ratio": lib / hand, "within_1.3x": lib / hand <= 1.3}
    import flax
    import jaxlib

    return {
        "model": "kimi-linear-tiny, float32, kda_backend=xla, batch 1",
        "arms": {name: list(schedule) for name, schedule in arms.items()},
        "contexts": contexts,
        "hand_contexts": hand_contexts,
        "steps_per_call": args.steps,
        "reps": args.reps,
        "statistic": "median over reps of (call wall time / steps)",
        "hand_vs_library_logits_max_abs": hand_error,
        "check_context": args.check_context,
        "library_over_hand": ratio,
        "series": series,
        "rounds": rounds,
        "compile_and_first_call_s": compile_s,
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": _load(),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__},
        "label": args.label,
    }


def plot(result: dict, path: Path, compare: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    colors = {"all-MLA": "tab:red", "hybrid 3:1": "tab:purple", "all-KDA": "tab:blue"}
    for name, s in result["series"].items():
        lib = s["library"]
        cs = [int(c) for c in lib["ms_per_token"]]
        slope = lib["loglog_slope_from_8k"]
        label = f"{name} (library; slope from 8k {slope:.2f})" if slope is not None else f"{name} (library)"
        ax.plot(cs, list(lib["ms_per_token"].values()), "o-", color=colors.get(name), label=label)
        if "hand" in s:
            hc = [int(c) for c in s["hand"]["ms_per_token"]]
            ax.plot(hc, list(s["hand"]["ms_per_token"].values()), "x", markersize=10, mew=2, color=colors.get(name),
                    label=f"{name} (hand-written in-place loop)")
    if compare is not None:
        for name, s in compare["series"].items():
            lib = s["library"]
            ax.plot([int(c) for c in lib["ms_per_token"]], list(lib["ms_per_token"].values()), "s--", alpha=0.6,
                    color=colors.get(name), label=f"{name} ({compare.get('label', 'compare')})")
    first = min(int(c) for s in result["series"].values() for c in s["library"]["ms_per_token"])
    last = max(int(c) for s in result["series"].values() for c in s["library"]["ms_per_token"])
    mla = result["series"].get("all-MLA", {}).get("library", {}).get("ms_per_token")
    if mla:  # a slope-1 guide through all-MLA's longest context
        ax.plot([first, last], [mla[str(last)] * first / last, mla[str(last)]], ":", color="gray",
                label="slope 1 (ms ~ context)")
    mla_long = result["series"].get("all-MLA", {}).get("library", {}).get("ms_per_token", {})
    hybrid_long = result["series"].get("hybrid 3:1", {}).get("library", {}).get("ms_per_token", {})
    ours = (f"here at {last // 1024}k: hybrid {mla_long[str(last)] / hybrid_long[str(last)]:.1f}x faster than all-MLA\n"
            if str(last) in mla_long and str(last) in hybrid_long else "")
    note = (ours.strip() + ". " if ours else "") + ("Paper (Kimi Linear, Fig. 1b; the paper's number, 48B on "
                                                     "GPUs): hybrid TPOT 6.3x lower than MLA at 1M context "
                                                     "(1.84 vs 11.48 ms), off this axis.")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens in the cache)")
    ax.set_ylabel("decode ms / token (median)")
    loads = [l for s in result["series"].values() for k in s.values() for v in k["load_avg_before_after"].values()
             for pair in v for l in pair[:1]]
    load_text = f"; load avg (1 min) {min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}" if loads else ""
    ax.set_title(f"Kimi Linear decode, {result['model']}\n{result['cpu_count']} CPUs{load_text}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.5, 0.015, note, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=16, help="decode steps per timed call")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per (arm, context); the median is kept")
    parser.add_argument("--check-context", type=int, default=16384)
    parser.add_argument("--hand-contexts", type=int, nargs="+", default=[1024, 16384, 65536])
    parser.add_argument("--no-hand", action="store_true", help="time the library step only")
    parser.add_argument("--label", default="in-place cache")
    parser.add_argument("--out", default=str(RESULTS / "kimi_decode_cpu.json"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--compare", help="another run's JSON, drawn dashed in the plot (e.g. the main branch's)")
    args = parser.parse_args(argv)
    result = run(args)
    for name, s in result["series"].items():
        lib = s["library"]
        print(f"[kimi_decode] {name}: ms/token " + ", ".join(f"{c}: {m:.2f}" for c, m in lib["ms_per_token"].items())
              + f"; log-log slope all {lib['loglog_slope_all']:.2f}, from 8k {lib['loglog_slope_from_8k']}",
              file=sys.stderr)
    for name, r in result["library_over_hand"].items():
        print(f"[kimi_decode] {name} @ {result['check_context']}: library {r['library_ms']:.2f} ms, hand "
              f"{r['hand_ms']:.2f} ms, ratio {r['ratio']:.2f}", file=sys.stderr)
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        compare = json.loads(Path(args.compare).read_text()) if args.compare else None
        plot(result, out.with_suffix(".png"), compare)
        print(f"[kimi_decode] wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
