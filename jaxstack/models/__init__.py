"""Model families, configs and Hugging Face interop."""

from jaxstack.models.configs import PRESETS, LlamaConfig, get_config
from jaxstack.models.hf import CheckpointError, load_pretrained, save_pretrained
from jaxstack.models.llama import KVCache, LlamaForCausalLM, ModelOutput, init_cache, stack_layer_params

__all__ = [
    "PRESETS",
    "CheckpointError",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "ModelOutput",
    "get_config",
    "init_cache",
    "load_pretrained",
    "save_pretrained",
    "stack_layer_params",
]

from jaxstack.models.kimi_linear import (  # noqa: E402
    KIMI_PRESETS,
    KimiCache,
    KimiLinearConfig,
    KimiLinearForCausalLM,
    get_kimi_config,
)

__all__ += ["KIMI_PRESETS", "KimiCache", "KimiLinearConfig", "KimiLinearForCausalLM", "get_kimi_config"]


def build_model(config, *, policy=None, rngs):
    """A randomly initialised model of the family ``config`` belongs to (LlamaConfig, KimiLinearConfig)."""
    if isinstance(config, KimiLinearConfig):
        return KimiLinearForCausalLM(config, policy=policy, rngs=rngs)
    if isinstance(config, LlamaConfig):
        return LlamaForCausalLM(config, policy=policy, rngs=rngs)
    raise TypeError(f"model config: expected a LlamaConfig or KimiLinearConfig, got {type(config).__name__}")


__all__ += ["build_model"]
