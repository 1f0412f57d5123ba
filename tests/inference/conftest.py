"""Shared fixtures for the scorer tests (tests/evals imports them too): the golden fixture's tiny
jaxstack model, its byte-level BPE tokenizer and a random model over that vocabulary."""

import pathlib

import pytest
from flax import nnx

EVAL_MODEL = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "evals" / "model"


@pytest.fixture(scope="session")
def tokenizer():
    from jaxstack.data.tokenizer import load_tokenizer

    return load_tokenizer(EVAL_MODEL)


@pytest.fixture(scope="session")
def fixture_model():
    """The golden fixture's tiny Llama (saved by transformers), loaded with load_pretrained."""
    from jaxstack.models.checkpoint import load_pretrained

    return load_pretrained(EVAL_MODEL)


@pytest.fixture(scope="session")
def random_model(tokenizer):
    """A random llama-test model over the fixture tokenizer's vocabulary, 64-token context."""
    from jaxstack.models import LlamaForCausalLM, get_config

    config = get_config("llama-test", vocab_size=tokenizer.vocab_size, max_position_embeddings=64,
                        initializer_range=0.1)
    return LlamaForCausalLM(config, rngs=nnx.Rngs(0))
