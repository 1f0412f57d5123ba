"""The server as a user's load probes it (issue "Serving for real"): the official ``openai`` client on
two models (completions, logprobs, chat, streaming chat, n, seed), a poisoned batch, a 50 MB body,
slow and stalled clients, chunked bodies, bad Content-Length, the API key, the connection cap, the
queue's 429 and a streaming client that disconnects. All on 127.0.0.1, with bounded counts and times."""

import json
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference.engine import QueueFull
from jaxstack.inference.sampler import SamplingConfig, generate
from jaxstack.inference.server import ModelServer, ServedModel
from jaxstack.models import LlamaForCausalLM, get_config


@pytest.fixture(scope="module")
def served(tokenizer, random_model):
    """Two random models over the fixture tokenizer (64-token context: a quick warm-up)."""
    other = LlamaForCausalLM(random_model.config, rngs=nnx.Rngs(5))
    return [ServedModel("a", random_model, tokenizer, slots=4), ServedModel("b", other, tokenizer, slots=4)]


@pytest.fixture(scope="module")
def server(served):
    server = ModelServer(served, port=0, header_timeout_s=1.0, body_timeout_s=1.0).start()
    yield server
    server.shutdown()


def _start(served, **kwargs):
    """Another server over the same (warm) models."""
    return ModelServer(served, port=0, **kwargs).start()


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _raw(server, data: bytes, *, timeout=5.0) -> bytes:
    """Sends raw bytes and returns everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _body_complete(out):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def _body_complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _greedy(model, tokenizer, prompt, n):
    out = generate(model, [tokenizer.encode(prompt)], SamplingConfig(max_new_tokens=n, temperature=0.0))
    tokens = np.asarray(out.tokens[0]).tolist()[: int(out.lengths[0])]
    if tokenizer.eos_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_id)]
    return tokenizer.decode(tokens)


def test_openai_client_two_models_completions_logprobs_chat_and_streaming(server, served, tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["a", "b"]
    texts = {}
    for name, model in (("a", served[0].model), ("b", served[1].model)):
        answer = client.completions.create(model=name, prompt="To open a jar,", max_tokens=6, temperature=0,
                                           logprobs=2)
        choice = answer.choices[0]
        assert choice.text == _greedy(model, tokenizer, "To open a jar,", 6)
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == answer.usage.completion_tokens
        assert all(len(top) <= 2 and max(top.values()) >= lp
                   for top, lp in zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs))
        texts[name] = choice.text
    assert texts["a"] != texts["b"], "the two models answered alike: routing by 'model' is suspect"
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = whole.choices[0].message.content
    assert whole.choices[0].logprobs.content and len(whole.choices[0].logprobs.content[0].top_logprobs) == 3
    stream = client.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(model="a", prompt="To open a jar,", max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == texts["a"]
    # streamed log-probs: each chunk carries its own tokens; together they are the whole answer's
    whole_completion = client.completions.create(model="a", prompt="To open a jar,", max_tokens=6, temperature=0,
                                                 logprobs=2).choices[0].logprobs
    chunks = list(client.completions.create(model="a", prompt="To open a jar,", max_tokens=6, temperature=0,
                                            logprobs=2, stream=True))
    joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in chunks:
        for key in joined:
            joined[key] += getattr(chunk.choices[0].logprobs, key)
    assert joined == {key: getattr(whole_completion, key) for key in joined}
    assert sum(1 for c in chunks if c.choices[0].logprobs.tokens) > 1  # streamed as they come, not all at the end
    chat_chunks = list(client.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0,
                                                      logprobs=True, top_logprobs=3, stream=True))
    streamed_content = [entry for c in chat_chunks if c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in streamed_content] == [
        (e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in whole.choices[0].logprobs.content]


def test_n_choices_and_seeds(server):
    body = {"model": "a", "prompt": ["Hi", "Bread"], "max_tokens": 5, "temperature": 1.0, "n": 3, "seed": 7}
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    again = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert [c["index"] for c in first["choices"]] == list(range(6))
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    assert len({c["text"] for c in first["choices"][:3]}) > 1, "n choices of one prompt share one seed"


def test_a_poisoned_batch_leaves_every_valid_request_correct(server, served, tokenizer):
    """Eight valid greedy requests sent together with eight bad ones (seed 2**64, NaN temperature, ...):
    every valid one gets its single-request answer, every bad one a 400 naming its field."""
    prompts = [f"Item {i}: to keep bread fresh," for i in range(8)]
    single = [_greedy(served[0].model, tokenizer, p, 5) for p in prompts]
    bad = [b'{"model": "a", "prompt": "x", "seed": 18446744073709551616}',
           b'{"model": "a", "prompt": "x", "temperature": NaN}', b'{"model": "a", "prompt": "x", "top_p": 2}',
           b'{"model": "a", "prompt": [99999999]}'] * 2
    fields = ["seed", "temperature", "top_p", "prompt"] * 2

    def post(payload):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return httpx.post(server.url + "/v1/completions", content=data, timeout=60,
                          headers={"Content-Type": "application/json"})

    good = [{"model": "a", "prompt": p, "max_tokens": 5, "temperature": 0} for p in prompts]
    mixed = [x for pair in zip(good, bad) for x in pair]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, mixed))
    assert [a.json()["choices"][0]["text"] for a in answers[0::2]] == single
    for answer, field in zip(answers[1::2], fields):
        assert answer.status_code == 400 and answer.json()["error"]["message"].startswith(f"{field}")


def test_fifty_megabyte_body_gets_413_fast_without_reading_it(server):
    body = b"x" * (50 * 2**20)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    before = _rss_mb()
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        def send():
            try:
                sock.sendall(head + body)
            except OSError:  # the server answered and closed without reading the body: expected
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = sock.recv(65536)
        while answer and not _body_complete(answer):
            answer += sock.recv(65536)
        elapsed = time.perf_counter() - began
    sender.join(10)
    assert _status(answer) == 413 and b"exceed the limit" in answer
    assert elapsed < 1.0, f"413 after {elapsed:.2f} s"
    assert _rss_mb() - before < 100


def test_chunked_body_is_read_correctly(server):
    payload = json.dumps({"model": "a", "prompt": "To open a jar,", "max_tokens": 4, "temperature": 0}).encode()

    def pieces():
        for start in range(0, len(payload), 7):
            yield payload[start:start + 7]

    chunked = httpx.post(server.url + "/v1/completions", content=pieces(), timeout=60,
                         headers={"Content-Type": "application/json"})
    plain = httpx.post(server.url + "/v1/completions", content=payload, timeout=60,
                       headers={"Content-Type": "application/json"})
    assert chunked.status_code == 200 and chunked.json()["choices"] == plain.json()["choices"]
    # a chunked body over the cap (16 MiB by default) is refused while it is read
    def over_cap():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 2**20

    refused = httpx.post(server.url + "/v1/completions", content=over_cap(), timeout=30)
    assert refused.status_code == 413 and refused.json()["error"]["message"].startswith("body: more than the limit")


@pytest.mark.parametrize("header, status", [("Content-Length: abc", 400), ("Content-Length: 99999999999999999", 413),
                                            ("Content-Length: -5", 400)])
def test_bad_content_length_gets_4xx(server, header, status):
    answer = _raw(server, f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n{{}}".encode())
    assert _status(answer) == status


def test_slow_clients_are_timed_out_while_a_valid_request_is_served(server):
    """200 connections that never finish their headers, and 20 that never finish their body: a valid
    request is answered within 2 s meanwhile; the stalled ones are closed (header_timeout_s = 1) or get
    408 (body_timeout_s = 1)."""
    slow = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # no blank line: headers never end
        slow.append(sock)
    stalled = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
        stalled.append(sock)
    try:
        began = time.perf_counter()
        answer = httpx.post(server.url + "/v1/completions", timeout=10,
                            json={"model": "a", "prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert answer.status_code == 200 and time.perf_counter() - began < 2.0
        closed = 0
        for sock in slow:
            sock.settimeout(5)
            try:
                closed += sock.recv(1024) == b""
            except (ConnectionResetError, socket.timeout):
                closed += 1
        assert closed == 200
        statuses = []
        for sock in stalled:
            sock.settimeout(5)
            statuses.append(_status(sock.recv(65536) or b"closed 0"))
        assert statuses == [408] * 20
    finally:
        for sock in slow + stalled:
            sock.close()


def test_api_key_and_the_warning_beyond_loopback(served, caplog):
    keyed = _start(served, api_key="sekrit")
    try:
        url = keyed.url + "/v1/completions"
        body = {"model": "a", "prompt": "Hi", "max_tokens": 1}
        missing = httpx.post(url, json=body, timeout=30)
        assert missing.status_code == 401 and missing.json()["error"]["message"].startswith("authorization:")
        assert httpx.post(url, json=body, timeout=30, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(url, json=body, timeout=30, headers={"Authorization": "Bearer sekrit"}).status_code == 200
        assert httpx.get(keyed.url + "/health", timeout=30).status_code == 200
    finally:
        keyed.shutdown(engines=False)
    with caplog.at_level("WARNING", logger="jaxstack.inference.server"):
        ModelServer(served, host="0.0.0.0", port=0)
    assert "without --api-key" in caplog.text


def test_connection_cap_answers_503(served):
    capped = _start(served, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)
        answer = httpx.get(capped.url + "/v1/models", timeout=10)
        assert answer.status_code == 503
    finally:
        for sock in idle:
            sock.close()
        capped.shutdown(engines=False)


def test_a_full_queue_answers_429(server, served, monkeypatch):
    def full(*args, **kwargs):
        raise QueueFull("a: 256 requests are waiting already; retry later")

    monkeypatch.setattr(served[1].engine, "submit", full)
    answer = httpx.post(server.url + "/v1/completions", json={"model": "b", "prompt": "Hi"}, timeout=30)
    assert answer.status_code == 429 and "retry later" in answer.json()["error"]["message"]


def test_a_disconnecting_stream_cancels_its_request(server, served):
    engine = served[0].engine
    body = {"model": "a", "prompt": "Once", "max_tokens": 60, "temperature": 1.0, "seed": 1, "stream": True}
    steps_before = engine.steps
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
    deadline = time.monotonic() + 10
    while engine.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["active"] == 0
    assert engine.steps - steps_before < 60, "the request ran to max_tokens after its client left"
