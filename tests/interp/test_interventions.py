"""Interventions and capture as data in the shared forward (DESIGN principle 5, evals_style.md 2.9 tests a-f).

* a zero edit (zero scales, or an empty window) is bit-identical to no edit; layers before the edited one
  are bit-identical (captured); an edit on row i leaves row j bit-identical; loop == scan with an edit;
* a 4 layers x 4 strengths x 2 vectors sweep compiles once (loop and scan);
* cached prefill + decode with an edit == the uncached forward with it, windows starting in the prompt
  and mid-generation (Llama with a KVCache; Kimi Linear: chunk prefill, recurrent decode);
* the three edit kinds do what they say on the captured residual; the pruned last layer (logits_indices)
  still applies its edit; the final residual (layer L-1 "post") is what the final norm reads;
* bad shapes / layers / positions raise ValueErrors naming the field.

Tolerances: float32. Loop vs scan and zero-edit checks are exact (the same jitted math; the scan body
and the unrolled loop give identical logits without biases, as tests/models/test_llama.py shows).
Decode vs full forward: 1e-5 max-abs on logits of std ~1 (measured ~1e-6: summation order of the
cached attention / KDA recurrent vs chunk forms only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.interp import NO_END, Capture, Intervention
from jaxstack.models.kimi_linear import init_cache as kimi_init_cache
from jaxstack.models.llama import init_cache

L, D = 4, 64
# One token shape per model family and conftest's one capture structure (``run``), so that the tests
# (and the other files in tests/interp) share compiled programs.
B, T = 2, 9  # Llama
KIMI_T = 14  # Kimi Linear: two KDA chunks of 8
NAMES = ("residual", "attention", "mlp")


@nnx.jit
def forward_cached(model, tokens, cache, intervention):
    return model(tokens, cache=cache, intervention=intervention)


@nnx.jit(static_argnames=("mode",))
def forward_kimi_cached(model, tokens, cache, intervention, mode):
    return model(tokens, cache=cache, intervention=intervention, mode=mode)


def tokens_of(shape, seed=1, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def vector(seed=2, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), (D,))


def assert_equal(got, expected, **kwargs):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), **kwargs)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------------------------------
# Bit identity


@pytest.mark.parametrize("kind", ["add", "replace_with", "project_out"])
def test_zero_edit_is_bit_identical(llama, llama_scan, kind, run):
    """Zero scales, an empty window, or ``Intervention.none``: the same logits and captures, bit for bit
    (every kind in the layer loop; "add" under scan too)."""
    tokens = tokens_of((B, T))
    build = getattr(Intervention, kind)
    zero_scale = build(vector(), layers=[1, 2], num_layers=L, strength=0.0)
    empty_window = build(vector(), layers=[1, 2], num_layers=L, strength=3.0, start=5, end=5)
    edits = (zero_scale, empty_window) + ((Intervention.none(L, D, batch=B),) if kind == "add" else ())
    for model in (llama, llama_scan) if kind == "add" else (llama,):
        base = run(model, tokens)
        for edit in edits:
            out = run(model, tokens, edit)
            assert_equal(out.logits, base.logits)
            for name in base.captured:
                assert_equal(out.captured[name], base.captured[name], err_msg=name)
        moved = run(model, tokens, build(vector(), layers=2, num_layers=L, strength=3.0))
        assert max_diff(moved.logits, base.logits) > 1e-2  # the same edit with a scale does move the logits


@pytest.mark.parametrize("site", ["post", "pre"])
def test_layers_before_the_edit_and_other_rows_are_bit_identical(llama, llama_scan, site, run):
    tokens = tokens_of((B, T))
    strength = jnp.asarray([4.0, 0.0])  # row 0 only
    edit = Intervention.add(vector(), layers=2, num_layers=L, strength=strength, start=2, site=site)
    for model in (llama, llama_scan):
        base, out = run(model, tokens), run(model, tokens, edit)
        ref, got = np.asarray(base.captured["residual"]), np.asarray(out.captured["residual"])
        first_changed = 2 if site == "post" else 1  # a "pre" edit of block 2 already shows in block 1's output
        assert_equal(got[:first_changed], ref[:first_changed])
        assert max_diff(got[first_changed:, 0], ref[first_changed:, 0]) > 1e-2
        # row 1: every layer and the logits bit-identical
        assert_equal(got[:, 1], ref[:, 1])
        assert_equal(out.logits[1], base.logits[1])
        # row 0 before the window start is untouched too (causal attention)
        assert_equal(out.logits[0, :2], base.logits[0, :2])


def test_loop_and_scan_agree_with_an_edit(llama, llama_scan, run):
    tokens = tokens_of((B, T))
    for edit in (Intervention.add(vector(), layers=[0, 3], num_layers=L, strength=2.0, start=3),
                 Intervention.add(vector(), layers=2, num_layers=L, strength=-1.5, end=6, site="pre")):
        loop, scan = run(llama, tokens, edit), run(llama_scan, tokens, edit)
        np.testing.assert_allclose(np.asarray(scan.logits), np.asarray(loop.logits), atol=1e-6, rtol=0)
        for name in loop.captured:
            np.testing.assert_allclose(np.asarray(scan.captured[name]), np.asarray(loop.captured[name]),
                                       atol=1e-6, rtol=0, err_msg=name)


def test_pre_and_post_sites_and_the_final_residual(llama, run):
    """pre[0] is the embedding, pre[l + 1] = post[l], and post[L-1] is what the final norm reads."""
    tokens = tokens_of((B, T))
    post, pre = run(llama, tokens), run(llama, tokens, site="pre")
    assert_equal(pre.captured["residual"][1:], post.captured["residual"][:-1])
    assert_equal(pre.captured["residual"][0], llama.embed(tokens))
    final = llama.norm(post.captured["residual"][-1])
    np.testing.assert_allclose(np.asarray(final @ llama.lm_head[...]), np.asarray(post.logits), atol=1e-5, rtol=0)
    # the block's two updates add up: post[l] = pre[l] + attention[l] + mlp[l]
    residual, attention, mlp = (np.asarray(post.captured[name], np.float64) for name in NAMES)
    np.testing.assert_allclose(residual, np.asarray(pre.captured["residual"]) + attention + mlp, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# No recompilation


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_layer_strength_vector_sweep_compiles_once(llama, llama_scan, scan):
    model = llama_scan if scan else llama
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def last_logits(state, tokens, intervention):
        traces.append(1)
        return nnx.merge(graphdef, state)(tokens, intervention=intervention).logits[:, -1]

    tokens = tokens_of((B, 6))
    outputs = []
    for layer in range(L):
        for strength in (0.0, 1.0, 2.0, 4.0):
            for seed in (2, 3):
                edit = Intervention.add(vector(seed), layers=jnp.asarray(layer), num_layers=L, strength=strength,
                                        start=jnp.asarray(2), batch=B)
                outputs.append(last_logits(state, tokens, edit))
    assert len(outputs) == 32
    assert len(traces) == 1 and last_logits._cache_size() == 1
    assert_equal(outputs[0], outputs[1])  # strength 0: either vector, no edit
    assert max_diff(outputs[-1], outputs[0]) > 1e-2


# ----------------------------------------------------------------------------------------------------
# Decode with a cache


def test_llama_cached_decode_with_an_edit_equals_the_full_forward(llama, run):
    """Prefill 6 tokens, decode 3; windows starting in the prompt and mid-generation (the window is data:
    both share the compiled prefill and decode)."""
    prompt_length = 6
    tokens = tokens_of((B, T), seed=5)
    base = run(llama, tokens).logits
    for start in (3, 7):
        edit = Intervention.add(vector(), layers=[1, 3], num_layers=L, strength=jnp.asarray([2.0, -3.0]), start=start)
        full = run(llama, tokens, edit).logits
        assert_equal(full[:, :start], base[:, :start])
        assert max_diff(full[:, start:], base[:, start:]) > 1e-2
        out = forward_cached(llama, tokens[:, :prompt_length], init_cache(llama.config, B, 12), edit)
        pieces, cache = [out.logits], out.cache
        for t in range(prompt_length, T):
            out = forward_cached(llama, tokens[:, t:t + 1], cache, edit)
            pieces.append(out.logits)
            cache = out.cache
        np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(full), atol=1e-5, rtol=0)


@pytest.mark.slow  # three Kimi Linear programs (~13 s); the Llama cached-decode edit test stays fast
def test_kimi_cached_decode_with_an_edit_equals_the_full_forward(kimi, run):
    """Chunk prefill of 10 tokens (crossing KDA chunks of 8), then recurrent decode; edits at a KDA layer
    (1) and at the MLA layer (3); windows in the prompt and mid-generation. The baseline is the same
    program with strength 0 (its bit-identity with no intervention is the slow test below), so the
    fast tier compiles three Kimi programs."""
    prompt_length = 10
    tokens = tokens_of((B, KIMI_T), seed=6)
    base = run(kimi, tokens, Intervention.add(vector(), layers=[1, 3], num_layers=L, strength=0.0))
    for start in (4, 12):
        edit = Intervention.add(vector(), layers=[1, 3], num_layers=L, strength=2.0, start=start)
        out = run(kimi, tokens, edit)
        full = out.logits
        assert_equal(full[:, :start], base.logits[:, :start])
        assert max_diff(full[:, start:], base.logits[:, start:]) > 1e-2
        # block 0 (before the first edited layer) is bit-identical; block 1 changes from the window on
        assert_equal(out.captured["residual"][0], base.captured["residual"][0])
        assert_equal(out.captured["residual"][1, :, :start], base.captured["residual"][1, :, :start])
        cache = kimi_init_cache(kimi.config, B, 16)
        step = forward_kimi_cached(kimi, tokens[:, :prompt_length], cache, edit, "chunk")
        pieces, cache = [step.logits], step.cache
        for t in range(prompt_length, KIMI_T):
            step = forward_kimi_cached(kimi, tokens[:, t:t + 1], cache, edit, "recurrent")
            pieces.append(step.logits)
            cache = step.cache
        np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(full), atol=1e-5, rtol=0)
    # unedited, the captures add up: post[l] = post[l-1] + mixer[l] + ffn[l] (an edit adds its own term);
    # post[L-1] is what the final norm reads, also with the edit at layer L-1
    residual, attention, mlp = (np.asarray(base.captured[name], np.float64) for name in NAMES)
    assert residual.shape == (L, B, KIMI_T, D)
    np.testing.assert_allclose(residual[1:], residual[:-1] + attention[1:] + mlp[1:], atol=1e-5, rtol=0)
    final = kimi.norm(out.captured["residual"][-1])
    np.testing.assert_allclose(np.asarray(final @ kimi.lm_head[...]), np.asarray(full), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_kimi_zero_edit_is_bit_identical(kimi, run):
    """Slow: one more Kimi program (~5 s of XLA:CPU compile); the Llama zero-edit tests are the fast
    variant (the edit math is shared: ``layers.interventions.LayerHooks``)."""
    tokens = tokens_of((B, KIMI_T), seed=6)
    base = run(kimi, tokens)
    for edit in (Intervention.none(L, D, batch=B),
                 Intervention.add(vector(), layers=[1, 3], num_layers=L, strength=2.0, start=KIMI_T)):
        zero = run(kimi, tokens, edit)
        assert_equal(zero.logits, base.logits)
        for name in base.captured:
            assert_equal(zero.captured[name], base.captured[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------
# Edit kinds, pruning, capture selection


def test_edit_kinds_on_the_captured_residual(llama, run):
    tokens = tokens_of((B, T))
    base = np.asarray(run(llama, tokens).captured["residual"], np.float64)
    v = np.asarray(vector(), np.float64)
    window = slice(2, 5)

    def edited(build, **kwargs):
        edit = build(v, layers=1, num_layers=L, start=2, end=5, **kwargs)
        return np.asarray(run(llama, tokens, edit).captured["residual"], np.float64)

    added = edited(Intervention.add, strength=3.0)
    np.testing.assert_allclose(added[1, :, window], base[1, :, window] + 3.0 * v, atol=1e-5, rtol=0)
    assert_equal(added[1, :, 5:], base[1, :, 5:])  # outside the window: untouched
    assert_equal(added[1, :, :2], base[1, :, :2])
    replaced = edited(Intervention.replace_with, strength=0.5)
    np.testing.assert_allclose(replaced[1, :, window], np.broadcast_to(0.5 * v, replaced[1, :, window].shape),
                               atol=1e-6, rtol=0)
    projected = edited(Intervention.project_out)
    u = v / np.linalg.norm(v)
    assert np.abs(projected[1, :, window] @ u).max() < 1e-4  # no component left along v
    expected = base[1, :, window] - (base[1, :, window] @ u)[..., None] * u
    np.testing.assert_allclose(projected[1, :, window], expected, atol=1e-4, rtol=0)


@nnx.jit
def forward_pruned(model, tokens, indices, intervention, capture):
    return model(tokens, logits_indices=indices, intervention=intervention, capture=capture)


def test_logits_indices_pruning_keeps_the_edit(llama, llama_scan, run):
    """The pruned last layer applies its "post" edit at the kept positions; a capture of the last
    layer's output switches pruning off (same logits). 1e-5: the pruned layer's matmuls have other
    shapes than the full ones (measured 1.5e-6)."""
    tokens = tokens_of((B, T))
    indices = jnp.asarray([[8, 4, 4], [2, 7, 3]])
    for model in (llama, llama_scan):
        for layer in (1, 3):
            edit = Intervention.add(vector(), layers=layer, num_layers=L, strength=3.0, start=jnp.asarray([3, 5]))
            expected = np.asarray(jnp.take_along_axis(run(model, tokens, edit).logits, indices[:, :, None], axis=1))
            got = forward_pruned(model, tokens, indices, edit, None).logits
            np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    out = forward_pruned(llama, tokens, indices, edit, Capture.at(indices, L - 1))
    np.testing.assert_allclose(np.asarray(out.logits), expected, atol=1e-5, rtol=0)
    assert out.captured["residual"].shape == (1, B, 3, D)


def test_capture_reads_only_the_asked_layers_in_order(llama_scan, run, forward):
    tokens = tokens_of((B, T))
    everything = run(llama_scan, tokens).captured["residual"]
    positions = jnp.asarray([[7, 0], [3, 3]])
    some = forward(llama_scan, tokens, None, Capture.at(positions, (3, 1))).captured["residual"]
    assert some.shape == (2, B, 2, D)
    expected = jnp.take_along_axis(everything[jnp.asarray([3, 1])], positions[None, :, :, None], axis=2)
    assert_equal(some, expected)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_value_errors_naming_the_field(llama, kimi):
    tokens = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"intervention\.vectors.*\[L=4, B=2 or 1, D=64\]"):
        llama(tokens, intervention=Intervention.add(jnp.ones((32,)), layers=0, num_layers=L))
    with pytest.raises(ValueError, match=r"intervention\.vectors"):
        kimi(tokens, intervention=Intervention.add(jnp.ones((D,)), layers=0, num_layers=3))
    with pytest.raises(ValueError, match=r"intervention\.vectors"):
        llama(tokens, intervention=Intervention.add(jnp.ones((3, D)), layers=0, num_layers=L))
    with pytest.raises(ValueError, match=r"intervention\.scales"):
        bad = Intervention.none(L, D, batch=2)
        llama(tokens, intervention=bad.replace(scales=jnp.zeros((L, 3))))
    with pytest.raises(ValueError, match=r"intervention\.start.*integer"):
        llama(tokens, intervention=bad.replace(start=jnp.zeros((2,), jnp.float32)))
    with pytest.raises(ValueError, match=r"layers: index 4 is out of range"):
        Intervention.add(jnp.ones((D,)), layers=4, num_layers=L)
    with pytest.raises(ValueError, match=r"layers: indices \[-5\] out of range"):
        Intervention.add(jnp.ones((D,)), layers=jnp.asarray(-5), num_layers=L)
    with pytest.raises(ValueError, match=r"layers: float per-layer weights must have shape \[L=4\]"):
        Intervention.add(jnp.ones((D,)), layers=jnp.ones((3,)), num_layers=L)
    with pytest.raises(ValueError, match=r"batch: .* disagree"):
        Intervention.add(jnp.ones((2, D)), layers=0, num_layers=L, strength=jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"kind"):
        Intervention.build("scale", jnp.ones((D,)), layers=0, num_layers=L)
    with pytest.raises(ValueError, match=r"capture\.layers: index 4 is out of range"):
        llama(tokens, capture=Capture.at(jnp.zeros((2, 1), jnp.int32), 4))
    with pytest.raises(ValueError, match=r"capture\.positions: token indices must be in \[0, T=5\)"):
        llama(tokens, capture=Capture.at(jnp.asarray([[0], [5]]), 0))
    with pytest.raises(ValueError, match=r"capture\.positions: expected an integer array \[B=2, P\]"):
        kimi(tokens, capture=Capture.at(jnp.zeros((3, 1), jnp.int32), 0))
    with pytest.raises(ValueError, match=r"capture\.what"):
        llama(tokens, capture=Capture.at(jnp.zeros((2, 1), jnp.int32), 0, what="logits"))


def test_constructors_broadcast_and_accept_weights():
    per_row = Intervention.add(jnp.ones((3, D)), layers=jnp.asarray([0.5, 0.0, 1.0, 0.0]), num_layers=L,
                               strength=jnp.asarray([1.0, 2.0, 3.0]), start=4)
    assert per_row.vectors.shape == (L, 3, D) and per_row.scales.shape == (L, 3)
    np.testing.assert_array_equal(np.asarray(per_row.scales[:, 1]), [1.0, 0.0, 2.0, 0.0])
    np.testing.assert_array_equal(np.asarray(per_row.start), [4, 4, 4])
    assert int(per_row.end[0]) == NO_END
    shared = Intervention.add(jnp.ones((D,)), layers=(1, -1), num_layers=L)
    assert shared.batch == 1
    np.testing.assert_array_equal(np.asarray(shared.scales[:, 0]), [0.0, 1.0, 0.0, 1.0])
    padded = per_row.pad_rows(2)
    assert padded.vectors.shape == (L, 5, D) and float(jnp.abs(padded.scales[:, 3:]).max()) == 0.0
