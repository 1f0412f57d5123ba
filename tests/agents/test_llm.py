"""LLM clients: scripted policy, OpenAI-compatible HTTP client against a local server, and the local
jaxstack model client (tests/agents/test_jaxstack_client.py)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxstack.agents.llm import JaxstackModelClient, LLMClient, LLMError, OpenAICompatibleClient, ScriptedPolicy
from jaxstack.data.chat import render_chat
from jaxstack.inference.client import ServerError

MSGS = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]


class _Handler(BaseHTTPRequestHandler):
    script: list = []
    seen: list = []

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers, body))  # case-insensitive header names
        status, payload = self.script.pop(0) if self.script else (200, None)
        if payload is None:
            if self.path.endswith("/chat/completions"):
                payload = {"choices": [{"message": {"content": "echo:" + body["messages"][-1]["content"]},
                                        "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
            else:
                payload = {"choices": [{"text": "raw:" + str(len(body["prompt"])), "finish_reason": "length"}]}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    _Handler.script, _Handler.seen = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(timeout=5)


def test_openai_client_chat_and_raw(server):
    c = OpenAICompatibleClient(server, "m", api_key="k", timeout=5, max_retries=0, extra_body={"presence_penalty": 1.1})
    assert isinstance(c, LLMClient)
    out = c.complete(MSGS, stop=["</tool_call>"], max_tokens=5, temperature=0.5)
    assert out.text == "echo:hi" and out.prompt_tokens == 7 and out.completion_tokens == 2
    path, headers, body = _Handler.seen[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert body["stop"] == ["</tool_call>"] and body["max_tokens"] == 5 and body["presence_penalty"] == 1.1
    raw = OpenAICompatibleClient(server, "m", timeout=5, raw=True).complete(MSGS)
    assert raw.text == f"raw:{len(render_chat(MSGS, add_generation_prompt=True))}"
    assert _Handler.seen[-1][0] == "/v1/completions"


def test_openai_client_retries_then_errors(server):
    _Handler.script = [(503, {"error": "busy"}), (200, None)]
    c = OpenAICompatibleClient(server, "m", timeout=5, max_retries=2, backoff=0.01)
    assert c.complete(MSGS).text == "echo:hi" and len(_Handler.seen) == 2
    _Handler.script = [(400, {"error": "bad request"})]
    with pytest.raises(ServerError, match="HTTP 400"):
        c.complete(MSGS)
    _Handler.script = [(500, {}), (500, {}), (500, {})]
    with pytest.raises(ServerError, match="after 3 attempts"):
        c.complete(MSGS)
    _Handler.script = [(200, {"nothing": 1})]
    with pytest.raises(ServerError, match="malformed"):
        c.complete(MSGS)
    _Handler.script = [(200, b"not json")]
    with pytest.raises(ServerError, match="not JSON"):
        c.complete(MSGS)


def test_openai_client_unreachable_and_bad_args():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = OpenAICompatibleClient(f"http://127.0.0.1:{port}/v1", "m", timeout=2, max_retries=1, backoff=0.01)
    with pytest.raises(ServerError, match="cannot reach"):
        c.complete(MSGS)
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleClient("127.0.0.1", "m")
    with pytest.raises(ValueError, match="messages"):
        c.complete([])


def test_scripted_policy():
    p = ScriptedPolicy(["<tool_call>x</tool_call> trailing", "b"])
    assert p.complete(MSGS, stop=["</tool_call>"]).text == "<tool_call>x</tool_call>"
    assert p.complete(MSGS).text == "b"
    with pytest.raises(LLMError, match="ran out"):
        p.complete(MSGS)
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        ScriptedPolicy(["a"]).complete([{"role": "robot", "content": ""}])
    with pytest.raises(ValueError, match="needs a model"):
        JaxstackModelClient()
