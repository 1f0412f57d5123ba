"""The OpenAI-compatible server: scoring through HTTP equals in-process scoring, concurrent greedy
completions equal single ones (and are batched), every malformed request gets a 4xx JSON error naming
the field. The HTTP probes (bodies, slow clients, streaming, several models, the openai client) are in
tests/inference/test_server_http.py."""

import json
import pathlib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jaxstack.data.chat import apply_chat_template, load_chat_template, render_chat
from jaxstack.evals import evaluate_multiple_choice
from jaxstack.evals.global_piqa import load_global_piqa
from jaxstack.inference.client import CompletionsClient, ServerError
from jaxstack.inference.server import ModelServer, ServedModel, load_server

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
MODEL_DIR = FIXTURES / "evals" / "model"


@pytest.fixture(scope="module")
def server():
    server = load_server(MODEL_DIR, name="tiny", port=0, slots=4).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def served(server):
    return server.models["tiny"]


@pytest.fixture(scope="module")
def client(server, served):
    return CompletionsClient(server.url, served.tokenizer)


def _post(server, path, payload, raw=None):
    data = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(server.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_models_endpoint(client, served):
    info = client.models()[0]
    assert info["id"] == "tiny" and info["max_model_len"] == served.max_length == 256


def test_scoring_through_server_equals_in_process(served, client):
    items = [item for items in load_global_piqa(FIXTURES / "global_piqa").values() for item in items]
    local = evaluate_multiple_choice(served.model, served.tokenizer, items, progress=False)
    remote = evaluate_multiple_choice(client, None, items, progress=False)
    # The same float32 per-token values (one jitted scorer) summed in float64 on both sides; batches
    # differ in composition and padding, which moves a value by float32 rounding at most.
    np.testing.assert_allclose([r["loglikelihoods"] for r in remote["records"]],
                               [r["loglikelihoods"] for r in local["records"]], rtol=0, atol=1e-5)
    assert [r["is_greedy"] for r in remote["records"]] == [r["is_greedy"] for r in local["records"]]
    for metric in ("acc", "acc_norm", "acc_bytes", "acc_stderr", "acc_norm_stderr", "acc_bytes_stderr"):
        assert remote[metric] == local[metric], metric


def test_echo_scoring_pattern(client, served):
    """echo + max_tokens=0 + logprobs=1 returns the prompt's token log-probs (first one null)."""
    ids = served.tokenizer.encode("To keep bread fresh, wrap it in a cloth.")
    choice = client.completions(ids, max_tokens=0, echo=True, logprobs=1)["choices"][0]
    logprobs = choice["logprobs"]["token_logprobs"]
    assert len(logprobs) == len(ids) and logprobs[0] is None
    scored = served.scorer.score_sequences([ids])[0]
    np.testing.assert_allclose(logprobs[1:], scored.logprobs, rtol=0, atol=1e-6)
    assert choice["text"] == served.tokenizer.decode(ids)


PROMPTS = [f"Item {i}: to open a jar that is stuck," + " tap the lid" * (i % 5) for i in range(32)]


def test_concurrent_greedy_equals_single(client, served):
    """32 concurrent requests (16 distinct prompt / max_tokens pairs, each sent twice) each equal the
    answer to the same request sent alone, and share decode steps (continuous batching)."""
    distinct = [(PROMPTS[i], {"max_tokens": 3 + i % 6, "temperature": 0}) for i in range(16)]
    single = [client.completions(p, **s)["choices"][0]["text"] for p, s in distinct]
    served.engine.peak_active = 0
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(client.completions, p, **s) for p, s in distinct * 2]
        concurrent = [f.result()["choices"][0]["text"] for f in futures]
    assert len(concurrent) == 32 and concurrent == single * 2
    assert served.engine.peak_active > 1, "concurrent requests were not batched"
    assert served.engine.compiles_after_warmup == 0


def test_prompt_list_and_stop_string(client):
    plain = client.completions(PROMPTS[:2], max_tokens=6, temperature=0)["choices"]
    assert [c["index"] for c in plain] == [0, 1]
    text = plain[0]["text"]
    stop = text[2:4]
    cut = client.completions(PROMPTS[0], max_tokens=6, temperature=0, stop=[stop])["choices"][0]
    assert cut["text"] == text[: text.find(stop)] and cut["finish_reason"] == "stop"


def test_sampling_with_temperature_and_top_p(client):
    out = client.completions(PROMPTS[0], max_tokens=4, temperature=0.8, top_p=0.9, seed=1)["choices"][0]
    again = client.completions(PROMPTS[0], max_tokens=4, temperature=0.8, top_p=0.9, seed=1)["choices"][0]
    assert out["text"] == again["text"]  # a fixed seed repeats


