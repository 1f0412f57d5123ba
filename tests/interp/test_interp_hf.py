"""Capture and edits against transformers (PyTorch, CPU): the conftest's tiny random Llama and Kimi Linear
models written with ``save_pretrained`` and loaded by transformers (no download).

Mapping (documented in ``jaxstack.layers.interventions``): transformers' ``hidden_states`` has L + 1
entries; ``hidden_states[i]`` is the residual ENTERING block i (``[0]`` = the embeddings), i.e. our
``site="pre"`` at layer i, and ``hidden_states[i + 1]`` = our ``site="post"`` at layer i for i < L-1.
The last entry, ``hidden_states[L]``, is transformers' ``last_hidden_state``: the final norm applied to
our ``post`` of layer L-1 (``tie_last_hidden_states``), so the test compares it with norm(post[L-1]).

An "add" edit at layer l ("post") equals a torch forward hook on ``model.layers[l]`` that adds
``strength * v`` to the block's output over the same positions.

Tolerance: 1e-5 max-abs in float32 on residuals of magnitude up to ~20 (summation order of two
implementations; measured values are printed).
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxstack.interp import Intervention  # noqa: E402
from jaxstack.models import checkpoint  # noqa: E402

L, D = 4, 64
ATOL = 1e-5
_MISSING = object()


def _kimi_class():
    """transformers' Kimi Linear with ``fla`` hidden (its Triton kernels need a GPU; as in
    tests/models/test_kimi_linear_hf.py)."""
    saved = sys.modules.get("fla", _MISSING)
    sys.modules["fla"] = None
    try:
        from transformers.models.kimi_linear import modeling_kimi_linear
    finally:
        if saved is _MISSING:
            del sys.modules["fla"]
        else:
            sys.modules["fla"] = saved
    return modeling_kimi_linear.KimiLinearForCausalLM


@pytest.fixture(scope="module")
def hf_llama(llama, tmp_path_factory):
    path = checkpoint.save_pretrained(llama, tmp_path_factory.mktemp("llama_hf"))
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_kimi(kimi, tmp_path_factory):
    path = checkpoint.save_pretrained(kimi, tmp_path_factory.mktemp("kimi_hf"))
    return _kimi_class().from_pretrained(path).eval().float()


def _tokens(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape)


def _hf_forward(hf_model, tokens, hook=None):
    """(logits, hidden_states) of the transformers model, with an optional forward hook (layer, fn)."""
    handle = None
    if hook is not None:
        layer, fn = hook
        handle = hf_model.model.layers[layer].register_forward_hook(fn)
    try:
        with torch.no_grad():
            out = hf_model(torch.as_tensor(tokens), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def _add_hook(vector, strength, start):
    v = torch.as_tensor(np.asarray(vector, np.float32))

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, start:] += strength * v
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    return hook


def _check_hidden_states(model, captured_post, captured_pre, hidden_states, name, edit=None):
    """edit: (layer, vector, strength, start) of a hook edit. transformers records a block's output
    before a user hook edits it (its own recording hook was registered first), and our "post" capture
    reads after the edit, so the edit is added to that entry before comparing (not for the last
    block: the last entry is transformers' final-normed output, computed after the hook)."""
    assert len(hidden_states) == L + 1
    hidden_states = list(hidden_states)
    if edit is not None and edit[0] < L - 1:
        layer, vector, strength, start = edit
        hidden_states[layer + 1] = hidden_states[layer + 1].copy()
        hidden_states[layer + 1][:, start:] += strength * vector
    errors = []
    if captured_pre is not None:
        for layer in range(L):  # hidden_states[i]: the residual entering block i
            errors.append(float(np.abs(np.asarray(captured_pre[layer]) - hidden_states[layer]).max()))
    for layer in range(L - 1):  # hidden_states[i + 1]: the residual leaving block i
        errors.append(float(np.abs(np.asarray(captured_post[layer]) - hidden_states[layer + 1]).max()))
    final = np.asarray(model.norm(jnp.asarray(captured_post[L - 1])))  # the last entry has the final norm
    errors.append(float(np.abs(final - hidden_states[L]).max()))
    scale = max(float(np.abs(h).max()) for h in hidden_states)
    print(f"{name}: hidden-state max-abs errors {['%.1e' % e for e in errors]} (largest |h| {scale:.1f})")
    assert max(errors) < ATOL


def test_llama_capture_matches_hidden_states_and_edit_matches_a_torch_hook(llama, hf_llama, run):
    tokens = _tokens((2, 9), seed=11)
    post, pre = run(llama, jnp.asarray(tokens)), run(llama, jnp.asarray(tokens), site="pre")
    logits, hidden_states = _hf_forward(hf_llama, tokens)
    _check_hidden_states(llama, post.captured["residual"], pre.captured["residual"], hidden_states, "llama")
    np.testing.assert_allclose(np.asarray(post.logits), logits, atol=ATOL, rtol=0)

    vector = np.random.default_rng(3).standard_normal(D).astype(np.float32)
    edit = Intervention.add(vector, layers=1, num_layers=L, strength=2.5, start=3)
    edited = run(llama, jnp.asarray(tokens), edit)
    hooked_logits, hooked_states = _hf_forward(hf_llama, tokens, hook=(1, _add_hook(vector, 2.5, 3)))
    assert np.abs(hooked_logits - logits).max() > 1e-2
    _check_hidden_states(llama, edited.captured["residual"], None, hooked_states, "llama edited",
                         edit=(1, vector, 2.5, 3))
    np.testing.assert_allclose(np.asarray(edited.logits), hooked_logits, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_kimi_capture_matches_hidden_states_and_edit_matches_a_torch_hook(kimi, hf_kimi, run):
    """Reuses the programs of tests/interp/test_interventions.py (same model, token shape and capture).
    Slow (~15 s: transformers' reference KDA in PyTorch, three forwards); the fast variant is the Llama
    test above, and the fast Kimi tests in test_interventions.py check the capture and edit math."""
    tokens = _tokens((2, 14), seed=12)
    base = run(kimi, jnp.asarray(tokens))
    logits, hidden_states = _hf_forward(hf_kimi, tokens)
    _check_hidden_states(kimi, base.captured["residual"], None, hidden_states, "kimi")
    np.testing.assert_allclose(np.asarray(base.logits), logits, atol=ATOL, rtol=0)

    vector = np.random.default_rng(4).standard_normal(D).astype(np.float32)
    for layer in (1, 3):  # a KDA block and the MLA block
        edit = Intervention.add(vector, layers=layer, num_layers=L, strength=2.0, start=5)
        edited = run(kimi, jnp.asarray(tokens), edit)
        hooked_logits, hooked_states = _hf_forward(hf_kimi, tokens, hook=(layer, _add_hook(vector, 2.0, 5)))
        assert np.abs(hooked_logits - logits).max() > 1e-2
        _check_hidden_states(kimi, edited.captured["residual"], None, hooked_states, f"kimi edited at {layer}",
                             edit=(layer, vector, 2.0, 5))
        np.testing.assert_allclose(np.asarray(edited.logits), hooked_logits, atol=ATOL, rtol=0)
