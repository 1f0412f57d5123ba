"""Interventions and activation capture as data (DESIGN principle 5): the pytree types and pure math.

The models (``models/llama.py``, ``models/kimi_linear.py``) take ``intervention=`` and ``capture=`` as
ordinary arguments of their forward. Both are :mod:`flax.struct` dataclasses: their arrays (vectors,
scales, windows, capture positions) are traced, their strings and layer tuples are static. Changing a
vector, a strength, the edited layer or the window therefore never recompiles a jitted forward, in
the Python layer loop and under ``lax.scan`` alike (the per-layer slice is a scan input).

These types live in ``jaxstack.layers`` (below the models) so that the models can import them; the
public names are re-exported from :mod:`jaxstack.interp`, next to the code that builds concept vectors.

Sites and layers (TransformerLens' ``resid_pre`` / ``resid_post``)::

    h_pre[l]  = residual entering block l        (h_pre[0] = the token embeddings)
    h_post[l] = residual leaving block l         (h_post[l] = h_pre[l + 1]; h_post[L-1] is the final
                                                  residual, before the final norm)

Edit semantics, at layer ``l``, for token ``t`` of row ``b`` with absolute position ``p = positions[b, t]``
in the window ``start[b] <= p < end[b]`` and with ``scales[l, b] != 0`` (everywhere else ``h`` is
left exactly as it was, bit for bit: the edit is selected with ``jnp.where``, never added as ``0 * v``)::

    "add":          h <- h + s v
    "replace":      h <- s v
    "project_out":  h <- h - s (h . u) u,   u = v / |v|  (s = 1 removes the component along v;
                                            a zero vector leaves h unchanged)

with ``s = scales[l, b]`` and ``v = vectors[l, b]``. The edit is computed in float32 and cast back to
the residual's dtype. Positions are absolute (with a cache: ``cache.lengths[b] + t`` unless the caller
passes ``positions``), so a window stays put during cached decode, including one that starts
mid-generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

KINDS = ("add", "replace", "project_out")
SITES = ("post", "pre")
CAPTURABLE = ("residual", "attention", "mlp")

#: ``end`` meaning "through every generated token": the largest int32.
NO_END = int(np.iinfo(np.int32).max)


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_shape(name: str, value, expected: Sequence[Any], described: str) -> None:
    """chex's shape check, re-raised as a ValueError that names the field and the expected shape."""
    try:
        chex.assert_shape(value, expected)
    except AssertionError:
        raise ValueError(f"{name}: expected shape {described}, got {list(np.shape(value))}") from None


def _check_dtype(name: str, value, kind, described: str) -> None:
    if not jnp.issubdtype(value.dtype, kind):
        raise ValueError(f"{name}: expected {described}, got dtype {value.dtype}")


# ----------------------------------------------------------------------------------------------------
# Interventions


@struct.dataclass
class LayerIntervention:
    """One layer's slice of an :class:`Intervention` (what a layer step sees; a scan input per layer).

    vector: [b, D] float; scale: [b] float; start, end: [b] int32, with b = B or 1 (broadcast over rows).
    """

    vector: jax.Array
    scale: jax.Array
    start: jax.Array
    end: jax.Array
    kind: str = struct.field(pytree_node=False, default="add")

    def apply(self, h: jax.Array, positions: jax.Array) -> jax.Array:
        """The edited residual. h: [B, T, D]; positions: [B, T] int absolute positions of h's tokens."""
        return edit_residual(h, positions, self.vector, self.scale, self.start, self.end, self.kind)


def edit_residual(h, positions, vector, scale, start, end, kind: str = "add"):
    """Pure edit math (see the module docstring).

    h: [B, T, D] any float dtype; positions: [B, T] int; vector: [b, D]; scale: [b]; start, end: [b]
    int, b in {1, B}. Returns h' [B, T, D] in h's dtype, equal to h bit for bit wherever the edit is off.
    """
    positions = positions.astype(jnp.int32)
    start = start.astype(jnp.int32)[:, None]
    end = end.astype(jnp.int32)[:, None]
    scale = scale.astype(jnp.float32)
    active = (positions >= start) & (positions < end) & (scale != 0)[:, None]  # [B, T]
    s = scale[:, None, None]
    v = vector.astype(jnp.float32)[:, None, :]  # [b, 1, D]
    x = h.astype(jnp.float32)
    if kind == "add":
        edited = x + s * v
    elif kind == "replace":
        edited = jnp.broadcast_to(s * v, x.shape)
    elif kind == "project_out":
        norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
        u = jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0), 0.0)
        edited = x - s * jnp.sum(x * u, axis=-1, keepdims=True) * u
    else:
        raise ValueError(f"intervention.kind: expected one of {KINDS}, got {kind!r}")
    return jnp.where(active[:, :, None], edited.astype(h.dtype), h)


