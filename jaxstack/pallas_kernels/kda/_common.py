"""Shared helpers: argument validation, dtypes, padding to chunks, and the varlen chunk layout."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def default_scale(scale, K):
    return float(K) ** -0.5 if scale is None else scale


def compute_dtype(*xs):
    """float32 for every float input dtype except float64, which computes in float64 (x64 oracles)."""
    dt = jnp.result_type(jnp.float32, *[jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
                                          for x in xs])
    return jnp.float64 if dt == jnp.float64 else jnp.float32


def _is_float(x):
    return jnp.issubdtype(x.dtype, jnp.floating)


def validate(q, k, v, g, beta, initial_state, cu_seqlens):
    """Raises ValueError naming the first bad argument (shapes and dtypes of the public ``kda`` API)."""
    arrs = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    for name, x in arrs.items():
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"kda: {name} must be an array, got {type(x).__name__}")
        if not _is_float(x):
            raise ValueError(f"kda: {name} must have a floating dtype, got {x.dtype}")
    if q.ndim != 4:
        raise ValueError(f"kda: q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"kda: k has shape {tuple(k.shape)}, expected q's shape {tuple(q.shape)}")
    if g.shape != q.shape:
        raise ValueError(f"kda: g has shape {tuple(g.shape)}, expected q's shape {tuple(q.shape)}")
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"kda: v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"kda: beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    V = v.shape[-1]
    if cu_seqlens is not None:
        if not hasattr(cu_seqlens, "shape"):
            cu_seqlens = np.asarray(cu_seqlens)
        if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"kda: cu_seqlens must be 1-D [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
        if not jnp.issubdtype(cu_seqlens.dtype, jnp.integer):
            raise ValueError(f"kda: cu_seqlens must be an integer array, got {cu_seqlens.dtype}")
        if B != 1:
            raise ValueError(f"kda: with cu_seqlens the batch must be 1 (packed sequences), got B={B}")
        if not isinstance(cu_seqlens, jax.core.Tracer):
            cu = np.asarray(cu_seqlens)
            if cu[0] != 0 or np.any(np.diff(cu) < 0) or cu[-1] > T:
                raise ValueError(f"kda: cu_seqlens must start at 0, be non-decreasing and end <= T={T}; got {cu}")
        n_states = cu_seqlens.shape[0] - 1
    else:
        n_states = B
    if initial_state is not None:
        if not hasattr(initial_state, "shape") or not _is_float(initial_state):
            raise ValueError("kda: initial_state must be a floating array [N, H, K, V]")
        if tuple(initial_state.shape) != (n_states, H, K, V):
            raise ValueError(f"kda: initial_state must have shape {(n_states, H, K, V)}, "
                             f"got {tuple(initial_state.shape)}")


def as_cu(cu_seqlens):
    return None if cu_seqlens is None else jnp.asarray(cu_seqlens).astype(jnp.int32)


def to_chunks(x, C):
    """``[B, T, H, D] -> [B, H, NT, C, D]`` (``[B, T, H] -> [B, H, NT, C]``), zero-padding T up to NT*C.

    Zero padding is exact for KDA: a padded token has g = 0 (no decay), beta = 0 (no write) and
    q = 0, so it changes neither the outputs nor the state.
    """
    B, T = x.shape[:2]
    NT = max(1, -(-T // C))
    pad = NT * C - T
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((B, NT, C) + x.shape[2:])
    return jnp.moveaxis(x, 3, 1)


def from_chunks(x, T):
    """Inverse of :func:`to_chunks` for ``[B, H, NT, C, D] -> [B, T, H, D]``."""
    B, H, NT, C = x.shape[:4]
    x = jnp.moveaxis(x, 1, 3).reshape((B, NT * C, H) + x.shape[4:])
    return x[:, :T]


class Segments(NamedTuple):
    """Chunk layout of packed sequences: sequence ``n`` owns chunks ``[cstart[n], cstart[n] + nchunks[n])``.

    Per chunk ``c`` (all int32/bool ``[NT]``): ``seq`` its sequence, ``first``/``last`` whether it is that
    sequence's first/last chunk. Chunks past the last sequence are empty padding (both flags False).
    """

    seq: jax.Array
    first: jax.Array
    last: jax.Array
    cstart: jax.Array
    nchunks: jax.Array


def batch_segments(B, NT):
    """The layout of ``B`` unpacked sequences of ``NT`` chunks each, flattened one after the other."""
    c = jnp.arange(B * NT, dtype=jnp.int32)
    return Segments(seq=c // NT, first=(c % NT) == 0, last=(c % NT) == NT - 1,
                    cstart=jnp.arange(B, dtype=jnp.int32) * NT,
                    nchunks=jnp.full((B,), NT, jnp.int32))


def varlen_layout(cu, T, C):
    """Chunk-aligned packing of ``N`` sequences so that no chunk straddles two sequences.

    Works with traced ``cu`` (static shapes only): each sequence wastes fewer than ``C`` slots, so
    ``NT = ceil((T + N (C - 1)) / C)`` chunks always suffice.

    Returns ``(segments, src, valid, pos)``: stream slot ``p`` holds token ``src[p]`` when ``valid[p]``
    (``[NT * C]``); packed token ``t`` sits at stream slot ``pos[t]`` (``[T]``; tokens past ``cu[-1]``
    are mapped to slot 0 and must be masked by the caller with ``t < cu[-1]``).
    """
    N = cu.shape[0] - 1
    lens = cu[1:] - cu[:-1]
    nch = (lens + C - 1) // C
    cstart = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(nch)[:-1]]).astype(jnp.int32)
    total = jnp.sum(nch)
    NT = max(1, -(-(T + N * (C - 1)) // C))
    c = jnp.arange(NT, dtype=jnp.int32)
    # Last sequence whose first chunk is <= c; zero-length sequences share cstart with the next one and
    # side="right" picks the later (non-empty) owner.
    seq = jnp.clip(jnp.searchsorted(cstart, c, side="right") - 1, 0, N - 1).astype(jnp.int32)
    in_use = c < total
    first = in_use & (c == cstart[seq]) & (nch[seq] > 0)
    last = in_use & (c == cstart[seq] + nch[seq] - 1)
    p = jnp.arange(NT * C, dtype=jnp.int32)
    pc = p // C
    off = (pc - cstart[seq[pc]]) * C + p % C
    valid = (pc < total) & (off < lens[seq[pc]])
    src = jnp.clip(cu[seq[pc]] + off, 0, max(T - 1, 0))
    t = jnp.arange(T, dtype=jnp.int32)
    tseq = jnp.clip(jnp.searchsorted(cu[1:], t, side="right"), 0, N - 1)
    pos = jnp.clip(cstart[tseq] * C + t - cu[tseq], 0, NT * C - 1)
    return Segments(seq, first, last, cstart, nch), src, valid, pos
