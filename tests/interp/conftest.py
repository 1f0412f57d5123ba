"""Tiny random models shared by the interp tests (module-free fixtures: built once per session).

Llama: 4 layers, d = 64, vocab 256, GQA 4:2, NumPy-drawn parameters of std 0.1.
Kimi Linear: the 4-layer tiny preset (KDA x3 then MLA, MoE), vocab 256, NumPy-drawn parameters (as
``tests/models/test_kimi_linear.py`` does: no per-shape RNG compiles).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.interp import Capture
from jaxstack.models import LlamaForCausalLM, get_config, stack_layer_params
from jaxstack.models.configs import get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM

LLAMA = get_config("llama-test", num_layers=4, initializer_range=0.2)
KIMI = get_kimi_config("kimi-linear-tiny", vocab_size=256, kda_backend="xla", kda_chunk_size=8)


def numpy_params(model_class, config, seed=0, std=0.1):
    """A model with NumPy-drawn parameters (eval_shape + device_put; no RNG kernels to compile)."""
    abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, var in nnx.to_flat_state(state):
        name, shape = path[-1], var.shape
        if name in ("scale", "o_norm"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif name == "A_log":
            value = np.log(rng.uniform(1, 16, shape))
        elif name == "dt_bias":
            value = rng.uniform(-6.0, -2.0, shape)
        else:
            value = std * rng.standard_normal(shape)
        flat[path] = var.replace(jnp.asarray(value, var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="session")
def llama():
    return numpy_params(LlamaForCausalLM, LLAMA, std=0.1)


@pytest.fixture(scope="session")
def llama_scan(llama):
    return stack_layer_params(llama)


@pytest.fixture(scope="session")
def kimi():
    return numpy_params(KimiLinearForCausalLM, KIMI)


# ----------------------------------------------------------------------------------------------------
# One jitted forward with one capture structure, shared by every test file (compiled programs are
# reused across tests when the model, token shape and intervention structure match).

NUM_LAYERS = 4


def capture_all(batch, length, site="post"):
    """Every layer, every position, all three activations: captured[name] is [L, B, T, D]."""
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return Capture(positions=positions, layers=tuple(range(NUM_LAYERS)), site=site,
                   what=("residual", "attention", "mlp"))


@nnx.jit
def _forward(model, tokens, intervention, capture):
    return model(tokens, intervention=intervention, capture=capture)


def _run(model, tokens, intervention=None, site="post"):
    """The uncached forward with :func:`capture_all`: ModelOutput(logits, captured)."""
    return _forward(model, tokens, intervention, capture_all(*tokens.shape, site=site))


@pytest.fixture(scope="session")
def run():
    return _run


@pytest.fixture(scope="session")
def forward():
    """``forward(model, tokens, intervention, capture)``, jitted."""
    return _forward
