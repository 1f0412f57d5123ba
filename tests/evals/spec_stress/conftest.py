"""The evaluation tests score with the scorer tests' fixtures (tests/inference/conftest.py): the golden
fixture's tiny Llama, its byte-level BPE tokenizer and a random model over that vocabulary."""

from tests.inference.conftest import fixture_model, random_model, tokenizer  # noqa: F401
