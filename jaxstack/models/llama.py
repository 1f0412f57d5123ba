"""Llama-family decoder: Llama, SmolLM2, Qwen2 / Qwen2.5 (q/k/v bias), in Flax NNX.

Read top to bottom: the cache and output pytrees, the decoder layer, the model. The layer stack runs
either as a Python loop over ``nnx.List`` layers or as ``lax.scan`` over stacked parameters
(``config.scan_layers``); both call the same ``_layer_step`` so they give identical logits. The
layer index is passed into ``_layer_step`` as data (a traced integer under scan), which is where
per-layer interventions and activation capture hook in without retracing per setting
(``intervention=`` / ``capture=``, :mod:`jaxstack.layers.interventions`; under scan the intervention's
per-layer slice is a scan input and the capture buffer [K, B, P, D] rides in the carry).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxstack.layers.attention import Attention, param
from jaxstack.layers.embedding import Embedding
from jaxstack.layers.interventions import Capture, Intervention, LayerHooks, LayerIntervention
from jaxstack.layers.mlp import SwiGLU
from jaxstack.layers.norms import RMSNorm
from jaxstack.layers.options import TRAINING_KERNELS, KernelOptions
from jaxstack.layers.rotary import rope_angles
from jaxstack.models.configs import LlamaConfig
from jaxstack.precision import DtypePolicy, get_policy


@struct.dataclass
class KVCache:
    """Decode state, an explicit pytree that goes in and comes out of every model call.

    k, v: per layer, heads-major ``[B, KV, S, hd]`` (cache dtype), the layout the decode matmuls read
    (no transpose or GQA repeat per step). Two forms of the same values: a tuple of L such arrays
    (``init_cache``'s form for the layer loop: each layer's cache is its own buffer, updated in place,
    never sliced out of or re-stacked into a stacked array) or one stacked array ``[L, B, KV, S, hd]``
    (the form for ``scan_layers``, whose layer scan slices it). A model call returns the form it was
    given; ``np.asarray(cache.k)`` is ``[L, B, KV, S, hd]`` for both. lengths: [B] int32, filled slots
    per row. Slot ``s`` of a row holds the token at slot index ``s`` of that row's sequence
    (left-aligned; no left padding).
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    lengths: jax.Array

    @property
    def layered(self) -> bool:
        """True for the per-layer tuple form."""
        return isinstance(self.k, (tuple, list))

    @property
    def num_layers(self) -> int:
        return len(self.k) if self.layered else self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0] if self.layered else self.k.shape[1]

    @property
    def max_length(self) -> int:
        return self.k[0].shape[2] if self.layered else self.k.shape[3]

    def stacked(self) -> KVCache:
        """This cache with k, v as [L, B, KV, S, hd] arrays (a copy when layered)."""
        if not self.layered:
            return self
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))

    def per_layer(self) -> KVCache:
        """This cache with k, v as tuples of L [B, KV, S, hd] arrays."""
        if self.layered:
            return self.replace(k=tuple(self.k), v=tuple(self.v))
        return self.replace(k=tuple(self.k[i] for i in range(self.k.shape[0])),
                            v=tuple(self.v[i] for i in range(self.v.shape[0])))

    def batch_axes(self) -> KVCache:
        """The batch axis of each leaf (0 for per-layer arrays and lengths, 1 for stacked arrays), as
        a pytree of the cache's structure (``jax.tree.map`` over the cache and this)."""
        axis = 0 if self.layered else 1
        return jax.tree.map(lambda a: 0 if a.ndim == 1 else axis, self)


