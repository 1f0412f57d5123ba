"""JaxstackModelClient: a tiny random jaxstack model behind the sampler, checked against direct
``generate`` calls (render -> ids -> generate -> decode), stop tokens, stop strings, token counts."""

import numpy as np
import pytest
from flax import nnx

from jaxstack.agents.llm import Completion, JaxstackModelClient, LLMClient
from jaxstack.data.chat import render_chat
from jaxstack.data.tokenizer import train_bpe
from jaxstack.inference import SamplingConfig, generate
from jaxstack.models.configs import get_config
from jaxstack.models.llama import LlamaForCausalLM

MSGS = [{"role": "system", "content": "You are a search agent."}, {"role": "user", "content": "Who wrote the page?"}]
N = 12


def _prompt(messages):
    """What JaxstackModelClient feeds the sampler: ChatML with the assistant generation prompt."""
    return render_chat(messages, add_generation_prompt=True)


@pytest.fixture(scope="module")
def tok():
    texts = [_prompt(MSGS) + "The page was written by the search agent.<|im_end|>\n"] * 4
    texts += ["who wrote what page, the agent searched and visited the page"] * 4
    return train_bpe(texts, 300)


@pytest.fixture(scope="module")
def model(tok):
    return LlamaForCausalLM(get_config("llama-test", vocab_size=tok.vocab_size), rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def reference(tok, model):
    """What the sampler itself returns for MSGS, greedy, with no stop tokens."""
    ids = tok.encode(_prompt(MSGS))
    out = generate(model, [ids], SamplingConfig(max_new_tokens=N, temperature=0.0))
    return ids, np.asarray(out.tokens[0]).tolist()


def test_greedy_completion_matches_the_sampler(tok, model, reference):
    ids, tokens = reference
    client = JaxstackModelClient(model, tok, max_new_tokens=N, stop_token_ids=())
    assert isinstance(client, LLMClient)
    # the model may emit <|im_end|> / <|endoftext|> by chance: compare up to the first one
    stops = set(client.stop_token_ids)
    cut = next((i for i, t in enumerate(tokens) if t in stops), None)
    expected = tokens if cut is None else tokens[:cut]
    out = client.complete(MSGS)
    assert isinstance(out, Completion)
    assert out.text == tok.decode(expected)
    assert out.prompt_tokens == len(ids)
    assert out.completion_tokens == (N if cut is None else cut + 1)
    assert out.finish_reason == ("length" if cut is None else "stop")
    again = client.complete(MSGS)
    assert (again.text, again.completion_tokens) == (out.text, out.completion_tokens)  # greedy is deterministic


def test_stop_token_ends_generation_and_is_not_in_the_text(tok, model, reference):
    _, tokens = reference
    third = tokens[2]
    client = JaxstackModelClient(model, tok, max_new_tokens=N, stop_token_ids=(third,))
    first = tokens.index(third)
    out = client.complete(MSGS)
    assert out.finish_reason == "stop"
    assert out.completion_tokens == first + 1
    assert out.text == tok.decode(tokens[:first])


def test_stop_string_truncates_after_it_and_counts_covering_tokens(tok, model, reference):
    _, tokens = reference
    client = JaxstackModelClient(model, tok, max_new_tokens=N)
    full = client.complete(MSGS)
    assert len(full.text) >= 4, full.text
    stop = full.text[1:3]  # cut after the first occurrence of a 2-character substring
    out = client.complete(MSGS, stop=[stop, "never-generated-string"])
    end = full.text.index(stop) + len(stop)
    assert out.text == full.text[:end]
    assert out.finish_reason == "stop"
    covering = out.completion_tokens
    assert 1 <= covering <= full.completion_tokens
    assert len(tok.decode(tokens[:covering])) >= end > len(tok.decode(tokens[:covering - 1]))
    # a stop string that never occurs changes nothing
    same = client.complete(MSGS, stop=["never-generated-string"])
    assert (same.text, same.finish_reason) == (full.text, full.finish_reason)


def test_batch_equals_single_calls_and_prompt_truncation(tok, model):
    client = JaxstackModelClient(model, tok, max_new_tokens=N)
    other = [{"role": "user", "content": "visit the page"}]
    batch = client.complete_batch([MSGS, other])
    assert batch[0].text == client.complete(MSGS).text  # right-padding a shorter row changes nothing
    assert [c.prompt_tokens for c in batch] == [len(tok.encode(_prompt(m))) for m in (MSGS, other)]
    short = JaxstackModelClient(model, tok, max_new_tokens=N, max_prompt_tokens=5)
    assert short.encode_prompt(MSGS) == tok.encode(_prompt(MSGS))[-5:]


def test_sampling_with_temperature_uses_fresh_seeds(tok, model):
    client = JaxstackModelClient(model, tok, max_new_tokens=N, temperature=1.0, seed=0)
    texts = {client.complete(MSGS).text for _ in range(3)}
    assert len(texts) > 1  # a random model at T=1 over ~300 tokens: identical draws are ~impossible


def test_errors_name_the_problem(tok, model, tmp_path):
    with pytest.raises(ValueError, match="needs a model"):
        JaxstackModelClient(model, None)
    with pytest.raises(ValueError, match="vocab_size is 64"):
        JaxstackModelClient(LlamaForCausalLM(get_config("llama-test", vocab_size=64), rngs=nnx.Rngs(0)), tok)
    with pytest.raises(ValueError, match=r"stop token ids \[9999\]"):
        JaxstackModelClient(model, tok, stop_token_ids=(9999,))
    with pytest.raises(TypeError, match="tokenizer must be"):
        JaxstackModelClient(model, 42)
    client = JaxstackModelClient(model, tok, max_new_tokens=N)
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        client.complete([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens"):
        client.complete(MSGS, max_tokens=0)


def test_loads_model_and_tokenizer_from_paths(tok, model, tmp_path):
    from jaxstack.models.checkpoint import save_pretrained

    save_pretrained(model, tmp_path)
    tok.save(tmp_path / "tokenizer.json")
    from_paths = JaxstackModelClient(tmp_path, tmp_path, max_new_tokens=N)
    direct = JaxstackModelClient(model, tok, max_new_tokens=N)
    assert from_paths.complete(MSGS).text == direct.complete(MSGS).text
