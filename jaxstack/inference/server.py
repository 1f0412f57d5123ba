"""An OpenAI-compatible HTTP server for a jaxstack model, standard library only.

    jaxstack serve --model PATH [--port 8000] [--name NAME]

Endpoints (loopback by default):

* ``GET /v1/models``: the one served model (``id``, ``max_model_len``).
* ``POST /v1/completions``: ``prompt`` (a string, a list of strings, a list of token ids or a list of
  token-id lists), ``max_tokens`` (>= 0, default 16), ``temperature`` (>= 0, default 1; 0 = greedy),
  ``top_p`` (in (0, 1]), ``stop`` (a string or up to 4), ``logprobs`` (0..5 alternatives per token),
  ``echo`` (prepend the prompt, and its token log-probs when ``logprobs`` is set), ``seed``.
  ``echo=true, max_tokens=0, logprobs=1`` scores a prompt: lm-eval's local-completions
  log-likelihood pattern (the first token's log-prob is ``null``).
* ``POST /v1/chat/completions``: ``messages`` rendered with the tokenizer's chat template
  (``tokenizer_config.json`` / ``chat_template.jinja`` beside the model) or ChatML.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for malformed JSON, missing
or invalid fields (wrong types, negative ``max_tokens``, ``temperature`` < 0, ``top_p`` outside (0, 1],
``n`` != 1, ``stream``), and prompts that do not fit the model's context with ``max_tokens``; **404**
for an unknown ``model`` name (as OpenAI's API does) and unknown paths.

Concurrency: HTTP handler threads parse and validate, then put one unit per prompt on a queue. One
worker thread owns the model: it takes every unit waiting (up to ``max_batch``, waiting at most
``batch_wait_s`` for more), generates each group of units with equal sampling settings in one jitted
batch (rows padded to a power of two, prompt width to a power-of-two bucket, so compiled shapes
repeat), then scores all log-prob requests in one bucketed pass.
"""

from __future__ import annotations

import json
import pathlib
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

MAX_LOGPROBS = 5