@struct.dataclass
class ModelOutput:
    """logits: [B, T, V] (policy.output_dtype); cache: the model's updated decode state (KVCache here,
    KimiCache for Kimi Linear) or None; captured: with ``capture=``, ``{name: [K, B, P, D]}`` (see
    :class:`jaxstack.layers.interventions.Capture`), else None. Shared by every model family."""

    logits: jax.Array
    cache: Any = None
    captured: dict[str, jax.Array] | None = None


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> KVCache:
    """An empty cache for ``batch_size`` rows of up to ``max_length`` tokens each: per-layer arrays
    (a tuple) for the layer loop, stacked arrays with ``config.scan_layers`` (see :class:`KVCache`)."""
    if max_length <= 0 or batch_size <= 0:
        raise ValueError(f"init_cache: batch_size and max_length must be positive, got {batch_size}, {max_length}")
    shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
    lengths = jnp.zeros((batch_size,), jnp.int32)
    if config.scan_layers:
        stacked = (config.num_layers,) + shape
        return KVCache(k=jnp.zeros(stacked, dtype), v=jnp.zeros(stacked, dtype), lengths=lengths)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))  # noqa: E731
    return KVCache(k=zeros(), v=zeros(), lengths=lengths)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, *, policy: DtypePolicy, rngs: nnx.Rngs):
        std = config.initializer_range
        self.input_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        self.attention = Attention(
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            qkv_bias=config.qkv_bias,
            sliding_window=config.sliding_window,
            implementation=config.attention_implementation,
            init_std=std,
            policy=policy,
            rngs=rngs,
        )
        self.post_attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, init_std=std, policy=policy, rngs=rngs)

    def __call__(self, x, rope, *, segment_ids=None, cache=None, attention_allowed=None, query_indices=None,
                 kernels: KernelOptions = TRAINING_KERNELS):
        """x: [B, T, D]. cache: (k [B,KV,S,hd], v, lengths [B]) or None. Returns (x, (k, v) or None).

        query_indices: [B, P] (no cache): compute the layer's output only at these positions (keys and
        values still come from all T); returns x [B, P, D]. Used for the last layer when only some
        positions' logits are wanted. kernels: the kernel options (``layers.options``).
        """
        x, new_cache, _, _ = self.parts(x, rope, segment_ids=segment_ids, cache=cache,
                                        attention_allowed=attention_allowed, query_indices=query_indices,
                                        kernels=kernels)
        return x, new_cache

    def parts(self, x, rope, *, segment_ids=None, cache=None, attention_allowed=None, query_indices=None,
              kernels: KernelOptions = TRAINING_KERNELS):
        """As ``__call__``, also returning the block's two residual updates: (x, new cache, attention
        output [B, T or P, D], MLP output [B, T or P, D])."""
        chunks = kernels.norm_chunks
        attended, new_cache = self.attention(self.input_norm(x, chunks=chunks), rope, segment_ids=segment_ids,
                                             cache=cache, attention_allowed=attention_allowed,
                                             query_indices=query_indices, kernels=kernels)
        if query_indices is not None:
            x = jnp.take_along_axis(x, query_indices[:, :, None], axis=1)
        x = x + attended
        mlp_out = self.mlp(self.post_attention_norm(x, chunks=chunks))
        x = x + mlp_out
        return x, new_cache, attended, mlp_out


def _layer_step(layer: DecoderLayer, x, rope, masks, layer_cache, lengths, layer_index, query_indices=None,
                kernels: KernelOptions = TRAINING_KERNELS, hooks: LayerHooks | None = None,
                edit: LayerIntervention | None = None, buffers=None):
    """One layer. ``masks`` = (segment_ids, attention_allowed). ``layer_index`` is data (a Python int
    in the loop, traced under scan). hooks / edit / buffers: the call's intervention and capture
    (``layers.interventions.LayerHooks``), this layer's intervention slice, the capture buffers.
    Returns (x, (k, v) or None, buffers)."""
    cache = None if layer_cache is None else (layer_cache[0], layer_cache[1], lengths)
    segment_ids, allowed = masks
    if hooks is None:
        x, new_cache = layer(x, rope, segment_ids=segment_ids, cache=cache, attention_allowed=allowed,
                             query_indices=query_indices, kernels=kernels)
        return x, new_cache, buffers
    x, buffers = hooks.before(x, layer_index, edit, buffers)
    x, new_cache, attended, mlp_out = layer.parts(x, rope, segment_ids=segment_ids, cache=cache,
                                                  attention_allowed=allowed, query_indices=query_indices,
                                                  kernels=kernels)
    x, buffers = hooks.after(x, attended, mlp_out, layer_index, edit, buffers, query_indices)
    return x, new_cache, buffers


