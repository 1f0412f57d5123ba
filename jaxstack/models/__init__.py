"""Model families, configs and Hugging Face checkpoint I/O.

Importing this package registers each family's checkpoint mapping (:mod:`jaxstack.models.hf`,
:mod:`jaxstack.models.kimi_hf`) with :mod:`jaxstack.models.checkpoint`, so ``load_pretrained`` and
``save_pretrained`` know every family whichever module a caller imports first.
"""

from jaxstack.models import hf, kimi_hf  # noqa: F401  (registers the checkpoint families)
from jaxstack.models.checkpoint import (
    CheckpointError,
    config_from_hf,
    family_for_config,
    load_pretrained,
    save_pretrained,
)
from jaxstack.models.configs import (
    KIMI_PRESETS,
    PRESETS,
    KimiLinearConfig,
    LlamaConfig,
    get_config,
    get_kimi_config,
)
from jaxstack.models.kimi_linear import KimiCache, KimiLinearForCausalLM
from jaxstack.models.llama import (
    KVCache,
    LlamaForCausalLM,
    ModelOutput,
    init_cache,
    stack_layer_params,
)


def build_model(config, *, policy=None, rngs):
    """A randomly initialised model of the family ``config`` belongs to (LlamaConfig, KimiLinearConfig)."""
    return family_for_config(config).model_class(config, policy=policy, rngs=rngs)


__all__ = [
    "KIMI_PRESETS",
    "PRESETS",
    "CheckpointError",
    "KVCache",
    "KimiCache",
    "KimiLinearConfig",
    "KimiLinearForCausalLM",
    "LlamaConfig",
    "LlamaForCausalLM",
    "ModelOutput",
    "build_model",
    "config_from_hf",
    "get_config",
    "get_kimi_config",
    "init_cache",
    "load_pretrained",
    "save_pretrained",
    "stack_layer_params",
]
