"""Per-engine precision policies for RL: one frozen, hashable policy per engine (rollout and train).

An RL run has two engines that share one set of float32 master weights: the *rollout engine* samples
responses (vLLM in the paper) and the *training engine* re-scores them and computes gradients
(FSDP / DeepSpeed). Each gets an :class:`EnginePolicy`; "weight sync" is one cast of the masters into
the engine's dtypes per step (:meth:`EnginePolicy.sync`). Policies are frozen dataclasses, so they are
hashable and can be ``jit`` static arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxstack.precision import DtypePolicy, as_dtype

#: Key of the LM-head weight in synced parameters (cast to ``lm_head_dtype``; see ``EnginePolicy.sync``).
HEAD_KEY = "_head"


@dataclasses.dataclass(frozen=True)
class EnginePolicy:
    """Dtypes of one engine. Hashable (jit-static).

    Attributes:
      master_dtype: dtype of the optimizer's master weights (float32; the sync casts *from* it).
      compute_dtype: matmul inputs and activations (f32 / bf16 / f16).
      accum_dtype: norm statistics and RoPE angles (float32).
      kv_cache_dtype: KV-cache storage (None = compute dtype).
      lm_head_dtype: LM-head matmul inputs and logits (None = compute dtype; f32 = "fp32 LM head").
      softmax_dtype: log-softmax over the vocabulary and attention-softmax statistics (float32).
    """

    master_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    accum_dtype: Any = jnp.float32
    kv_cache_dtype: Any = None
    lm_head_dtype: Any = None
    softmax_dtype: Any = jnp.float32

    def __post_init__(self):
        compute = as_dtype(self.compute_dtype, field="compute_dtype")
        object.__setattr__(self, "compute_dtype", compute)
        for field in ("master_dtype", "accum_dtype", "softmax_dtype"):
            object.__setattr__(self, field, as_dtype(getattr(self, field), field=field))
        for field in ("kv_cache_dtype", "lm_head_dtype"):
            value = getattr(self, field)
            object.__setattr__(self, field, compute if value is None else as_dtype(value, field=field))
        if jnp.finfo(self.master_dtype).bits < 32:
            raise ValueError(f"master_dtype: master weights must be float32 or wider, got {self.master_dtype}")

    def replace(self, **changes: Any) -> EnginePolicy:
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        base = {jnp.dtype(jnp.float32): "fp32", jnp.dtype(jnp.bfloat16): "bf16",
                jnp.dtype(jnp.float16): "fp16"}.get(self.compute_dtype, self.compute_dtype.name)
        if ENGINE_POLICIES.get(base) == self:
            return base
        return f"{base}(" + ",".join(f"{k}={v}" for k, v in self.to_dict().items()) + ")"

    def to_dict(self) -> dict[str, str]:
        return {f.name: jnp.dtype(getattr(self, f.name)).name for f in dataclasses.fields(self)}

    def model_policy(self) -> DtypePolicy:
        """The model-level ``DtypePolicy`` the engine's forward runs under (parameters already synced)."""
        return DtypePolicy(self.compute_dtype, self.compute_dtype, jnp.float32, self.accum_dtype)

    def sync(self, masters: dict) -> dict:
        """Weight sync: one cast of the float32 master parameters into this engine's dtypes.

        masters: the pure-dict parameters of a ``LlamaForCausalLM`` (``nnx.state(model, nnx.Param)
        .to_pure_dict()``). Returns the same tree cast to ``compute_dtype`` plus ``HEAD_KEY``: the LM
        head weight (the untied ``lm_head`` [D, V], or the tied embedding [V, D]) in ``lm_head_dtype``.
        Differentiable: gradients flow back to the masters in the master dtype.
        """
        if not isinstance(masters, dict) or "embed" not in masters:
            raise ValueError("masters: expected the pure-dict parameters of a LlamaForCausalLM (with 'embed')")

        def cast(x):
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
                if jnp.dtype(x.dtype) != self.master_dtype:
                    raise ValueError(
                        f"masters: expected {self.master_dtype.name} master weights, got a {x.dtype} leaf"
                    )
                return x.astype(self.compute_dtype)
            return x

        synced = jax.tree.map(cast, {k: v for k, v in masters.items() if k != HEAD_KEY})
        head = masters["lm_head"] if "lm_head" in masters else masters["embed"]["embedding"]
        synced[HEAD_KEY] = head.astype(self.lm_head_dtype)
        return synced


ENGINE_POLICIES: dict[str, EnginePolicy] = {
    "fp32": EnginePolicy(compute_dtype=jnp.float32),
    "bf16": EnginePolicy(compute_dtype=jnp.bfloat16),
    "fp16": EnginePolicy(compute_dtype=jnp.float16),
}


def engine_policy(policy: str | EnginePolicy, **overrides: Any) -> EnginePolicy:
    """A policy from a name (``fp32`` / ``bf16`` / ``fp16``, f32 masters) or a policy, with overrides."""
    if isinstance(policy, EnginePolicy):
        base = policy
    elif isinstance(policy, str) and policy in ENGINE_POLICIES:
        base = ENGINE_POLICIES[policy]
    else:
        raise ValueError(f"policy: unknown engine policy {policy!r}; expected one of {sorted(ENGINE_POLICIES)}")
    return base.replace(**overrides) if overrides else base