def test_chat_template(client):
    template = load_chat_template(MODEL_DIR)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = render_chat(messages, add_generation_prompt=True)
    assert apply_chat_template(messages, template) == prompt  # the fixture carries ChatML
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    answer = client.chat(messages, max_tokens=4, temperature=0)
    greedy = client.completions(prompt, max_tokens=4, temperature=0)["choices"][0]["text"]
    content = answer["choices"][0]["message"]["content"]
    assert answer["object"] == "chat.completion" and greedy.startswith(content)


BAD_REQUESTS = {
    "malformed-json": ("/v1/completions", None, b"{not json", 400, "body: the request body is not valid JSON"),
    "not-an-object": ("/v1/completions", [1, 2], None, 400, "JSON object"),
    "missing-prompt": ("/v1/completions", {"max_tokens": 2}, None, 400, "prompt: missing"),
    "prompt-wrong-type": ("/v1/completions", {"prompt": 5}, None, 400, "prompt: expected"),
    "prompt-mixed-list": ("/v1/completions", {"prompt": ["a", 3]}, None, 400, "prompt: expected"),
    "negative-max-tokens": ("/v1/completions", {"prompt": "a", "max_tokens": -1}, None, 400, "max_tokens"),
    "string-max-tokens": ("/v1/completions", {"prompt": "a", "max_tokens": "5"}, None, 400, "max_tokens: expected an integer"),
    "negative-temperature": ("/v1/completions", {"prompt": "a", "temperature": -0.5}, None, 400, "temperature"),
    "top-p-zero": ("/v1/completions", {"prompt": "a", "top_p": 0}, None, 400, "top_p"),
    "top-p-above-one": ("/v1/completions", {"prompt": "a", "top_p": 1.5}, None, 400, "top_p"),
    "bad-stop": ("/v1/completions", {"prompt": "a", "stop": 5}, None, 400, "stop"),
    "bad-logprobs": ("/v1/completions", {"prompt": "a", "logprobs": 9}, None, 400, "logprobs"),
    "bad-echo": ("/v1/completions", {"prompt": "a", "echo": "yes"}, None, 400, "echo"),
    "n-zero": ("/v1/completions", {"prompt": "a", "n": 0}, None, 400, "n: expected a value >= 1"),
    "n-too-many": ("/v1/completions", {"prompt": "a", "n": 1000}, None, 400, "n: expected a value <= 16"),
    "stream-not-bool": ("/v1/completions", {"prompt": "a", "stream": "yes"}, None, 400, "stream: expected a boolean"),
    "stream-with-echo": ("/v1/completions", {"prompt": "a", "stream": True, "echo": True}, None, 400, "stream:"),
    "temperature-nan": ("/v1/completions", None, b'{"prompt": "a", "temperature": NaN}', 400,
                        "temperature: expected a finite number"),
    "temperature-infinity": ("/v1/completions", None, b'{"prompt": "a", "temperature": Infinity}', 400,
                             "temperature: expected a finite number"),
    "temperature-string": ("/v1/completions", {"prompt": "a", "temperature": "hot"}, None, 400,
                           "temperature: expected a number"),
    "top-k-float": ("/v1/completions", {"prompt": "a", "top_k": 2.5}, None, 400, "top_k: expected an integer"),
    "seed-too-big": ("/v1/completions", {"prompt": "a", "seed": 2 ** 64}, None, 400, "seed: expected a value < "),
    "seed-bool": ("/v1/completions", {"prompt": "a", "seed": True}, None, 400, "seed: expected an integer"),
    "max-tokens-bool": ("/v1/completions", {"prompt": "a", "max_tokens": True}, None, 400, "max_tokens: expected"),
    "lone-surrogate": ("/v1/completions", None, b'{"prompt": "ab\\ud800cd"}', 400, "prompt: the string contains a lone surrogate"),
    "lone-surrogate-chat": ("/v1/chat/completions", None,
                            b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400,
                            "messages[0].content: the string contains a lone surrogate"),
    "deep-nesting": ("/v1/completions", None, b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "nesting"),
    "moderate-nesting": ("/v1/completions", None, b'{"prompt": ' + b"[" * 70 + b"]" * 70 + b"}", 400,
                         "nesting deeper than 64"),
    "body-not-utf8": ("/v1/completions", None, b'{"prompt": "\xff"}', 400, "not valid JSON"),
    "prompt-too-many-chars": ("/v1/completions", {"prompt": "x" * 2_000_000}, None, 400, "characters cannot fit"),
    "chat-messages-number": ("/v1/chat/completions", {"messages": 5}, None, 400, "messages: expected"),
    "chat-top-logprobs": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                   "logprobs": True, "top_logprobs": 9}, None, 400,
                          "top_logprobs: expected a value <= 5"),
    "prompt-too-long": ("/v1/completions", {"prompt": [5] * 250, "max_tokens": 10}, None, 400, "context of 256"),
    "token-out-of-vocab": ("/v1/completions", {"prompt": [10 ** 6]}, None, 400, "token ids must be in"),
    "chat-missing-messages": ("/v1/chat/completions", {"max_tokens": 2}, None, 400, "messages: missing"),
    "chat-bad-role": ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, None, 400,
                      "messages[0].role"),
    "chat-content-not-string": ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, None, 400,
                                "messages[0].content"),
    "unknown-model": ("/v1/completions", {"prompt": "a", "model": "gpt-9"}, None, 404, "not served here"),
    "unknown-path": ("/v1/embeddings", {"input": "a"}, None, 404, "unknown path"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_requests_get_json_errors(server, case):
    path, payload, raw, status, fragment = BAD_REQUESTS[case]
    code, body = _post(server, path, payload, raw)
    assert code == status
    assert fragment in body["error"]["message"]


def test_client_raises_server_errors(client):
    with pytest.raises(ServerError, match="top_p"):
        client.completions("a", top_p=2)


# ~15 s (a 1024-token context); scoring through the server stays fast in
# test_scoring_through_server_equals_in_process and test_echo_scoring_pattern.
@pytest.mark.slow
def test_prompted_global_piqa_through_server_and_in_process(served):
    """The generation format end to end (a random model answers nonsense: the pipeline, not accuracy).
    The instruction prompt is ~290 tokens for this tokenizer, so the model gets a 1024-token context."""
    from jaxstack.evals.global_piqa import evaluate_global_piqa
    from jaxstack.models.checkpoint import load_pretrained

    model = load_pretrained(MODEL_DIR, max_position_embeddings=1024)
    long_server = ModelServer([ServedModel("tiny-1k", model, served.tokenizer, slots=2)], port=0).start()
    try:
        client = CompletionsClient(long_server.url, served.tokenizer)
        data = load_global_piqa(FIXTURES / "global_piqa", varieties=["eng_latn", "rus_cyrl"])
        settings = {"max_new_tokens": 3, "temperature": 0.0}
        remote = evaluate_global_piqa(client, None, data, format="prompted", generation=settings, progress=False)
        local = evaluate_global_piqa(model, served.tokenizer, data, format="prompted", generation=settings,
                                     progress=False)
    finally:
        long_server.shutdown()
    assert [r["response"] for r in remote["records"]] == [r["response"] for r in local["records"]]
    assert set(remote["varieties"]) == {"eng_latn", "rus_cyrl"} and 0.0 <= remote["macro"]["exact_match"] <= 1.0


def test_serve_command_parses():
    from jaxstack.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", str(MODEL_DIR), "--port", "0"])
    assert (args.command, args.port, args.host, args.model) == ("serve", 0, "127.0.0.1", [(None, str(MODEL_DIR))])
    args = build_parser().parse_args(["serve", "--model", f"a={MODEL_DIR}", "--model", f"b={MODEL_DIR}",
                                      "--api-key", "k"])
    assert args.model == [("a", str(MODEL_DIR)), ("b", str(MODEL_DIR))] and args.api_key == "k"


@pytest.mark.oracle
@pytest.mark.slow
def test_lm_eval_local_completions_client_against_our_server(server, served):
    """lm-eval's own API client (local-completions, token-id prompts, echo + logprobs) scoring through
    ``jaxstack serve`` reproduces lm-eval's HF-backend numbers from the golden fixture (1e-4, as in
    tests/evals/test_oracle.py)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model="tiny", tokenizer_backend="huggingface",
                             tokenizer=str(MODEL_DIR), max_length=served.max_length, tokenized_requests=True,
                             batch_size=8)
    golden = json.loads((FIXTURES / "evals" / "lm_eval_results.json").read_text(encoding="utf-8"))
    requests, expected = [], []
    for variety in golden["full"]["varieties"].values():
        for item_requests, item_lls in zip(variety["requests"], variety["loglikelihoods"]):
            requests += [tuple(r) for r in item_requests]
            expected += item_lls
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    got = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_generate_pad_length_does_not_change_greedy_tokens(served):
    from jaxstack.inference.sampler import SamplingConfig, generate

    prompts = [served.tokenizer.encode(p) for p in PROMPTS[:3]]
    config = SamplingConfig(max_new_tokens=5, temperature=0.0)
    plain = generate(served.model, prompts, config)
    padded = generate(served.model, prompts, config, pad_length=64)
    assert np.asarray(plain.tokens).tolist() == np.asarray(padded.tokens).tolist()
    with pytest.raises(ValueError, match="pad_length"):
        generate(served.model, prompts, config, pad_length=2)
