"""The compiled Llama decode step moves no cache-sized data: no copy, transpose, concatenate or broadcast
of an array as large as one layer's K (or V) cache, and no K/V expanded from KV to query heads.

How it was shown to fail: run against the library before this change (commit 4cc7552, with the test
file copied outside the repository and ``PYTHONPATH=<that checkout>``), the first test listed per layer
the ``transpose_copy_fusion`` of K and V to the 6 query heads ([2, 6, 32, 256] and [2, 6, 256, 32]: the
float32 CPU attention's transpose + GQA repeat), the ``slice_bitcast_fusion`` that cut each layer's
cache out of the stacked [L, B, S, KV, hd] cache and the ``bitcast_concatenate_fusion`` that re-stacked
it, plus a per-step re-layout of every ``o_proj`` weight ([H, hd, D] -> [hd, H, D], fixed here by
contracting in storage order). The second test keeps the detector honest: a stacked cache passed to
the layer loop (sliced and re-stacked by design) must be caught.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxstack.models import LlamaForCausalLM, get_config, init_cache

BATCH, SLOTS = 2, 256
# instructions that make no new data: parameters, tuples, reinterpretations, control flow
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "while", "call", "constant", "after-all"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\][^ ]* ([\w-]+)\(")


def _big_ops(hlo: str, threshold: int) -> list[str]:
    """Instructions of the entry / loop computations (not fusion bodies) whose output has at least
    ``threshold`` elements and which are not free or an in-place cache write."""
    found, in_fusion_body = [], False
    for line in hlo.splitlines():
        if line.startswith("%") or line.startswith("ENTRY"):
            in_fusion_body = line.startswith("%fused") or "_computation" in line.split("(")[0]
            continue
        match = _INSTRUCTION.match(line)
        if match is None or in_fusion_body:
            continue
        name, _, dims, opcode = match.groups()
        elements = math.prod(int(d) for d in dims.split(",")) if dims else 1
        if elements < threshold or opcode in _FREE:
            continue
        if opcode in ("scatter", "dynamic-update-slice") or (
                opcode == "fusion" and ("scatter" in name or "dynamic_update_slice" in name)):
            continue  # the new token's K/V written into the cache buffer (in place: see the alias check)
        found.append(line.strip()[:160])
    return found


def _decode_step_hlo(model, cache):
    graphdef, state = nnx.split(model)

    def step(state, cache, token):
        out = nnx.merge(graphdef, state)(token, cache=cache)
        return out.cache, out.logits[:, -1]

    token = jnp.ones((BATCH, 1), jnp.int32)
    return jax.jit(step, donate_argnums=(1,)).lower(state, cache, token).compile().as_text()


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(get_config("smollm2-tiny"), policy="fp32", rngs=nnx.Rngs(0))


def test_a_decode_step_copies_no_cache_sized_array_and_never_expands_kv_heads(tiny):
    config = tiny.config
    assert config.num_heads > config.num_kv_heads  # GQA: an expansion would be visible
    cache = init_cache(config, BATCH, SLOTS)
    cache = cache.replace(lengths=jnp.full((BATCH,), 100, jnp.int32))
    hlo = _decode_step_hlo(tiny, cache)
    layer_cache = BATCH * config.num_kv_heads * SLOTS * config.head_dim
    # every non-parameter array of one step is much smaller than a layer's K cache
    assert BATCH * config.vocab_size < layer_cache and BATCH * config.num_heads * SLOTS < layer_cache
    big = _big_ops(hlo, layer_cache)
    assert not big, "cache-sized data moved in a decode step:\n" + "\n".join(big)
    expanded = f"f32[{BATCH},{config.num_heads},"
    assert expanded not in hlo.replace(f"f32[{BATCH},{config.num_heads},1,", ""), "K/V expanded to query heads"
    # the donated cache is aliased to the output: its buffers are updated in place
    header = hlo.splitlines()[0].split("entry_computation_layout")[0]
    assert header.count("-alias)") >= 2 * config.num_layers, header[:300]


def test_the_check_sees_the_copies_of_a_stacked_cache(tiny):
    """The detector is not vacuous: a stacked cache, which the layer loop slices per layer and
    re-stacks, is caught (and the step still gives the same logits as the per-layer form)."""
    cache = init_cache(tiny.config, BATCH, SLOTS).replace(lengths=jnp.full((BATCH,), 100, jnp.int32))
    layer_cache = BATCH * tiny.config.num_kv_heads * SLOTS * tiny.config.head_dim
    big = _big_ops(_decode_step_hlo(tiny, cache.stacked()), layer_cache)
    assert any("slice" in op for op in big) and any("concatenate" in op for op in big), big
    token = jnp.ones((BATCH, 1), jnp.int32)
    stacked, layered = tiny(token, cache=cache.stacked()), tiny(token, cache=cache)
    assert not stacked.cache.layered and layered.cache.layered
    assert jnp.array_equal(stacked.logits, layered.logits)
    assert jnp.array_equal(stacked.cache.stacked().k, layered.cache.stacked().k)