def _layer_weights(layers, num_layers: int) -> jax.Array:
    """[L] float32 per-layer weights from an index, indices, or weights (see Intervention.add)."""
    if isinstance(layers, (bool, np.bool_)):
        raise ValueError(f"layers: expected a layer index, a sequence of indices or [L] float weights, got {layers!r}")
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    elif isinstance(layers, (list, tuple)):
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"layers: a sequence must hold integer layer indices, got {layers!r}")
        layers = [int(i) for i in layers]
    if isinstance(layers, list):
        for i in layers:
            if not -num_layers <= i < num_layers:
                raise ValueError(f"layers: index {i} is out of range for a model of {num_layers} layers")
        weights = np.zeros((num_layers,), np.float32)
        for i in layers:
            weights[i % num_layers] = 1.0
        return jnp.asarray(weights)
    layers = jnp.asarray(layers)
    if jnp.issubdtype(layers.dtype, jnp.integer):  # traced or concrete indices: a one-hot / multi-hot
        if layers.ndim > 1:
            raise ValueError(f"layers: integer indices must be a scalar or [K], got shape {list(layers.shape)}")
        if _is_concrete(layers):
            values = np.asarray(layers).reshape(-1)
            if values.size and (values.min() < -num_layers or values.max() >= num_layers):
                raise ValueError(f"layers: indices {values.tolist()} out of range for a model of {num_layers} layers")
        indices = jnp.atleast_1d(layers) % num_layers
        return jnp.any(jnp.arange(num_layers)[:, None] == indices[None, :], axis=1).astype(jnp.float32)
    if layers.shape != (num_layers,):
        raise ValueError(f"layers: float per-layer weights must have shape [L={num_layers}], got {list(layers.shape)}")
    return layers.astype(jnp.float32)


