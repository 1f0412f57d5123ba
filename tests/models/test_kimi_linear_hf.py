"""Logit parity with transformers' ``KimiLinearForCausalLM`` (pure-PyTorch path, CPU), from a tiny random
model built locally: 4 layers with MLA at the 4th, first layer dense, MoE (2 of 4 experts) with a
shared expert. No download.

* f32 logits within 1e-4 max-abs (the issue's bound). Measured 3.0e-7: both sides run the same float32
  math in different summation orders (HF's chunk form is a different algorithm from jaxstack's).
* Every RMSNorm weight is perturbed and ``e_score_correction_bias`` is set non-zero (it is zero at
  HF init, so a loader that ignored it would pass); the test checks the bias changes the logits.
* ``save_pretrained`` -> transformers ``from_pretrained`` round trip gives the same logits.

transformers picks fla's Triton kernels at import time when ``fla`` is importable (it is, in this
venv), which fail without a GPU, so the Kimi module is imported with ``fla`` hidden.
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jaxstack.models import checkpoint
from jaxstack.models.kimi_linear import KimiLinearForCausalLM

ATOL = 1e-4
_MISSING = object()


def _import_kimi_without_fla():
    saved = sys.modules.get("fla", _MISSING)
    sys.modules["fla"] = None  # makes `import fla` fail inside transformers' kernel selection
    try:
        from transformers.models.kimi_linear import (
            configuration_kimi_linear,
            modeling_kimi_linear,
        )
    finally:
        if saved is _MISSING:
            del sys.modules["fla"]
        else:
            sys.modules["fla"] = saved
    return configuration_kimi_linear.KimiLinearConfig, modeling_kimi_linear.KimiLinearForCausalLM


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    KimiConfig, KimiModel = _import_kimi_without_fla()
    config = KimiConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, kv_lora_rank=32, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, num_experts_per_tok=2, num_local_experts=4, linear_head_dim=16,
        linear_num_heads=4, layer_types=["linear_attention"] * 3 + ["full_attention"],
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = KimiModel(config).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn_like(b))
    path = tmp_path_factory.mktemp("kimi_hf")
    model.save_pretrained(path)
    tokens = np.random.default_rng(0).integers(0, 300, (2, 21))
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens)).logits.numpy()
    return path, tokens, logits, KimiModel


@nnx.jit
def _forward(model, tokens):
    return model(tokens).logits


def test_f32_logits_match_transformers(hf_checkpoint):
    path, tokens, expected, _ = hf_checkpoint
    model = checkpoint.load_pretrained(path)  # registry: config.json's architecture -> kimi_linear
    assert isinstance(model, KimiLinearForCausalLM)
    assert model.config.full_attn_layers == (4,) and model.config.mlp_layer_types[:2] == ("dense", "sparse")
    got = np.asarray(_forward(model, jnp.asarray(tokens)))
    err = float(np.abs(got - expected).max())
    print(f"kimi-linear f32 logits max-abs vs transformers: {err:.2e} (logits std {expected.std():.3f})")
    assert err < ATOL
    # Sensitivity: ignoring the selection bias changes the routing and therefore the logits.
    for layer in model.layers:
        if hasattr(layer.mlp, "e_score_correction_bias"):
            layer.mlp.e_score_correction_bias[...] = jnp.zeros_like(layer.mlp.e_score_correction_bias[...])
    assert float(np.abs(np.asarray(_forward(model, jnp.asarray(tokens))) - expected).max()) > 100 * ATOL


def test_save_pretrained_loads_in_transformers(hf_checkpoint, tmp_path):
    path, tokens, expected, KimiModel = hf_checkpoint
    model = checkpoint.load_pretrained(path)
    checkpoint.save_pretrained(model, tmp_path / "out")
    reloaded = KimiModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = reloaded(torch.as_tensor(tokens)).logits.float().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-6, rtol=0)
