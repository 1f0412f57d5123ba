"""The KDA oracles: the token recurrence (a ``lax.scan``) and the chunk algorithm written out plainly.

Per head, with state ``S`` of shape ``[K, V]``::

    S_t = (I - beta_t k_t k_t^T) Diag(exp g_t) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

:func:`kda_reference` is the spec every faster path is tested against (it mirrors fla's
``naive_recurrent_kda``). It is O(T) sequential steps and never fast; keep it simple rather than clever.
:func:`naive_chunk` states the chunkwise algorithm step by step (in the spirit of fla's
``naive_chunk_kda``): the readable bridge between the recurrence and the fast chunk form in ``chunk.py``.

Computation runs in ``float32`` for float32/bfloat16/float16 inputs and in ``float64`` when the inputs
are float64 (``jax_enable_x64``), so it can serve as an fp64 oracle for the chunked form.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from jaxstack.pallas_kernels.kda import _common

_HI = lax.Precision.HIGHEST


def kda_reference(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                  cu_seqlens=None):
    """Token-by-token KDA recurrence (the oracle).

    Args:
      q, k: ``[B, T, H, K]``. v: ``[B, T, H, V]``. g: ``[B, T, H, K]`` log-decay (``<= 0``).
      beta: ``[B, T, H]``. scale: multiplies q; default ``K ** -0.5``.
      initial_state: ``[B, H, K, V]`` (or ``[N, H, K, V]`` with ``cu_seqlens``), float; default zeros.
      output_final_state: return the final state (else ``None``).
      cu_seqlens: optional int ``[N + 1]`` offsets of packed sequences (``B`` must be 1); each sequence
        starts from its own initial state and yields its own final state.

    Returns:
      ``(o, final_state)``: o ``[B, T, H, V]`` in v's dtype; final_state ``[B|N, H, K, V]`` in the compute
      dtype (float32, or float64 for float64 inputs), or ``None``.
    """
    _common.validate(q, k, v, g, beta, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = _common.compute_dtype(q, k, v, g, beta)
    scale = _common.default_scale(scale, K)
    n_states = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    h0 = (jnp.zeros((n_states, H, K, V), cd) if initial_state is None
          else jnp.asarray(initial_state).astype(cd))

    # Time-major for the scan.
    xs = [jnp.moveaxis(x.astype(cd), 1, 0) for x in (q, k, v, g, beta)]

    def update(S, qt, kt, vt, gt, bt):
        S = S * jnp.exp(gt)[..., None]                                        # Diag(exp g_t) S
        pred = jnp.einsum("bhk,bhkv->bhv", kt, S, precision=_HI)             # k_t^T S
        S = S + jnp.einsum("bhk,bhv->bhkv", bt[..., None] * kt, vt - pred, precision=_HI)
        o = jnp.einsum("bhk,bhkv->bhv", qt * scale, S, precision=_HI)        # read after the update
        return S, o

    if cu_seqlens is None:
        def step(S, x):
            return update(S, *x)

        S, o = lax.scan(step, h0, xs)
        final = S
    else:
        # Packed sequences (B == 1): reset the state at each sequence start, record it at each end.
        cu = jnp.asarray(cu_seqlens).astype(jnp.int32)
        t = jnp.arange(T, dtype=jnp.int32)
        seq = jnp.clip(jnp.searchsorted(cu[1:], t, side="right"), 0, n_states - 1).astype(jnp.int32)
        first = t == cu[seq]
        last = t == cu[seq + 1] - 1
        valid = t < cu[-1]

        def step(carry, x):
            S, finals = carry
            (qt, kt, vt, gt, bt), n, f, l, ok = x
            S = jnp.where(f, h0[n][None], S)
            S_new, o = update(S, qt, kt, vt, gt, bt)
            S = jnp.where(ok, S_new, S)
            o = jnp.where(ok, o, 0)
            finals = lax.dynamic_update_index_in_dim(
                finals, jnp.where(l & ok, S[0], finals[n]), n, 0)
            return (S, finals), o

        S0 = jnp.zeros((1, H, K, V), cd)
        (_, final), o = lax.scan(step, (S0, h0), (xs, seq, first, last, valid))

    o = jnp.moveaxis(o, 0, 1).astype(v.dtype)
    return o, (final if output_final_state else None)


def naive_chunk(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                chunk_size=16):
    """The chunkwise KDA algorithm written out plainly (no custom VJPs, no checkpointing, no blocking).

    Same contract as :func:`kda_reference` without ``cu_seqlens``: q, k ``[B, T, H, K]``; v
    ``[B, T, H, V]``; g ``[B, T, H, K]`` log-decay (``<= 0``); beta ``[B, T, H]``; initial_state
    ``[B, H, K, V]`` (default zeros); scale multiplies q (default ``K ** -0.5``). Returns ``(o, final)``:
    o ``[B, T, H, V]`` in v's dtype, final ``[B, H, K, V]`` in the compute dtype (or ``None``).

    T is zero-padded up to a multiple of ``chunk_size`` = C (exact: a padded token has ``g = 0``, no
    decay, and ``beta = 0``, no write). Then per (batch, head), for each chunk in order, with ``S
    [K, V]`` the state entering the chunk and ``Q`` already scaled (all ``[C, .]`` per chunk):

      1. decay cumsum, restarting at the chunk:   ``G = cumsum(g)``                          ``[C, K]``
      2. pairwise decays and the two Grams (``i >= j``; the exponent is masked to ``-inf`` before
         ``exp`` where ``i < j``, so nothing overflows):
         ``Aqk[i, j] = sum_d Q_id K_jd exp(G_id - G_jd)`` for ``i >= j``                    ``[C, C]``
         ``Akk[i, j] = beta_i sum_d K_id K_jd exp(G_id - G_jd)`` for ``i > j``, else 0        ``[C, C]``
      3. WY / UT representation, by one unit-lower triangular solve with ``(I + Akk)``:
         ``W = (I + Akk)^-1 Diag(beta) (K * exp(G))``                                         ``[C, K]``
         ``U = (I + Akk)^-1 Diag(beta) V``                                                    ``[C, V]``
      4. pseudo-values and the output (inter-chunk term + intra-chunk term):
         ``Vn = U - W S``,   ``O = (Q * exp(G)) S + Aqk Vn``                                  ``[C, V]``
      5. inter-chunk state update (``G_C`` = the last row of ``G``):
         ``S <- Diag(exp(G_C)) S + (K * exp(G_C - G))^T Vn``                                  ``[K, V]``

    This equals the token recurrence exactly in exact arithmetic (paper Eqs. 6-9). Computation is
    float32, or float64 for float64 inputs.
    """
    _common.validate(q, k, v, g, beta, initial_state, None)
    C = int(chunk_size)
    if C < 1:
        raise ValueError(f"naive_chunk: chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = _common.compute_dtype(q, k, v, g, beta)
    scale = _common.default_scale(scale, K)
    S = (jnp.zeros((B, H, K, V), cd) if initial_state is None
         else jnp.asarray(initial_state).astype(cd))
    NT = -(-T // C)

    def chunk_major(x):  # [B, T, H, ...] -> [NT, B, H, C, ...], zero-padded in T
        x = x.astype(cd)
        x = jnp.pad(x, [(0, 0), (0, NT * C - T)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape((B, NT, C) + x.shape[2:])
        return jnp.moveaxis(x, (1, 3), (0, 2))

    lower = jnp.tril(jnp.ones((C, C), bool))          # i >= j
    strict = jnp.tril(jnp.ones((C, C), bool), -1)     # i > j
    eye = jnp.eye(C, dtype=cd)

    def mm(spec, *xs):
        return jnp.einsum(spec, *xs, precision=_HI)

    def chunk_step(S, chunk):
        """One chunk: ``S [B, H, K, V]`` entering it -> (``S`` leaving it, ``O [B, H, C, V]``)."""
        Q, Kc, Vc, g_c, b = chunk
        Q = Q * scale
        # 1. decay cumsum inside the chunk.
        G = jnp.cumsum(g_c, axis=-2)                                                  # [B, H, C, K]
        # 2. pairwise decays exp(G_i - G_j) for i >= j (masked before exp), and the Grams.
        diff = G[..., :, None, :] - G[..., None, :, :]                                # [B, H, C, C, K]
        decay = jnp.exp(jnp.where(lower[..., None], diff, -jnp.inf))
        Aqk = mm("bhik,bhjk,bhijk->bhij", Q, Kc, decay)
        Akk = jnp.where(strict, mm("bhik,bhjk,bhijk->bhij", Kc, Kc, decay), 0) * b[..., :, None]
        # 3. WY / UT representation: solve (I + Akk) [W | U] = Diag(beta) [K exp(G) | V].
        rhs = jnp.concatenate([b[..., None] * Kc * jnp.exp(G), b[..., None] * Vc], axis=-1)
        WU = solve_triangular(eye + Akk, rhs, lower=True, unit_diagonal=True)
        W, U = WU[..., :K], WU[..., K:]
        # 4. pseudo-values and the output.
        Vn = U - mm("bhck,bhkv->bhcv", W, S)
        O = mm("bhck,bhkv->bhcv", Q * jnp.exp(G), S) + mm("bhij,bhjv->bhiv", Aqk, Vn)
        # 5. the state leaving the chunk.
        GC = G[..., -1:, :]                                                           # [B, H, 1, K]
        S = jnp.exp(GC[..., 0, :])[..., None] * S + mm("bhck,bhcv->bhkv", Kc * jnp.exp(GC - G), Vn)
        return S, O

    # The chunks in order (a scan only so that the step is traced once; nothing is batched across them).
    S, o = lax.scan(chunk_step, S, tuple(chunk_major(x) for x in (q, k, v, g, beta)))   # o [NT, B, H, C, V]
    o = jnp.moveaxis(o, 0, 2).reshape(B, H, NT * C, V)[:, :, :T]
    o = jnp.moveaxis(o, 1, 2).astype(v.dtype)
    return o, (S if output_final_state else None)


def kda_decode_step(q, k, v, g, beta, state, *, scale=None):
    """One recurrent step for single-token decoding (forward only; the decode path is I/O bound).

    Args:
      q, k, g: ``[B, H, K]``; v: ``[B, H, V]``; beta: ``[B, H]``; state: ``[B, H, K, V]`` float.
      scale: multiplies q; default ``K ** -0.5``.

    Returns:
      ``(o, new_state)``: o ``[B, H, V]`` in v's dtype, new_state ``[B, H, K, V]`` in the state's compute
      dtype (float32, or float64 when the inputs or the state are float64).
    """
    for name, x, nd in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("g", g, 3), ("beta", beta, 2),
                        ("state", state, 4)):
        if jnp.ndim(x) != nd:
            raise ValueError(f"kda_decode_step: {name} must have {nd} dims, got shape {jnp.shape(x)}")
    B, H, K = q.shape
    V = v.shape[-1]
    for name, x, shp in (("k", k, (B, H, K)), ("g", g, (B, H, K)), ("v", v, (B, H, V)),
                         ("beta", beta, (B, H)), ("state", state, (B, H, K, V))):
        if tuple(x.shape) != shp:
            raise ValueError(f"kda_decode_step: {name} has shape {tuple(x.shape)}, expected {shp}")
    cd = _common.compute_dtype(q, k, v, g, beta, state)
    scale = _common.default_scale(scale, K)
    out_dtype = v.dtype
    q, k, v, g, beta, S = (x.astype(cd) for x in (q, k, v, g, beta, state))
    S = S * jnp.exp(g)[..., None]
    pred = jnp.einsum("bhk,bhkv->bhv", k, S, precision=_HI)
    S = S + jnp.einsum("bhk,bhv->bhkv", beta[..., None] * k, v - pred, precision=_HI)
    o = jnp.einsum("bhk,bhkv->bhv", q * scale, S, precision=_HI)
    return o.astype(out_dtype), S


__all__ = ["kda_reference", "naive_chunk", "kda_decode_step"]