class RequestError(Exception):
    """A request the server refuses: HTTP status, message and the offending parameter."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------------
# Request validation (pure functions of the parsed JSON)


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name}: expected a number, got {json.dumps(value)}", param=name)
    return float(value)


def _integer(body: dict, name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}: expected an integer, got {json.dumps(value)}", param=name)
    return value


def sampling_params(body: dict, *, default_max_tokens: int) -> dict[str, Any]:
    """Validated common fields: max_tokens, temperature, top_p, stop, seed."""
    max_tokens = _integer(body, "max_tokens", None)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", default_max_tokens)
    if max_tokens < 0:
        raise RequestError(f"max_tokens: expected an integer >= 0, got {max_tokens}", param="max_tokens")
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise RequestError(f"temperature: expected a number >= 0, got {temperature}", param="temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p: expected a number in (0, 1], got {top_p}", param="top_p")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4):
        raise RequestError("stop: expected a non-empty string or a list of up to 4 non-empty strings", param="stop")
    seed = _integer(body, "seed", None)
    n = _integer(body, "n", 1)
    if n != 1:
        raise RequestError(f"n: only n=1 is supported, got {n}", param="n")
    if body.get("stream"):
        raise RequestError("stream: streaming is not supported", param="stream")
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop, "seed": seed}


def parse_prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI ``prompt`` forms -> a list of strings or token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return [list(p) for p in prompt]
    raise RequestError("prompt: expected a string, a list of strings, a list of token ids or a list of "
                       "non-empty token-id lists", param="prompt")


# ----------------------------------------------------------------------------------------------------
# Work units and the batching worker


@dataclass
class _Unit:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    logprobs: int | None  # alternatives per token, None = no log-probs
    stop_tokens: tuple[int, ...]
    done: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    stopped: bool = False  # ended on a stop token
    scores: Any = None  # ScoredSequence over prompt + generated tokens
    error: BaseException | None = None


def _pow2(n: int, smallest: int = 1) -> int:
    size = smallest
    while size < n:
        size *= 2
    return size


class ModelServer:
    """Serves one model: ``start()`` binds (port 0 = a free port) and serves in a background thread."""

    def __init__(self, model, tokenizer, *, name: str = "jaxstack", chat_template: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, batch_wait_s: float = 0.005,
                 default_max_tokens: int = 16, score_batch_size: int = 16):
        from jaxstack.inference.scoring import LoglikelihoodScorer

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.chat_template = chat_template
        self.host, self.port = host, port
        self.max_batch, self.batch_wait_s, self.default_max_tokens = max_batch, batch_wait_s, default_max_tokens
        self.scorer = LoglikelihoodScorer(model, tokenizer, batch_size=score_batch_size)
        self.max_length = self.scorer.max_length
        backend = getattr(tokenizer, "backend", None)
        im_end = backend.token_to_id("<|im_end|>") if backend is not None else None
        self.eos_tokens = tuple(t for t in (tokenizer.eos_id,) if t is not None)
        self.chat_stop_tokens = tuple(t for t in (*self.eos_tokens, im_end) if t is not None)
        self.created = int(time.time())
        self._queue: queue.Queue[_Unit | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.batches_run = 0  # generation batches, for tests and logs

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ModelServer:
        self._worker = threading.Thread(target=self._work, name="jaxstack-model-worker", daemon=True)
        self._worker.start()
        self._httpd = _HTTPServer((self.host, self.port), _handler_class(self))
        self.port = self._httpd.server_address[1]
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, name="jaxstack-http", daemon=True)
        self._http_thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def shutdown(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=10)

    def serve_forever(self) -> None:
        """Blocks until Ctrl-C (starts the server first if ``start()`` was not called)."""
        if self._httpd is None:
            self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            units = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(units) < self.max_batch:
                try:
                    unit = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if unit is None:
                    self._queue.put(None)
                    break
                units.append(unit)
            try:
                self._run(units)
            except BaseException as error:  # noqa: BLE001 - reported to every waiting request
                for unit in units:
                    unit.error = error
            for unit in units:
                unit.done.set()

    def _run(self, units: list[_Unit]) -> None:
        from jaxstack.inference.sampler import SamplingConfig, generate

        groups: dict[tuple, list[_Unit]] = {}
        for unit in units:
            if unit.max_tokens > 0:
                key = (unit.temperature, unit.top_p, unit.seed, unit.stop_tokens)
                groups.setdefault(key, []).append(unit)
        for (temperature, top_p, seed, stop_tokens), group in groups.items():
            rows = _pow2(len(group))
            prompts = [u.prompt_ids for u in group] + [group[-1].prompt_ids] * (rows - len(group))
            width = min(_pow2(max(len(p) for p in prompts), 16), self.max_length)
            new_tokens = _pow2(max(u.max_tokens for u in group), 16)
            config = SamplingConfig(max_new_tokens=new_tokens, temperature=temperature,
                                    top_p=None if top_p >= 1.0 else top_p, stop_tokens=stop_tokens)
            result = generate(self.model, prompts, config, seed=0 if seed is None else seed, pad_length=width)
            tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
            self.batches_run += 1
            for row, unit in enumerate(group):
                produced = tokens[row, : min(int(lengths[row]), unit.max_tokens)].tolist()
                unit.stopped = bool(produced) and produced[-1] in stop_tokens
                unit.tokens = produced
        scoring = [u for u in units if u.logprobs is not None and len(u.prompt_ids) + len(u.tokens) >= 2]
        if scoring:
            top_k = 1 if all(u.logprobs <= 1 for u in scoring) else MAX_LOGPROBS
            scored = self.scorer.score_sequences([u.prompt_ids + u.tokens for u in scoring], top_k=top_k)
            for unit, scores in zip(scoring, scored):
                unit.scores = scores

    def submit(self, units: list[_Unit], timeout: float = 600.0) -> None:
        for unit in units:
            self._queue.put(unit)
        for unit in units:
            if not unit.done.wait(timeout):
                raise RequestError("the model worker did not answer in time", status=503)
            if unit.error is not None:
                raise RequestError(f"generation failed: {unit.error}", status=500)

    # -- request handling -----------------------------------------------------------------------

    def _check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.name:
            raise RequestError(f"model: {name!r} is not served here; this server serves {self.name!r}",
                               status=404, param="model", code="model_not_found")

    def _encode_prompt(self, prompt: str | list[int], index: int, max_tokens: int) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt) if prompt else [self.tokenizer.eos_id]
        else:
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
            if vocab is not None and (min(prompt) < 0 or max(prompt) >= vocab):
                raise RequestError(f"prompt[{index}]: token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)
        # scoring only (max_tokens=0) runs the model on prompt[:-1], so one more token fits
        limit = self.max_length + (1 if max_tokens == 0 else 0)
        if len(ids) + max_tokens > limit:
            raise RequestError(
                f"prompt[{index}]: {len(ids)} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
                f"{self.max_length} tokens", param="prompt", code="context_length_exceeded")
        return ids

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _finish(self, unit: _Unit, stop: list[str]) -> tuple[str, list[int], str]:
        """(completion text, kept generated tokens, finish_reason) after stop tokens / strings."""
        tokens = [t for t in unit.tokens]
        reason = "stop" if unit.stopped else "length"
        if unit.stopped:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens)
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            cut = min(cuts)
            text, reason = text[:cut], "stop"
            kept = 0  # the shortest token prefix whose text covers the kept text
            while kept < len(tokens) and len(self.tokenizer.decode(tokens[:kept])) < cut:
                kept += 1
            tokens = tokens[:kept]
        return text, tokens, reason

    def _logprobs_block(self, unit: _Unit, tokens: list[int], echo: bool) -> dict:
        all_tokens = unit.prompt_ids + tokens
        values: list[float | None] = [None]
        tops: list[dict | None] = [None]
        if unit.scores is not None:
            k = unit.logprobs
            for position in range(len(all_tokens) - 1):
                values.append(float(unit.scores.logprobs[position]))
                top = {}
                for value, token in zip(unit.scores.top_logprobs[position][:max(k, 1)],
                                        unit.scores.top_tokens[position][:max(k, 1)]):
                    top.setdefault(self._token_text(int(token)), float(value))
                tops.append(top if k > 0 else None)
        start = 0 if echo else len(unit.prompt_ids)
        texts = [self._token_text(t) for t in all_tokens]
        offsets, position = [], 0
        for text in texts:
            offsets.append(position)
            position += len(text)
        return {"tokens": texts[start:], "token_logprobs": values[start:], "top_logprobs": tops[start:],
                "text_offset": offsets[start:]}

    def completions(self, body: dict) -> dict:
        self._check_model(body)
        if "prompt" not in body:
            raise RequestError("prompt: missing required field", param="prompt")
        prompts = parse_prompts(body["prompt"])
        params = sampling_params(body, default_max_tokens=self.default_max_tokens)
        logprobs = _integer(body, "logprobs", None)
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise RequestError(f"logprobs: expected an integer in [0, {MAX_LOGPROBS}] or null, got {logprobs}",
                               param="logprobs")
        echo = body.get("echo", False)
        if not isinstance(echo, bool):
            raise RequestError(f"echo: expected a boolean, got {json.dumps(echo)}", param="echo")
        units = [
            _Unit(self._encode_prompt(p, i, params["max_tokens"]), params["max_tokens"], params["temperature"],
                  params["top_p"], params["seed"], logprobs, self.eos_tokens)
            for i, p in enumerate(prompts)
        ]
        self.submit(units)
        choices, completion_tokens = [], 0
        for index, (prompt, unit) in enumerate(zip(prompts, units)):
            text, tokens, reason = self._finish(unit, params["stop"])
            completion_tokens += len(tokens)
            if echo:
                prompt_text = prompt if isinstance(prompt, str) else self.tokenizer.decode(unit.prompt_ids)
                text = prompt_text + text
            choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
            if logprobs is not None:
                choice["logprobs"] = self._logprobs_block(unit, tokens, echo)
            choices.append(choice)
        prompt_tokens = sum(len(u.prompt_ids) for u in units)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def chat_completions(self, body: dict) -> dict:
        from jaxstack.data.chat import apply_chat_template

        self._check_model(body)
        if "messages" not in body:
            raise RequestError("messages: missing required field", param="messages")
        try:
            text = apply_chat_template(body["messages"], self.chat_template)
        except ValueError as error:
            raise RequestError(str(error), param="messages") from error
        params = sampling_params(body, default_max_tokens=self.default_max_tokens)
        if body.get("logprobs"):
            raise RequestError("logprobs: not supported on /v1/chat/completions; use /v1/completions",
                               param="logprobs")
        unit = _Unit(self._encode_prompt(text, 0, params["max_tokens"]), params["max_tokens"], params["temperature"],
                     params["top_p"], params["seed"], None, self.chat_stop_tokens)
        self.submit([unit])
        content, tokens, reason = self._finish(unit, params["stop"])
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": reason, "logprobs": None}],
                "usage": {"prompt_tokens": len(unit.prompt_ids), "completion_tokens": len(tokens),
                          "total_tokens": len(unit.prompt_ids) + len(tokens)}}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "jaxstack", "max_model_len": self.max_length}]}


class _HTTPServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of concurrent clients would see resets
    request_queue_size = 256
    daemon_threads = True


def _handler_class(server: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet; the CLI prints one line at start
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, server.models())
            elif self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            else:
                self._send(404, RequestError(f"unknown path {self.path}", status=404).body())

        def do_POST(self):
            routes = {"/v1/completions": server.completions, "/v1/chat/completions": server.chat_completions}
            route = routes.get(self.path.rstrip("/"))
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length > 0 else b""
                if route is None:
                    raise RequestError(f"unknown path {self.path}; POST /v1/completions or /v1/chat/completions",
                                       status=404)
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise RequestError(f"the request body is not valid JSON: {error}") from error
                if not isinstance(body, dict):
                    raise RequestError("the request body must be a JSON object")
                self._send(200, route(body))
            except RequestError as error:
                self._send(error.status, error.body())
            except Exception as error:  # noqa: BLE001 - a server must answer
                self._send(500, RequestError(f"internal error: {error}", status=500).body())

    return Handler


def load_server(model_dir: str | pathlib.Path, *, name: str | None = None, policy: str | None = None,
                **kwargs) -> ModelServer:
    """A ModelServer for a local HF directory (config.json, safetensors, tokenizer.json)."""
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.data.chat import load_chat_template
    from jaxstack.models.checkpoint import load_pretrained

    model_dir = pathlib.Path(model_dir)
    model = load_pretrained(model_dir, policy=policy)
    tokenizer = load_tokenizer(model_dir)
    return ModelServer(model, tokenizer, name=name or model_dir.resolve().name,
                       chat_template=load_chat_template(model_dir), **kwargs)


__all__ = ["ModelServer", "RequestError", "load_server", "parse_prompts", "sampling_params"]
