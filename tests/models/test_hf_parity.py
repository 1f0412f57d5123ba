"""Logit parity against Hugging Face transformers (PyTorch, CPU), from tiny random models built locally.

Two checks per case:
* float64 at init range 0.3: logits std ~2, so convention bugs (interleaved vs rotate-half RoPE,
  bias placement, GQA grouping) move logits by O(1..10) (refs/smollm2_data.md section 4.4).
  transformers keeps RMSNorm, softmax and RoPE angles in float32 even for a float64 model, so the
  two sides agree only to float32 rounding of O(10) activations (measured ~5e-6); the bound 1e-4
  is 20x that and four orders of magnitude under any convention bug.
* float32 at HF's default init range 0.02: 1e-5 max-abs, as the issue specifies. (At init 0.3
  float32 itself is not that exact: torch float32 differs from torch float64 by up to ~3e-5 there,
  measured on these cases, so 1e-5 would test rounding noise, not conventions. A wrong RoPE
  convention still moves float32 logits by ~5e-3 at init 0.02, 500x the bound.)
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxstack.models import checkpoint  # noqa: E402
from jaxstack.precision import DtypePolicy  # noqa: E402

CASES = {
    "llama-gqa-tied": dict(arch="llama", tie=True, heads=6, kv=2, hidden=60, inter=97, vocab=301, layers=3),
    "llama-gqa-untied": dict(arch="llama", tie=False, heads=4, kv=1, hidden=64, inter=80, vocab=257, layers=2),
    "llama-mha-llama3-rope": dict(arch="llama", tie=False, heads=4, kv=4, hidden=32, inter=48, vocab=128, layers=2,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen2-bias-tied": dict(arch="qwen2", tie=True, heads=6, kv=3, hidden=60, inter=97, vocab=301, layers=3),
    "qwen2-bias-untied": dict(arch="qwen2", tie=False, heads=4, kv=2, hidden=48, inter=64, vocab=200, layers=2),
}


def _make_hf_model(case, init=0.02):
    common = dict(
        vocab_size=case["vocab"], hidden_size=case["hidden"], intermediate_size=case["inter"],
        num_hidden_layers=case["layers"], num_attention_heads=case["heads"], num_key_value_heads=case["kv"],
        max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=case["tie"],
        initializer_range=init, bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )
    torch.manual_seed(0)
    if case["arch"] == "llama":
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        if "rope_scaling" in case:
            rope = dict(case["rope_scaling"], rope_theta=10000.0)
        config = transformers.LlamaConfig(**common, rope_parameters=rope)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        model = transformers.Qwen2ForCausalLM(config)
        with torch.no_grad():  # biases start at zero: make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, init)
    config._attn_implementation = "eager"
    return model.eval()


def _tokens(vocab, shape=(2, 13), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


F64 = DtypePolicy("float64", "float64", "float64", "float64")


# `make test` keeps tied and untied heads, biased and unbiased projections and llama3 rope scaling in each
# dtype; `make test-all` runs every case.
F64_SLOW, F32_SLOW = {"llama-gqa-tied", "qwen2-bias-untied"}, {"llama-mha-llama3-rope", "qwen2-bias-untied"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in F64_SLOW else n for n in CASES])
def test_hf_to_jaxstack_logits_float64(name, tmp_path):
    case = CASES[name]
    hf_model = _make_hf_model(case, init=0.3)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    tokens = _tokens(case["vocab"])
    expected = _hf_logits(hf_model.double(), tokens)
    assert np.std(expected) > 1.0  # the large init makes logits sensitive to conventions
    with jax.enable_x64(True):
        for scan_layers in (False, True):
            model = checkpoint.load_pretrained(tmp_path, policy=F64, scan_layers=scan_layers)
            logits = np.asarray(model(jnp.asarray(tokens)).logits)
            assert logits.dtype == np.float64
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0, err_msg=f"scan_layers={scan_layers}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in F32_SLOW else n for n in CASES])
def test_hf_to_jaxstack_logits_float32(name, tmp_path):
    case = CASES[name]
    hf_model = _make_hf_model(case, init=0.02)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    tokens = _tokens(case["vocab"])
    expected = _hf_logits(hf_model, tokens)
    model = checkpoint.load_pretrained(tmp_path)
    logits = jax.jit(lambda t: model(t).logits)(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa-tied", "qwen2-bias-untied"])
def test_jaxstack_to_hf_round_trip(name, tmp_path):
    case = CASES[name]
    hf_model = _make_hf_model(case)
    hf_model.save_pretrained(tmp_path / "original", safe_serialization=True)
    model = checkpoint.load_pretrained(tmp_path / "original")
    checkpoint.save_pretrained(model, tmp_path / "saved")
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", attn_implementation="eager").eval()
    tokens = _tokens(case["vocab"], seed=1)
    jax_logits = np.asarray(model(jnp.asarray(tokens)).logits)
    np.testing.assert_allclose(_hf_logits(auto, tokens), jax_logits, atol=1e-5, rtol=0)
    # And the tensors themselves survive bit-for-bit.
    for key, value in hf_model.state_dict().items():
        if key == "lm_head.weight" and case["tie"]:
            continue
        np.testing.assert_array_equal(auto.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def _save_small(tmp_path):
    model = _make_hf_model(CASES["llama-gqa-untied"])
    model.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _save_small(tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        checkpoint.load_pretrained(path)


def test_wrong_shape_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _save_small(tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:-1]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"k_proj\.weight.*shape"):
        checkpoint.load_pretrained(path)


def test_unknown_architecture_is_named(tmp_path):
    path = _save_small(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="MistralForCausalLM"):
        checkpoint.load_pretrained(path)


def test_sharded_index_loads(tmp_path):
    model = _make_hf_model(CASES["llama-gqa-untied"])
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    tokens = _tokens(257)
    loaded = checkpoint.load_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(loaded(jnp.asarray(tokens)).logits), _hf_logits(model, tokens), atol=1e-5, rtol=0)
