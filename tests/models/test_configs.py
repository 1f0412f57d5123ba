"""Model configs (``jaxstack.models.configs``): KimiLinearConfig.num_params is arithmetic on the config (configs
cannot import the model), so it is checked against the parameter shapes the model really creates."""

import pytest
from flax import nnx

from jaxstack.models.configs import KIMI_PRESETS, get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM

VARIANTS = {
    **{name: config for name, config in KIMI_PRESETS.items()},
    "tiny-q-lora-tied-no-shared": get_kimi_config("kimi-linear-tiny", q_lora_rank=24, tie_word_embeddings=True,
                                                  num_shared_experts=0),
    "tiny-moe-every-2nd-2-shared": get_kimi_config("kimi-linear-tiny", first_k_dense_replace=0, moe_layer_freq=2,
                                                   num_shared_experts=2, short_conv_kernel_size=3),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kimi_num_params_matches_the_model(name):
    config = VARIANTS[name]
    model = nnx.eval_shape(lambda: KimiLinearForCausalLM(config, rngs=nnx.Rngs(0)))
    total = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert config.num_params()["total"] == total