class LlamaForCausalLM(nnx.Module):
    """Decoder-only LM. ``model(tokens, positions=None, *, segment_ids=None, cache=None,
    intervention=None, capture=None)``."""

    def __init__(self, config: LlamaConfig, *, policy: DtypePolicy | str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.policy = policy = get_policy(policy)
        std = config.initializer_range
        self.embed = Embedding(config.vocab_size, config.hidden_size, init_std=std, policy=policy, rngs=rngs)
        if config.scan_layers:
            self.layers = _stacked_layers(config, policy, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(config, policy=policy, rngs=rngs) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), std=std,
                                 dtype=policy.param_dtype)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        attention_allowed: jax.Array | None = None,
        logits_indices: jax.Array | None = None,
        kernels: KernelOptions = TRAINING_KERNELS,
        intervention: Intervention | None = None,
        capture: Capture | None = None,
        cache_fresh: bool = False,
    ) -> ModelOutput:
        """tokens: [B, T] int. positions: [B, T] int (default: 0..T-1, or continuing the cache).

        segment_ids: [B, T] int for packed sequences (attention stays within a segment; pass positions
        that restart per segment). cache: a KVCache to decode with (the T tokens are appended).
        attention_allowed: [B, T, T] bool (no cache), ANDed with the causal mask: e.g. several
        continuations packed after one shared context, each seeing the context and itself only
        (``jaxstack.inference.scoring`` scores multiple-choice items this way).
        logits_indices: [B, P] int, token indices (each in [0, T); repeats allowed) at which to compute
        logits; default all. Without a
        cache the last layer also runs its queries, attention output and MLP at these P positions
        only (the earlier layers' keys and values need every position, the last layer's outputs do
        not), and the LM head runs on P positions instead of T.
        kernels: which implementation of the same math to run (``layers.options.KernelOptions``: fused
        QKV, online-softmax attention, split norm reductions); the default is the training kernels.
        intervention: an :class:`~jaxstack.layers.interventions.Intervention` (residual edits per
        layer and row over a window of absolute positions: ``positions``, by default ``0..T-1`` or
        ``cache.lengths + t``). With ``logits_indices`` and no cache the pruned last layer applies its
        "post" edit at the P kept positions (their own positions), so pruning stays on.
        capture: a :class:`~jaxstack.layers.interventions.Capture`; ``output.captured[name]`` is
        [K, B, P, D]. A capture that reads the last layer's output (site "post", or "attention" /
        "mlp") switches the last-layer pruning of ``logits_indices`` off (the logits are the same).
        cache_fresh: with a cache, every row starts afresh (a prefill): the cache's ``lengths`` are
        taken as 0, the T tokens are written at slots 0..T-1 and attend causally among themselves only
        (the no-cache attention, about half the work of attending over all S slots under a mask); the
        returned lengths are T. Same result as ``cache.replace(lengths=zeros)`` without the flag.
        Returns ModelOutput(logits [B, T or P, V] in policy.output_dtype, cache, captured). The LM head
        runs in ``policy.lm_head_dtype`` (the compute dtype unless the policy says e.g. float32).
        """
        self._check_inputs(tokens, positions, segment_ids, cache)
        _check_tree_inputs(tokens, attention_allowed, logits_indices, cache)
        batch, length = tokens.shape
        num_layers = self.config.num_layers
        if intervention is not None:
            intervention.validate(num_layers, batch, self.config.hidden_size)
        if capture is not None:
            capture.validate(num_layers, batch, length)
        if cache_fresh and cache is None:
            raise ValueError("cache_fresh: needs a cache to prefill")
        if cache_fresh:
            cache = cache.replace(lengths=jnp.zeros_like(cache.lengths))
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
            if cache is not None and not cache_fresh:
                positions = positions + cache.lengths[:, None]
        rope = rope_angles(
            positions, self.config.head_dim, self.config.rope_theta, self.config.rope_scaling, self.policy.accum_dtype
        )
        x = self.embed(tokens)
        if logits_indices is not None:
            logits_indices = logits_indices.astype(jnp.int32)
        hooks = None
        if intervention is not None or capture is not None:
            hooks = LayerHooks(positions, None if intervention is None else intervention.site, capture, num_layers)
        prune = logits_indices if cache is None else None
        if hooks is not None and hooks.needs_all_positions(num_layers - 1):
            prune = None
        x, new_kv, captured = self._run_layers(x, rope, (segment_ids, attention_allowed), cache, prune, kernels,
                                               hooks, intervention, fresh=cache_fresh)
        if logits_indices is not None and prune is None:
            x = jnp.take_along_axis(x, logits_indices[:, :, None], axis=1)
        x = self.norm(x, chunks=kernels.norm_chunks)
        head = self.policy.lm_head_dtype
        if self.lm_head is None:  # tied: the embedding table [V, D]
            logits = jnp.einsum("btd,vd->btv", x.astype(head), self.embed.embedding[...].astype(head))
        else:
            logits = x.astype(head) @ self.lm_head[...].astype(head)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=new_kv[0], v=new_kv[1], lengths=cache.lengths + length)
            new_cache = new_cache.per_layer() if cache.layered else new_cache.stacked()  # the form given
        captured = None if hooks is None else hooks.finish(captured)
        return ModelOutput(logits=logits.astype(self.policy.output_dtype), cache=new_cache, captured=captured)

    def _run_layers(self, x, rope, masks, cache, query_indices=None, kernels: KernelOptions = TRAINING_KERNELS,
                    hooks: LayerHooks | None = None, intervention: Intervention | None = None,
                    fresh: bool = False):
        """All layers; with ``query_indices`` (no cache) the last one runs at those positions only.
        ``fresh``: the cache's rows start afresh (the layers get ``lengths`` None, see ``attention``).

        Returns (x, (k, v) stacked over layers or None, capture buffers (``hooks.finish`` them))."""
        lengths = None if cache is None or fresh else cache.lengths
        last = self.config.num_layers - 1
        buffers = {} if hooks is None else hooks.init_buffers(x.shape[0], x.shape[-1], x.dtype,
                                                              stacked=self.config.scan_layers)
        if not self.config.scan_layers:
            # each layer reads and updates its own cache buffer: no slice out of / stack into a
            # stacked array, so XLA writes the new slots in place
            cache = None if cache is None else cache.per_layer()
            ks, vs = [], []
            for index, layer in enumerate(self.layers):
                layer_cache = None if cache is None else (cache.k[index], cache.v[index])
                edit = None if intervention is None else intervention.layer(index)
                x, kv, buffers = _layer_step(layer, x, rope, masks, layer_cache, lengths, index,
                                             query_indices if index == last else None, kernels, hooks, edit,
                                             buffers)
                if kv is not None:
                    ks.append(kv[0])
                    vs.append(kv[1])
            return x, ((tuple(ks), tuple(vs)) if cache is not None else None), buffers

        graphdef, state = nnx.split(self.layers)
        remat = self.config.remat

        def body(carry, xs):
            x, buffers = carry
            layer_state, layer_cache, index, edit = xs
            layer = nnx.merge(graphdef, layer_state)
            y, kv, buffers = _layer_step(layer, x, rope, masks, layer_cache, lengths, index, kernels=kernels,
                                         hooks=hooks, edit=edit, buffers=buffers)
            return (y, buffers), kv

        if remat:
            body = jax.checkpoint(body, prevent_cse=False)
        cache = None if cache is None else cache.stacked()
        layer_caches = None if cache is None else (cache.k, cache.v)
        indices = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        edits = None if intervention is None else intervention.stacked()  # per-layer slices as scan inputs
        if query_indices is None:
            (x, buffers), kv = jax.lax.scan(body, (x, buffers), (state, layer_caches, indices, edits))
            return x, kv, buffers
        # scan all but the last layer, then the last one at the query positions only
        head = jax.tree.map(lambda a: a[:last], (state, edits))
        (x, buffers), _ = jax.lax.scan(body, (x, buffers), (head[0], None, indices[:last], head[1]))

        def final(x, buffers, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            edit = None if intervention is None else intervention.layer(last)
            y, _, buffers = _layer_step(layer, x, rope, masks, None, None, last, query_indices, kernels, hooks,
                                        edit, buffers)
            return y, buffers

        if remat:
            final = jax.checkpoint(final, prevent_cse=False)
        x, buffers = final(x, buffers, jax.tree.map(lambda a: a[last], state))
        return x, None, buffers

    def _check_inputs(self, tokens, positions, segment_ids, cache):
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens: expected an integer array [B, T], got {tokens.dtype}{list(tokens.shape)}")
        for name, value in (("positions", positions), ("segment_ids", segment_ids)):
            if value is not None and (value.shape != tokens.shape or not jnp.issubdtype(value.dtype, jnp.integer)):
                raise ValueError(
                    f"{name}: expected an integer array of the tokens' shape {list(tokens.shape)}, "
                    f"got {value.dtype}{list(value.shape)}"
                )
        if cache is not None:
            expected = (self.config.num_layers, tokens.shape[0])
            if (cache.num_layers, cache.batch_size) != expected:
                raise ValueError(f"cache: expected k of shape [L={expected[0]}, B={expected[1]}, ...], got "
                                 f"{[cache.num_layers, cache.batch_size]} (layers, rows)")
            if tokens.shape[1] > cache.max_length:
                raise ValueError(f"tokens: {tokens.shape[1]} tokens do not fit a cache of {cache.max_length} slots")


def _check_tree_inputs(tokens, attention_allowed, logits_indices, cache):
    batch, length = tokens.shape
    if attention_allowed is not None:
        if attention_allowed.shape != (batch, length, length) or attention_allowed.dtype != jnp.bool_:
            raise ValueError(f"attention_allowed: expected a bool array [B, T, T] = {[batch, length, length]}, "
                             f"got {attention_allowed.dtype}{list(attention_allowed.shape)}")
        if cache is not None:
            raise ValueError("attention_allowed: not supported together with a KV cache")
    if logits_indices is not None and (
        logits_indices.ndim != 2 or logits_indices.shape[0] != batch
        or not jnp.issubdtype(logits_indices.dtype, jnp.integer)
    ):
        raise ValueError(f"logits_indices: expected an integer array [B={batch}, P], "
                         f"got {logits_indices.dtype}{list(logits_indices.shape)}")


def _stacked_layers(config: LlamaConfig, policy: DtypePolicy, rngs: nnx.Rngs) -> DecoderLayer:
    """num_layers DecoderLayers with parameters stacked on a leading 'layers' axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(config, policy=policy, rngs=rngs)

    return create(rngs)


def stack_layer_params(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Returns a scan-layers copy of a loop-layers model (same parameters), for tests and conversion."""
    if model.config.scan_layers:
        return model
    config = model.config.replace(scan_layers=True)
    stacked = nnx.eval_shape(lambda: LlamaForCausalLM(config, policy=model.policy, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(params))
    target = nnx.state(stacked, nnx.Param)
    new = {}
    for path, variable in nnx.to_flat_state(target):
        if path[0] == "layers":
            leaves = [flat[("layers", i) + path[1:]][...] for i in range(config.num_layers)]
            new[path] = jnp.stack(leaves)
        else:
            new[path] = flat[path][...]
    nnx.update(stacked, nnx.from_flat_state({p: v.replace(new[p]) for p, v in nnx.to_flat_state(target)}))
    return stacked
