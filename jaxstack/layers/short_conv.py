"""Short depthwise causal convolution (kernel 4 in Kimi Linear), with a decode cache.

Kimi Delta Attention runs ``SiLU(ShortConv(W x))`` on q, k and v. The conv is depthwise (one filter per
channel), causal, without bias. Tap ``j`` of the filter (``j = 0 .. W-1``) multiplies the input ``W-1-j``
steps in the past, which is torch's ``Conv1d(padding=W-1)[..., :T]`` convention, so a Hugging Face
weight ``[C, 1, W]`` loads as ``weight[:, 0, :].T`` -> ``[W, C]`` without flipping.

Decode state: the last ``W - 1`` *inputs* (before the conv) per channel, ``[B, W-1, C]``. Running the
conv on ``concat(state, x)`` and keeping that concatenation's last ``W - 1`` rows gives exactly the
full-sequence result, whether ``x`` is one token or many (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.precision import DtypePolicy, get_policy

_ACTIVATIONS = {"silu": jax.nn.silu, None: lambda x: x}


def causal_conv1d(
    x: jax.Array,
    weight: jax.Array,
    *,
    conv_state: jax.Array | None = None,
    activation: str | None = "silu",
) -> tuple[jax.Array, jax.Array]:
    """Depthwise causal conv over time.

    Args:
      x: ``[B, T, C]`` inputs.
      weight: ``[W, C]`` filter taps (tap ``W-1`` multiplies the current token).
      conv_state: ``[B, W-1, C]`` the previous ``W-1`` inputs (zeros = start of sequence), or None.
      activation: ``"silu"`` or None, applied after the conv.

    Returns:
      ``(y [B, T, C] in x's dtype, new_state [B, W-1, C] in conv_state's dtype, else x's dtype)``.
    """
    if x.ndim != 3:
        raise ValueError(f"causal_conv1d: x must be [B, T, C], got shape {tuple(x.shape)}")
    width, channels = weight.shape
    if x.shape[-1] != channels:
        raise ValueError(f"causal_conv1d: x has {x.shape[-1]} channels, weight [W, C] has C={channels}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be 'silu' or None, got {activation!r}")
    batch, length = x.shape[:2]
    state_dtype = x.dtype if conv_state is None else conv_state.dtype
    if conv_state is None:
        conv_state = jnp.zeros((batch, width - 1, channels), x.dtype)
    elif conv_state.shape != (batch, width - 1, channels):
        raise ValueError(
            f"causal_conv1d: conv_state must be [B, W-1, C] = {[batch, width - 1, channels]}, "
            f"got {list(conv_state.shape)}"
        )
    padded = jnp.concatenate([conv_state.astype(x.dtype), x], axis=1)  # [B, W-1+T, C]
    w = weight.astype(x.dtype)
    # W shifted slices (W = 4): cheaper and clearer than a general conv for such a short filter.
    y = sum(padded[:, j : j + length, :] * w[j] for j in range(width))
    y = _ACTIVATIONS[activation](y)
    new_state = padded[:, length:, :].astype(state_dtype)
    return y.astype(x.dtype), new_state


class ShortConvolution(nnx.Module):
    """Depthwise causal conv layer, weight ``[W, C]`` (logical axes ``(None, "mlp")``), no bias.

    Initialised ``normal(0, init_std)``, as transformers' ``KimiLinearPreTrainedModel._init_weights``
    and fla's ``KDAPreTrainedModel._init_weights`` re-initialise every ``nn.Conv1d`` (with the model's
    ``initializer_range``), not torch's ``Conv1d`` default (uniform, bound ``1/sqrt(W)``: 25x larger
    at W = 4 and std 0.02). ``tests/models/test_init_stats.py`` compares the two.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 4,
        *,
        activation: str | None = "silu",
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        if kernel_size < 1:
            raise ValueError(f"ShortConvolution: kernel_size must be >= 1, got {kernel_size}")
        self.policy = get_policy(policy)
        self.kernel_size, self.channels, self.activation = kernel_size, channels, activation
        value = init_std * jax.random.normal(rngs.params(), (kernel_size, channels), jnp.float32)
        self.weight = nnx.Param(value.astype(self.policy.param_dtype), out_sharding=(None, "mlp"), eager_sharding=False)

    def __call__(self, x: jax.Array, conv_state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """x: [B, T, C]; conv_state: [B, W-1, C] or None. Returns (y [B, T, C], new_state [B, W-1, C])."""
        x = x.astype(self.policy.compute_dtype)
        return causal_conv1d(x, self.weight[...], conv_state=conv_state, activation=self.activation)