@struct.dataclass
class Intervention:
    """Per-layer, per-row residual edits over a window of absolute positions.

    vectors: [L, b, D] float, the vector for layer l, row b. scales: [L, b] float, per-layer per-row
    strength (0 = no edit at that layer). start, end: [b] int32, the window ``start <= position < end``
    (``end = NO_END`` runs through every generated token). b is the batch B, or 1 to apply the same
    edit to every row. kind (static): "add" | "replace" | "project_out". site (static): "post" (the
    residual leaving block l) | "pre" (entering block l). See the module docstring for the math.

    Build one with :meth:`add`, :meth:`replace_with` or :meth:`project_out` (they broadcast vectors and
    strengths), or :meth:`none` (a no-op of the right shape, e.g. the baseline of a jitted sweep).
    """

    vectors: jax.Array
    scales: jax.Array
    start: jax.Array
    end: jax.Array
    kind: str = struct.field(pytree_node=False, default="add")
    site: str = struct.field(pytree_node=False, default="post")

    # -- constructors ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, kind: str, vector, *, layers, num_layers: int, strength=1.0, start=0, end=NO_END,
              batch: int | None = None, site: str = "post") -> Intervention:
        """The general constructor behind :meth:`add` / :meth:`replace_with` / :meth:`project_out`.

        vector: [D] (every row), [B, D] (one per row) or [L, B, D] (per layer and row).
        layers: an int or a sequence of ints (edit these layers, weight 1), an integer array (scalar
        or [K], may be traced: a layer sweep without recompiling) or a float array [L] of per-layer
        weights. strength: a float or [B] per row (may be traced); scales = weights[l] * strength[b].
        start, end: int or [B]. batch: the number of rows b (default: from vector / strength / start /
        end, else 1).
        """
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if site not in SITES:
            raise ValueError(f"site: expected one of {SITES}, got {site!r}")
        if not isinstance(num_layers, (int, np.integer)) or num_layers <= 0:
            raise ValueError(f"num_layers: expected a positive integer, got {num_layers!r}")
        vector = jnp.asarray(vector)
        if vector.ndim not in (1, 2, 3) or not jnp.issubdtype(vector.dtype, jnp.floating):
            raise ValueError(f"vector: expected a float array [D], [B, D] or [L, B, D], got "
                             f"{vector.dtype}{list(vector.shape)}")
        if vector.ndim == 3 and vector.shape[0] != num_layers:
            raise ValueError(f"vector: a [L, B, D] vector needs L = num_layers = {num_layers}, "
                             f"got {list(vector.shape)}")
        strength = jnp.asarray(strength, jnp.float32)
        start = jnp.asarray(start, jnp.int32)
        end = jnp.asarray(end, jnp.int32)
        for name, value in (("strength", strength), ("start", start), ("end", end)):
            if value.ndim > 1:
                raise ValueError(f"{name}: expected a scalar or [B], got shape {list(value.shape)}")
        sizes = {value.shape[0] for value in (strength, start, end) if value.ndim == 1}
        if vector.ndim >= 2:
            sizes.add(vector.shape[-2])
        if batch is not None:
            sizes.add(int(batch))
        sizes.discard(1)
        if len(sizes) > 1:
            raise ValueError(f"batch: vector / strength / start / end / batch disagree on the number of rows: "
                             f"{sorted(sizes)}")
        rows = sizes.pop() if sizes else 1
        hidden = vector.shape[-1]
        weights = _layer_weights(layers, num_layers)
        vector = vector[(None,) * (3 - vector.ndim)]  # [D] -> [1, 1, D], [B, D] -> [1, B, D]
        vectors = jnp.broadcast_to(vector, (num_layers, rows, hidden)).astype(jnp.float32)
        scales = weights[:, None] * jnp.broadcast_to(strength, (rows,))[None, :]
        return cls(vectors=vectors, scales=scales, start=jnp.broadcast_to(start, (rows,)),
                   end=jnp.broadcast_to(end, (rows,)), kind=kind, site=site)

    @classmethod
    def add(cls, vector, *, layers, num_layers: int, strength=1.0, start=0, end=NO_END,
            batch: int | None = None, site: str = "post") -> Intervention:
        """``h += strength * vector`` at ``layers`` inside the window (arguments: :meth:`build`)."""
        return cls.build("add", vector, layers=layers, num_layers=num_layers, strength=strength, start=start,
                         end=end, batch=batch, site=site)

    @classmethod
    def replace_with(cls, vector, *, layers, num_layers: int, strength=1.0, start=0, end=NO_END,
                     batch: int | None = None, site: str = "post") -> Intervention:
        """``h = strength * vector`` at ``layers`` inside the window (arguments: :meth:`build`). Named
        ``replace_with`` so that the dataclass' own ``replace(**fields)`` keeps working."""
        return cls.build("replace", vector, layers=layers, num_layers=num_layers, strength=strength, start=start,
                         end=end, batch=batch, site=site)

    @classmethod
    def project_out(cls, vector, *, layers, num_layers: int, strength=1.0, start=0, end=NO_END,
                    batch: int | None = None, site: str = "post") -> Intervention:
        """``h -= strength * (h . u) u``, u = vector / |vector| (arguments: :meth:`build`)."""
        return cls.build("project_out", vector, layers=layers, num_layers=num_layers, strength=strength,
                         start=start, end=end, batch=batch, site=site)

    @classmethod
    def none(cls, num_layers: int, hidden: int, *, batch: int = 1, kind: str = "add",
             site: str = "post") -> Intervention:
        """A no-op (all scales 0) of the given shape: the forward is bit-identical to no intervention."""
        return cls.build(kind, jnp.zeros((hidden,), jnp.float32), layers=jnp.zeros((num_layers,), jnp.float32),
                         num_layers=num_layers, batch=batch, site=site)

    # -- shape checks and slicing ---------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self.vectors.shape[0]

    @property
    def batch(self) -> int:
        """Rows b of this intervention (1 = the same edit for every row)."""
        return self.vectors.shape[1]

    def validate(self, num_layers: int, batch: int, hidden: int) -> None:
        """Raises ValueError (naming the field and the expected shape) unless this fits a model of
        ``num_layers`` layers and width ``hidden`` called on ``batch`` rows."""
        if self.kind not in KINDS:
            raise ValueError(f"intervention.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.site not in SITES:
            raise ValueError(f"intervention.site: expected one of {SITES}, got {self.site!r}")
        rows = {1, batch}
        shown = f"B={batch} or 1"
        _check_shape("intervention.vectors", self.vectors, (num_layers, rows, hidden),
                     f"[L={num_layers}, {shown}, D={hidden}]")
        b = self.vectors.shape[1]
        _check_shape("intervention.scales", self.scales, (num_layers, b), f"[L={num_layers}, b={b}] (b as in vectors)")
        _check_shape("intervention.start", self.start, (b,), f"[b={b}] (b as in vectors)")
        _check_shape("intervention.end", self.end, (b,), f"[b={b}] (b as in vectors)")
        _check_dtype("intervention.vectors", self.vectors, jnp.floating, "a float array")
        _check_dtype("intervention.scales", self.scales, jnp.floating, "a float array")
        _check_dtype("intervention.start", self.start, jnp.integer, "an integer array")
        _check_dtype("intervention.end", self.end, jnp.integer, "an integer array")

    def layer(self, index: int) -> LayerIntervention:
        """Layer ``index``'s slice (a static index: the Python layer loop)."""
        return LayerIntervention(vector=self.vectors[index], scale=self.scales[index], start=self.start,
                                 end=self.end, kind=self.kind)

    def stacked(self) -> LayerIntervention:
        """All layers' slices stacked on a leading [L] axis: the ``xs`` of a layer scan."""
        length = self.num_layers
        return LayerIntervention(vector=self.vectors, scale=self.scales,
                                 start=jnp.broadcast_to(self.start, (length,) + self.start.shape),
                                 end=jnp.broadcast_to(self.end, (length,) + self.end.shape), kind=self.kind)

    def pad_rows(self, extra: int) -> Intervention:
        """This intervention with ``extra`` unedited rows appended (b = B rows only; b = 1 broadcasts)."""
        if extra == 0 or self.batch == 1:
            return self
        return self.replace(
            vectors=jnp.pad(self.vectors, ((0, 0), (0, extra), (0, 0))),
            scales=jnp.pad(self.scales, ((0, 0), (0, extra))),
            start=jnp.pad(self.start, (0, extra)),
            end=jnp.pad(self.end, (0, extra)),
        )


# ----------------------------------------------------------------------------------------------------
# Capture


@struct.dataclass
class Capture:
    """Which activations a forward returns in ``ModelOutput.captured``.

    positions: [B, P] int32 token indices within this call (0..T-1) to read at (traced: change them
    freely). layers (static): which layers (negative indices count from the end), in output order.
    site (static): "post" | "pre", as for :class:`Intervention` (applies to "residual" only).
    what (static): any of "residual" (the residual stream at ``site``), "attention" (the mixer's
    output that block l adds to the residual) and "mlp" (the MLP / MoE output block l adds).

    Output: ``captured[name]``: [K, B, P, D] in the residual's dtype, K = len(layers), in the order of
    ``layers``. Only the K asked-for layers are ever stored (under scan: a [K, B, P, D] buffer in the
    carry, written through a static layer -> slot table). The residual at ``site="post"`` is read after
    any edit at that site (what the next block sees); at ``site="pre"`` likewise after a "pre" edit.
    Layer L-1 "post" is the final residual, before the final norm.
    """

    positions: jax.Array
    layers: tuple[int, ...] = struct.field(pytree_node=False, default=())
    site: str = struct.field(pytree_node=False, default="post")
    what: tuple[str, ...] = struct.field(pytree_node=False, default=("residual",))

    @classmethod
    def at(cls, positions, layers: int | Sequence[int], *, site: str = "post",
           what: str | Sequence[str] = ("residual",)) -> Capture:
        """Convenience constructor: ``positions`` [B, P] (or [B] for one position per row), ``layers``
        an int or a sequence of ints, ``what`` a name or a sequence of names."""
        positions = jnp.asarray(positions, jnp.int32)
        if positions.ndim == 1:
            positions = positions[:, None]
        layers = (layers,) if isinstance(layers, (int, np.integer)) else tuple(layers)
        what = (what,) if isinstance(what, str) else tuple(what)
        return cls(positions=positions, layers=tuple(int(i) for i in layers), site=site, what=what)

    def normalised_layers(self, num_layers: int) -> tuple[int, ...]:
        """``layers`` with negative indices resolved (call :meth:`validate` first)."""
        return tuple(i % num_layers for i in self.layers)

    def validate(self, num_layers: int, batch: int, length: int) -> None:
        """Raises ValueError (naming the field) unless this fits a call on [batch, length] tokens of a
        model of ``num_layers`` layers. Concrete positions are range-checked; traced ones cannot be
        (an out-of-range traced position reads NaN)."""
        if self.site not in SITES:
            raise ValueError(f"capture.site: expected one of {SITES}, got {self.site!r}")
        if not self.what or any(name not in CAPTURABLE for name in self.what) or len(set(self.what)) != len(self.what):
            raise ValueError(f"capture.what: expected distinct names from {CAPTURABLE}, got {self.what!r}")
        if not self.layers:
            raise ValueError("capture.layers: expected at least one layer index")
        for index in self.layers:
            if not isinstance(index, (int, np.integer)) or not -num_layers <= index < num_layers:
                raise ValueError(f"capture.layers: index {index!r} is out of range for a model of {num_layers} layers")
        if len(set(self.normalised_layers(num_layers))) != len(self.layers):
            raise ValueError(f"capture.layers: repeated layer in {self.layers}")
        positions = self.positions
        if getattr(positions, "ndim", None) != 2 or positions.shape[0] != batch:
            raise ValueError(f"capture.positions: expected an integer array [B={batch}, P], got shape "
                             f"{list(np.shape(positions))}")
        _check_dtype("capture.positions", positions, jnp.integer, "an integer array")
        if _is_concrete(positions) and positions.size:
            values = np.asarray(positions)
            if values.min() < 0 or values.max() >= length:
                raise ValueError(f"capture.positions: token indices must be in [0, T={length}) of this call, got "
                                 f"range [{values.min()}, {values.max()}]")

    def slot_table(self, num_layers: int) -> np.ndarray:
        """[L] int32: the output slot of each layer, -1 where a layer is not captured (static)."""
        table = np.full((num_layers,), -1, np.int32)
        for slot, index in enumerate(self.normalised_layers(num_layers)):
            table[index] = slot
        return table

    def init_buffers(self, batch: int, hidden: int, dtype, *, stacked: bool) -> dict[str, Any]:
        """Empty output buffers: ``stacked`` (a layer scan) zeroed ``{name: [K, B, P, D]}`` arrays, written
        in place through the slot table; else (the Python layer loop) ``{name: [None] * K}`` lists of
        per-layer reads, stacked once by :meth:`finish` (fewer ops to compile than K in-place writes)."""
        if not stacked:
            return {name: [None] * len(self.layers) for name in self.what}
        shape = (len(self.layers), batch, self.positions.shape[1], hidden)
        return {name: jnp.zeros(shape, dtype) for name in self.what}

    def finish(self, buffers: dict[str, Any]) -> dict[str, jax.Array]:
        """``{name: [K, B, P, D]}`` from the buffers of either kind."""
        out = {}
        for name, buffer in buffers.items():
            if isinstance(buffer, list):
                missing = [self.layers[slot] for slot, value in enumerate(buffer) if value is None]
                if missing:
                    raise AssertionError(f"internal: capture of layers {missing} was never written")
                buffer = jnp.stack(buffer)
            out[name] = buffer
        return out

    def gather(self, h: jax.Array) -> jax.Array:
        """h [B, T, D] read at ``positions``: [B, P, D] (NaN for an out-of-range traced position)."""
        return jnp.take_along_axis(h, self.positions.astype(jnp.int32)[:, :, None], axis=1, mode="fill",
                                   fill_value=jnp.nan)

    def write(self, buffers: dict[str, Any], name: str, layer_index, h: jax.Array,
              num_layers: int) -> dict[str, Any]:
        """Stores ``gather(h)`` in ``buffers[name]`` at the slot of ``layer_index`` (a Python int: the
        layer loop, a no-op for an uncaptured layer; or a traced int: a layer scan, where an uncaptured
        layer rewrites its slot's old value). Returns the updated buffers."""
        if name not in self.what:
            return buffers
        table = self.slot_table(num_layers)
        buffer = buffers[name]
        if isinstance(layer_index, (int, np.integer)):
            slot = int(table[layer_index])
            if slot < 0:
                return buffers
            if isinstance(buffer, list):
                return {**buffers, name: buffer[:slot] + [self.gather(h)] + buffer[slot + 1:]}
            return {**buffers, name: buffer.at[slot].set(self.gather(h).astype(buffer.dtype))}
        if isinstance(buffer, list):
            raise AssertionError("internal: a traced layer index needs stacked capture buffers")
        slot = jnp.asarray(table)[layer_index]
        safe = jnp.maximum(slot, 0)
        old = jax.lax.dynamic_index_in_dim(buffer, safe, axis=0, keepdims=False)
        new = jnp.where(slot >= 0, self.gather(h).astype(buffer.dtype), old)
        return {**buffers, name: jax.lax.dynamic_update_index_in_dim(buffer, new, safe, axis=0)}


__all__ = [
    "CAPTURABLE",
    "Capture",
    "Intervention",
    "KINDS",
    "LayerHooks",
    "LayerIntervention",
    "NO_END",
    "SITES",
    "edit_residual",
]


# ----------------------------------------------------------------------------------------------------
# The model side: what a layer step does with an intervention and a capture


class LayerHooks:
    """Applies an intervention's layer slice and records captures around one block (model-side helper).

    Built once per model call (not a pytree: the layer loop and the scan body close over it).
    positions: [B, T] int absolute positions of the call's tokens. site: the intervention's site (None
    without one). capture: a validated :class:`Capture` or None. num_layers: L.
    """

    def __init__(self, positions: jax.Array, site: str | None, capture: Capture | None, num_layers: int):
        self.positions = positions
        self.site = site
        self.capture = capture
        self.num_layers = num_layers

    def init_buffers(self, batch: int, hidden: int, dtype, *, stacked: bool) -> dict[str, Any]:
        """See :meth:`Capture.init_buffers` (``{}`` without a capture)."""
        return {} if self.capture is None else self.capture.init_buffers(batch, hidden, dtype, stacked=stacked)

    def finish(self, buffers: dict[str, Any]) -> dict[str, jax.Array] | None:
        """The ``captured`` dict of the model output ({name: [K, B, P, D]}), or None without a capture."""
        return None if self.capture is None else self.capture.finish(buffers)

    def before(self, x, layer_index, edit: LayerIntervention | None, buffers):
        """The residual entering block ``layer_index``: the "pre" edit, then the "pre" capture."""
        if edit is not None and self.site == "pre":
            x = edit.apply(x, self.positions)
        if self.capture is not None and self.capture.site == "pre":
            buffers = self.capture.write(buffers, "residual", layer_index, x, self.num_layers)
        return x, buffers

    def after(self, x, attention, mlp, layer_index, edit: LayerIntervention | None, buffers, query_indices=None):
        """The residual leaving block ``layer_index``: the "post" edit, then the captures. ``attention`` /
        ``mlp``: the block's two residual updates [B, T, D]. query_indices: [B, P] when the block ran
        at those positions only (x: [B, P, D]; the model then captures nothing at this layer)."""
        if edit is not None and self.site == "post":
            positions = self.positions
            if query_indices is not None:
                positions = jnp.take_along_axis(positions, query_indices, axis=1)
            x = edit.apply(x, positions)
        if self.capture is not None:
            if self.capture.site == "post":
                buffers = self.capture.write(buffers, "residual", layer_index, x, self.num_layers)
            buffers = self.capture.write(buffers, "attention", layer_index, attention, self.num_layers)
            buffers = self.capture.write(buffers, "mlp", layer_index, mlp, self.num_layers)
        return x, buffers

    def needs_all_positions(self, layer_index: int) -> bool:
        """Whether block ``layer_index`` must run at every position for the capture (so the model must
        not prune it to the logits positions)."""
        capture = self.capture
        if capture is None or layer_index % self.num_layers not in capture.normalised_layers(self.num_layers):
            return False
        return capture.site == "post" or any(name != "residual" for name in capture.what)
