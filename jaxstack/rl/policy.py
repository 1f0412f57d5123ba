"""Per-engine precision for RL: each engine runs under a ``DtypePolicy`` preset, and weight sync.

An RL run has two engines that share one set of float32 master weights: the *rollout engine* samples
responses (vLLM in the paper) and the *training engine* re-scores them and computes gradients
(FSDP / DeepSpeed). Each engine's dtypes are a :class:`jaxstack.precision.DtypePolicy` whose
``param_dtype`` is the masters' dtype: the ``-mixed`` presets (``"fp32"``, ``"bf16-mixed"``,
``"fp16-mixed"``: float32 masters, compute in that dtype). The pure half-precision presets (``"fp16"``:
parameters *stored* in float16) are rejected. "Weight sync" is one cast of the masters into the
engine's dtypes per step (:func:`sync`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxstack.precision import DtypePolicy, get_policy


def engine_policy(policy: str | DtypePolicy, **overrides: Any) -> DtypePolicy:
    """An engine's policy from a ``DtypePolicy`` preset name or a policy, with field overrides.

    The policy's ``param_dtype`` is the master dtype and must be float32 or wider (e.g. ``"bf16-mixed"``,
    not ``"bf16"``, which stores the parameters in bfloat16).
    """
    base = get_policy(policy)
    result = base.replace(**overrides) if overrides else base
    if jnp.finfo(result.param_dtype).bits < 32:
        raise ValueError(
            f"policy: RL engines keep float32 master weights, but {policy!r} stores parameters in "
            f"{result.param_dtype.name}; use a '-mixed' preset (e.g. 'bf16-mixed', 'fp16-mixed')"
        )
    return result


def sync(masters: nnx.State, policy: DtypePolicy) -> nnx.State:
    """Weight sync: one cast of the float32 master parameters into an engine's dtypes.

    masters: the ``nnx.State`` of a ``LlamaForCausalLM``'s Params, in ``policy.param_dtype``. Returns
    the same state with every floating parameter in ``policy.compute_dtype``, and the LM-head weight
    ``lm_head`` [D, V] in ``policy.lm_head_dtype``. An engine holds its LM head as a tensor of its own
    (the engines run the untied graph, ``rl.engine``): for a tied model that is a second cast of the
    embedding master, transposed, so the head and the embedding lookup each get their own rounding
    and their gradients meet in the master dtype. Differentiable back to the masters.
    """
    if "embed" not in masters:
        raise ValueError("masters: expected the nnx.State of a LlamaForCausalLM's Params (with 'embed')")

    def cast(path, variable):
        x = variable[...]
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return variable
        if jnp.dtype(x.dtype) != policy.param_dtype:
            raise ValueError(f"masters: expected {policy.param_dtype.name} master weights, got a {x.dtype} leaf "
                             f"at {'/'.join(map(str, path))}")
        return variable.replace(x.astype(policy.lm_head_dtype if path == ("lm_head",) else policy.compute_dtype))

    synced = nnx.map_state(cast, masters)
    if "lm_head" not in masters:  # tied: the head is the embedding table [V, D]
        synced["lm_head"] = nnx.Param(masters["embed"]["embedding"][...].T.astype(policy.lm_head_dtype))
    return synced
