"""The compiled Kimi Linear decode step updates its cache in place (issue 21, item 4).

For each layer schedule (all-MLA, the 3:1 hybrid, all-KDA) the one-token decode step is jitted with the
cache donated, as a decode loop runs it, and its optimized HLO (``jax.jit(step).lower(...).compile()``)
must hold:

* no ``copy`` / ``concatenate`` / ``transpose`` / ``slice`` (or a fusion built around one) whose result
  is as large as one MLA layer's latent cache ``[B, S, C]`` -- the only instructions that large are the
  in-place updates (``dynamic-update-slice`` at batch 1, ``scatter`` for per-row offsets);
* no instruction of a stacked cache view's shape (``[L, B, S, C]``, ``[L_kda, B, H, K, V]``,
  ``[L_kda, B, W-1, 3HK]``): the old code re-stacked every layer's buffers each step;
* temporary buffers (``memory_analysis().temp_size_in_bytes``) smaller than one layer's latent cache
  (MLA schedules): nothing cache-sized is allocated besides the donated cache itself.

``S = 4096`` slots makes cache-sized arrays unmistakable (the tiny model's largest other tensors have
<= 512 * 64 values). The old code (stacked ``[L, ...]`` cache arrays, ``cache.latent[slot]`` per layer,
``jnp.stack`` of the new ones) fails it: all-MLA shows per layer a ``wrapped_slice`` fusion and a
``copy`` of ``f32[1,1,4096,40]`` plus one ``bitcast_concatenate_fusion f32[4,1,4096,40]``; all-KDA a
``copy`` and a ``bitcast_concatenate_fusion`` of the stacked ``f32[4,1,4,16,16]`` recurrent and
``f32[4,1,3,192]`` conv states (run with main's ``jaxstack`` on the path).
"""

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxstack.models.configs import get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM, init_cache

SLOTS = 4096
SCHEDULES = {
    "all-mla": ["full_attention"] * 4,
    "hybrid-3to1": ["linear_attention"] * 3 + ["full_attention"],
    "all-kda": ["linear_attention"] * 4,
}
# Results of these ops are new buffers: fine for activations, a full copy when cache-sized.
_COPYING = re.compile(r"^(copy|concatenate|transpose|slice|dynamic-slice|gather|pad)$")
_COPYING_FUSION = re.compile(r"(copy|concatenate|transpose|(?<!update-)slice|gather|pad)")
_NO_RESULT = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call", "conditional",
              "opt-barrier"}


def _instructions(hlo_text: str):
    """(computation, name, opcode, dtype, dims) of every instruction outside fused computations."""
    computation, fused = None, False
    for raw in hlo_text.splitlines():
        line = raw.strip()
        if not raw.startswith(" ") and line.endswith("{"):
            computation = "ENTRY" if line.startswith("ENTRY") else line.split()[0]
            fused = "fused" in computation or "wrapped" in computation
            continue
        match = re.match(r"(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(", line)
        if match and not fused:
            name, dtype, dims, opcode = match.groups()
            yield computation, name, opcode, dtype, tuple(int(d) for d in dims.split(",") if d)


def _copies(hlo_text: str, min_elements: int, shapes: set[tuple[int, ...]]) -> list[str]:
    """Instructions that copy a cache-sized array, or produce a stacked cache view's shape."""
    found = []
    for computation, name, opcode, dtype, dims in _instructions(hlo_text):
        if opcode in _NO_RESULT:
            continue
        big = math.prod(dims) >= min_elements
        copying = _COPYING.match(opcode) or (opcode == "fusion" and _COPYING_FUSION.search(name))
        if (big and copying) or dims in shapes:
            found.append(f"{computation}: {name} = {opcode} {dtype}{list(dims)}")
    return found


def _compiled_step(schedule: str, batch: int):
    config = get_kimi_config("kimi-linear-tiny", kda_backend="xla").with_schedule(SCHEDULES[schedule])
    model = KimiLinearForCausalLM(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    cache = init_cache(config, batch, SLOTS)

    def step(state, cache, token):
        out = nnx.merge(graphdef, state)(token, cache=cache)
        return out.cache, out.logits

    tokens = jnp.ones((batch, 1), jnp.int32)
    return config, jax.jit(step, donate_argnums=(1,)).lower(state, cache, tokens).compile()


def _stacked_shapes(config, batch: int) -> set[tuple[int, ...]]:
    hk, k = config.kda_num_heads * config.kda_head_dim, config.kda_head_dim
    shapes = set()
    if config.num_mla_layers > 1:
        shapes.add((config.num_mla_layers, batch, SLOTS, config.latent_dim))
    if config.num_kda_layers > 1:
        shapes.add((config.num_kda_layers, batch, config.kda_num_heads, k, k))
        shapes.add((config.num_kda_layers, batch, config.short_conv_kernel_size - 1, 3 * hk))
    return shapes


@pytest.mark.parametrize("schedule,batch", [("all-mla", 1), ("hybrid-3to1", 1), ("hybrid-3to1", 2), ("all-kda", 1)])
def test_decode_step_updates_the_cache_in_place(schedule, batch):
    config, compiled = _compiled_step(schedule, batch)
    text = compiled.as_text()
    layer_latent = batch * SLOTS * config.latent_dim
    assert not _copies(text, layer_latent, _stacked_shapes(config, batch)), (
        f"{schedule} decode step copies the cache:\n" + "\n".join(_copies(text, layer_latent,
                                                                       _stacked_shapes(config, batch))))
    if config.num_mla_layers:
        # The in-place updates are there (the check above is not vacuous) ...
        updates = [n for _, n, op, _, dims in _instructions(text)
                   if math.prod(dims) >= layer_latent and ("dynamic-update-slice" in n or "scatter" in n
                                                             or op in ("dynamic-update-slice", "scatter"))]
        assert len(updates) >= config.num_mla_layers, updates
        # ... and no temporary holds a layer's cache (4 bytes per float32 value).
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 4 * layer_latent, f"temporaries {temp} B >= one layer's latent cache {4 * layer_latent} B"


def test_the_check_sees_a_stacked_cache_copy():
    """The HLO parser and rules flag the old pattern: slice a stacked cache per layer, write, re-stack."""

    def old_step(cache, new, position):
        layers = [jax.lax.dynamic_update_slice(cache[i], new[i][:, None], (0, position, 0))
                  for i in range(cache.shape[0])]
        return jnp.stack(layers)

    cache = jnp.zeros((4, 1, SLOTS, 40))
    text = jax.jit(old_step, donate_argnums=0).lower(cache, jnp.ones((4, 1, 40)), 3).compile().as_text()
    found = _copies(text, SLOTS * 40, {(4, 1, SLOTS, 40)})
    assert found and any("concatenate" in f or "copy" in f for f in found), found
