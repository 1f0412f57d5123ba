"""An OpenAI-compatible ASGI server (FastAPI + uvicorn) over the continuous-batching engine.

    jaxstack serve --model PATH [--model NAME=PATH ...] [--port 8000] [--api-key KEY]

Endpoints: ``GET /v1/models`` (every served model: ``id``, ``max_model_len``), ``GET /health``,
``POST /v1/completions`` and ``POST /v1/chat/completions``, routed by the ``model`` field (absent: the
first model). Fields, as OpenAI's API: ``prompt`` (a string, strings, token ids or token-id lists) or
``messages`` (rendered with the model's chat template, else ChatML); ``max_tokens`` (default 16),
``temperature`` (>= 0, 0 = greedy), ``top_p`` (in (0, 1]), ``top_k`` (>= 0, or -1; 0 and -1 = off),
``n`` (1..16 choices per prompt), ``seed``, ``stop`` (a string or up to 4), ``stream`` (server-sent
events, ``data: [DONE]`` last), ``logprobs`` (completions: 0..5 alternatives per token; chat:
``logprobs: true`` + ``top_logprobs``; streamed too, each chunk carrying its own tokens), ``echo`` (completions: prepend the prompt; with ``logprobs``
its token log-probs from the scorer, the first one null). ``echo=true, max_tokens=0, logprobs=1``
scores a prompt: lm-eval's local-completions log-likelihood pattern.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}`` whose message starts with the field
(``temperature: expected a finite number ...``): 400 for a malformed body (bad JSON, not an object,
nesting deeper than 64, lone surrogates) or field, and for prompts over the context (checked by
characters before tokenizing, then by tokens); 401 without the ``--api-key`` bearer token; 404 for
an unknown model or path; 408 when a body is not received within ``body_timeout_s``; 413 for a body
over ``max_body_bytes`` (from ``Content-Length`` before reading, or while reading a chunked body);
429 when a model's queue is full; 503 beyond ``max_connections`` (uvicorn's cap).

Slow clients: a connection that has not sent its request headers within ``header_timeout_s`` is
closed (uvicorn itself only times out idle keep-alive connections), one that does not finish its
body within ``body_timeout_s`` gets 408. A streaming client that disconnects cancels its requests,
freeing their slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from jaxstack.inference.engine import Engine, EngineStopped, QueueFull, SamplingParams

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 5
MAX_N = 16
MAX_STOP = 4
MAX_NESTING = 64
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """A request the server refuses: HTTP status, message (starting with the field) and the field."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        headers = {"Connection": "close"} if self.status in (408, 413) else None
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status, headers=headers)


# ----------------------------------------------------------------------------------------------------
# Request models (pydantic) and their validation errors


class _Sampling(BaseModel):
    # strict: "5" is not an integer and true is not a number; unknown fields are ignored, as OpenAI's
    # clients send fields (user, presence_penalty at 0, ...) that change nothing here
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(0, ge=-1)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: Any = None
    stream: bool = False


class CompletionRequest(_Sampling):
    prompt: Any = Field(...)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class ChatCompletionRequest(_Sampling):
    messages: Any = Field(...)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


_ERROR_TEXT = {
    "missing": "missing required field", "int_type": "expected an integer", "bool_type": "expected a boolean",
    "float_type": "expected a number", "finite_number": "expected a finite number",
    "string_type": "expected a string", "greater_than_equal": "expected a value >= {ge}",
    "greater_than": "expected a value > {gt}", "less_than_equal": "expected a value <= {le}",
    "less_than": "expected a value < {lt}",
}


def _field_path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_error(error: ValidationError) -> RequestError:
    first = error.errors(include_url=False)[0]
    field = _field_path(first["loc"])
    text = _ERROR_TEXT.get(first["type"], first["msg"]).format(**first.get("ctx", {}))
    got = "" if first["type"] == "missing" else f", got {json.dumps(first.get('input'), default=str)[:80]}"
    return RequestError(f"{field}: {text}{got}", param=field)


def _parse(model_class: type[BaseModel], body: dict) -> BaseModel:
    try:
        return model_class.model_validate(body)
    except ValidationError as error:
        raise _validation_error(error) from None


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


def parse_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str) and stop:
        return [stop]
    if isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) and s for s in stop):
        return list(stop)
    raise RequestError(f"stop: expected a non-empty string or a list of up to {MAX_STOP} non-empty strings",
                       param="stop")


def _check_json(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuses nesting deeper than MAX_NESTING and strings with lone surrogates (not encodable text)."""
    if depth > MAX_NESTING:
        raise RequestError(f"{path or 'body'}: nesting deeper than {MAX_NESTING} levels", param=path or None)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(f"{path}: the string contains a lone surrogate (not valid Unicode text)",
                               param=path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, path, depth + 1)
            _check_json(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)


# ----------------------------------------------------------------------------------------------------
# Served models


class ServedModel:
    """One model behind the server: its engine (generation), scorer (echoed prompt log-probs),
    tokenizer and chat template. ``slots`` / ``max_queue``: the engine's (see jaxstack.inference.engine)."""

    def __init__(self, name: str, model, tokenizer, *, chat_template: str | None = None, slots: int = 8,
                 max_queue: int = 256, score_batch_size: int = 16):
        from jaxstack.inference.scoring import LoglikelihoodScorer

        self.name, self.model, self.tokenizer, self.chat_template = name, model, tokenizer, chat_template
        self.engine = Engine(model, slots=slots, max_queue=max_queue, name=name)
        self.scorer = LoglikelihoodScorer(model, tokenizer, batch_size=score_batch_size)
        self.max_length = self.engine.max_length
        self.vocab_size = model.config.vocab_size
        backend = getattr(tokenizer, "backend", None)
        im_end = backend.token_to_id("<|im_end|>") if backend is not None else None
        self.eos_tokens = tuple(t for t in (tokenizer.eos_id,) if t is not None)
        self.chat_stop_tokens = tuple(t for t in (*self.eos_tokens, im_end) if t is not None)
        # every token's text is at most this many characters, so a prompt longer than max_length times
        # this cannot fit: refused before tokenizing it
        vocab = backend.get_vocab() if backend is not None else {}
        self.max_token_chars = max((len(piece) for piece in vocab), default=64)
        self.created = int(time.time())
        self._score_lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | pathlib.Path, *, name: str | None = None, policy: str | None = None,
             **kwargs) -> ServedModel:
        """A local HF directory (config.json, safetensors, tokenizer.json, optional chat template)."""
        from jaxstack.data.chat import load_chat_template
        from jaxstack.data.tokenizer import load_tokenizer
        from jaxstack.models.checkpoint import load_pretrained

        model_dir = pathlib.Path(model_dir)
        return cls(name or model_dir.resolve().name, load_pretrained(model_dir, policy=policy),
                   load_tokenizer(model_dir), chat_template=load_chat_template(model_dir), **kwargs)

    def info(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "jaxstack",
                "max_model_len": self.max_length}

    def encode_prompt(self, prompt: str | list[int], index: int, max_tokens: int) -> list[int]:
        # scoring only (max_tokens=0) runs the model on prompt[:-1], so one more token fits
        limit = self.max_length + (1 if max_tokens == 0 else 0)
        if isinstance(prompt, str):
            if len(prompt) > limit * self.max_token_chars:
                raise RequestError(f"prompt[{index}]: {len(prompt)} characters cannot fit the model's context of "
                                   f"{self.max_length} tokens", param="prompt", code="context_length_exceeded")
            ids = self.tokenizer.encode(prompt) if prompt else [self.tokenizer.eos_id]
        else:
            if min(prompt) < 0 or max(prompt) >= self.vocab_size:
                raise RequestError(f"prompt[{index}]: token ids must be in [0, {self.vocab_size})", param="prompt")
            ids = list(prompt)
        if len(ids) + max_tokens > limit:
            raise RequestError(
                f"prompt[{index}]: {len(ids)} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
                f"{self.max_length} tokens", param="prompt", code="context_length_exceeded")
        return ids

    def score(self, sequences: list[list[int]], top_k: int):
        with self._score_lock:
            return self.scorer.score_sequences(sequences, top_k=top_k)


@dataclasses.dataclass
class _Choice:
    """One generated choice as it streams: the engine request, its tokens, its text so far."""

    index: int
    prompt_ids: list[int]
    request: Any = None
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    tops: list[dict[int, float]] = dataclasses.field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already streamed
    sent_tokens: int = 0  # tokens whose log-probs were already streamed
    finish_reason: str | None = None


# ----------------------------------------------------------------------------------------------------
# The server


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (a slow or stalled client is
    disconnected after ``header_timeout`` seconds instead of holding its connection forever)."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = None

    def _headers_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a request's headers arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        self._arm_header_timer()  # the next request on this connection gets its own deadline
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


class ModelServer:
    """Serves ``models`` (ServedModel, routed by name): ``start()`` warms every engine up, binds (port 0
    = a free port) and serves on a background thread; ``serve_forever()`` blocks.

    max_body_bytes: request bodies above are refused (413). header_timeout_s / body_timeout_s: slow
    clients (module docstring). max_connections: open connections before uvicorn answers 503.
    max_prompt_chars: string prompts longer are refused before tokenizing (besides the per-model check).
    """

    def __init__(self, models: Sequence[ServedModel], *, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, default_max_tokens: int = 16, max_body_bytes: int = 16 * 2**20,
                 header_timeout_s: float = 10.0, body_timeout_s: float = 30.0, max_connections: int = 1024):
        if not models:
            raise ValueError("models: expected at least one ServedModel")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be distinct, got {names}")
        self.models = {m.name: m for m in models}
        self.host, self.port, self.api_key = host, port, api_key
        self.default_max_tokens, self.max_body_bytes = default_max_tokens, max_body_bytes
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections = max_connections
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        if host not in LOOPBACK and not api_key:
            logger.warning("serving on %s without --api-key: anyone who can reach this address can use the "
                           "models; pass --api-key or bind 127.0.0.1", host)

    # -- lifecycle ------------------------------------------------------------------------------

    def _uvicorn(self) -> uvicorn.Server:
        protocol = type("TimedH11Protocol", (_TimedH11Protocol,), {"header_timeout": self.header_timeout_s})
        config = uvicorn.Config(self.app, host=self.host, port=self.port, http=protocol, lifespan="off",
                                limit_concurrency=self.max_connections, timeout_keep_alive=5, log_level="warning",
                                backlog=2048)
        return uvicorn.Server(config)

    def warm_up(self) -> None:
        for served in self.models.values():
            served.engine.start()

    def start(self, timeout: float = 60.0) -> ModelServer:
        self.warm_up()
        self._server = self._uvicorn()
        self._thread = threading.Thread(target=self._server.run, name="jaxstack-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def shutdown(self, *, engines: bool = True) -> None:
        """Stops the HTTP server, and the models' engines unless ``engines=False`` (models shared with
        another server)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if engines:
            for served in self.models.values():
                served.engine.shutdown()

    def serve_forever(self) -> None:
        """Warms up and serves in this thread until Ctrl-C."""
        self.warm_up()
        self._server = self._uvicorn()
        try:
            self._server.run()
        finally:
            for served in self.models.values():
                served.engine.shutdown()

    # -- the app --------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="jaxstack", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(RequestError)
        async def request_error(request: Request, error: RequestError):
            return error.response()

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, error: StarletteHTTPException):
            message = (f"unknown path {request.url.path}; POST /v1/completions or /v1/chat/completions, "
                       "GET /v1/models or /health" if error.status_code == 404 else str(error.detail))
            return RequestError(message, status=error.status_code).response()

        @app.exception_handler(Exception)
        async def internal_error(request: Request, error: Exception):
            logger.exception("internal error on %s", request.url.path)
            return RequestError(f"internal error: {error!r}", status=500).response()

        @app.middleware("http")
        async def check_api_key(request: Request, call_next):
            if self.api_key and request.url.path.startswith("/v1"):
                if request.headers.get("authorization") != f"Bearer {self.api_key}":
                    return RequestError("authorization: expected the header 'Authorization: Bearer <api key>'",
                                        status=401, param="authorization", code="invalid_api_key").response()
            return await call_next(request)

        @app.get("/health")
        @app.get("/v1/health")
        async def health():
            return {"status": "ok", "models": {name: m.engine.stats() for name, m in self.models.items()}}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [m.info() for m in self.models.values()]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = _parse(CompletionRequest, await self._read_json(request))
            return await self._completions(request, body)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            body = _parse(ChatCompletionRequest, await self._read_json(request))
            return await self._chat(request, body)

        return app

    async def _read_json(self, request: Request) -> dict:
        """The body as a JSON object: size-capped before and while reading, time-limited, checked."""
        length = request.headers.get("content-length")
        if length is not None and int(length) > self.max_body_bytes:  # h11 has checked it is a number
            raise RequestError(f"body: {int(length)} bytes exceed the limit of {self.max_body_bytes}", status=413)

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise RequestError(f"body: more than the limit of {self.max_body_bytes} bytes", status=413)
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = await asyncio.wait_for(read(), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"body: not received within {self.body_timeout_s} s", status=408) from None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"body: the request body is not valid JSON: {error}") from None
        except RecursionError:
            raise RequestError(f"body: nesting deeper than {MAX_NESTING} levels") from None
        if not isinstance(body, dict):
            raise RequestError("body: the request body must be a JSON object")
        _check_json(body)
        return body

    def _served(self, name: str | None) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise RequestError(f"model: {name!r} is not served here; this server serves {sorted(self.models)}",
                               status=404, param="model", code="model_not_found")
        return self.models[name]

    def _params(self, body, max_tokens: int, stop_ids: tuple[int, ...], choice: int) -> SamplingParams:
        seed = None if body.seed is None else body.seed + choice
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=max(body.top_k, 0), seed=seed, stop_ids=stop_ids)

    # -- generation, shared by both endpoints ---------------------------------------------------

    def _launch(self, served: ServedModel, choices: list[_Choice], body, max_tokens: int,
                stop_ids: tuple[int, ...], n: int) -> asyncio.Queue:
        """Submits every choice; returns the queue their (choice, event) pairs arrive on."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener_for(choice: _Choice):
            def listener(request, event):
                loop.call_soon_threadsafe(events.put_nowait, (choice, event))
            return listener

        try:
            for choice in choices:
                params = self._params(body, max_tokens, stop_ids, choice.index % n)
                choice.request = served.engine.submit(choice.prompt_ids, params, listener_for(choice))
        except (QueueFull, EngineStopped, ValueError) as error:
            for choice in choices:
                if choice.request is not None:
                    choice.request.cancel()
            if isinstance(error, QueueFull):
                raise RequestError(str(error), status=429, code="queue_full") from None
            if isinstance(error, EngineStopped):
                raise RequestError(str(error), status=503) from None
            field = str(error).split(":", 1)[0]
            raise RequestError(str(error), param=field) from None
        return events

    def _advance(self, served: ServedModel, choice: _Choice, event, stop: list[str]) -> None:
        """Takes one engine event into the choice: token, text, stop strings, finish reason."""
        request = choice.request
        if event is None:
            if request.finish_reason == "error":
                raise RuntimeError(f"generation failed: {request.error!r}")
            if choice.finish_reason is None:
                choice.finish_reason = "stop" if request.finish_reason == "stop" else "length"
            return
        if choice.finish_reason is not None:
            return  # already cut at a stop string; the engine request was cancelled
        if event.token in request.params.stop_ids:
            return  # the stop token ends the text and is not part of it
        choice.tokens.append(event.token)
        choice.logprobs.append(event.logprob)
        choice.tops.append(dict(zip(event.top_ids, event.top_logprobs)))
        choice.text = served.tokenizer.decode(choice.tokens)
        cuts = [choice.text.find(s) for s in stop if s in choice.text]
        if cuts:
            cut = min(cuts)
            choice.text, choice.finish_reason = choice.text[:cut], "stop"
            kept = 0  # the shortest token prefix whose text covers the kept text
            while kept < len(choice.tokens) and len(served.tokenizer.decode(choice.tokens[:kept])) < cut:
                kept += 1
            del choice.tokens[kept:], choice.logprobs[kept:], choice.tops[kept:]
            request.cancel()

    @staticmethod
    def _streamable(choice: _Choice, stop: list[str]) -> str:
        """Text that can be sent now: all of it once finished; else hold back a possible stop-string
        prefix and an incomplete UTF-8 character (decoded as U+FFFD)."""
        text = choice.text
        if choice.finish_reason is None:
            hold = max((len(s) - 1 for s in stop), default=0)
            end = len(text) - hold
            while end > choice.sent and text[end - 1] == "\ufffd":
                end -= 1
            text = text[:max(end, choice.sent)]
        delta = text[choice.sent:]
        choice.sent = len(text)
        return delta

    async def _run_all(self, served, choices, events, stop, http: Request) -> None:
        """Waits for every choice to finish (non-streaming); cancels all if the client goes away."""
        pending = {id(c) for c in choices}
        try:
            while pending:
                try:
                    choice, event = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        raise asyncio.CancelledError from None
                    continue
                self._advance(served, choice, event, stop)
                if event is None:
                    pending.discard(id(choice))
        finally:
            for choice in choices:
                if not choice.request.done:
                    choice.request.cancel()

    @staticmethod
    def _streamed_tokens(served: ServedModel, choice: _Choice) -> range:
        """The generated tokens whose log-probs go with the text streamed so far: each token once its
        text is wholly sent (all that are left once the choice has finished)."""
        start, end = choice.sent_tokens, choice.sent_tokens
        if choice.finish_reason is not None:
            end = len(choice.tokens)
        else:
            while end < len(choice.tokens) and len(served.tokenizer.decode(choice.tokens[:end + 1])) <= choice.sent:
                end += 1
        choice.sent_tokens = end
        return range(start, end)

    async def _stream(self, served, choices, events, stop, chunk_of):
        """SSE: ``data: {chunk}`` per text delta, a last chunk per choice with its finish_reason, then
        ``data: [DONE]``. A client disconnect cancels every choice (the generator is closed)."""
        pending = {id(c) for c in choices}
        try:
            for choice in choices:
                first = chunk_of(choice, None, None, first=True)
                if first is not None:
                    yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
            while pending:
                choice, event = await events.get()
                self._advance(served, choice, event, stop)
                delta = self._streamable(choice, stop)
                if event is None or delta:
                    tokens = self._streamed_tokens(served, choice)
                    if event is None:
                        pending.discard(id(choice))
                    reason = choice.finish_reason if event is None else None
                    yield f"data: {json.dumps(chunk_of(choice, delta, reason, tokens=tokens), ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        except Exception as error:  # noqa: BLE001 - the status is sent already: report in-band
            logger.exception("stream failed")
            failure = {"error": {"message": f"internal error: {error!r}", "type": "server_error", "param": None,
                                 "code": None}}
            yield f"data: {json.dumps(failure)}\n\n"
        finally:
            for choice in choices:
                if choice.request is not None and not choice.request.done:
                    choice.request.cancel()

    # -- /v1/completions ------------------------------------------------------------------------

    async def _completions(self, http: Request, body: CompletionRequest):
        served = self._served(body.model)
        prompts = parse_prompts(body.prompt)
        stop = parse_stop(body.stop)
        max_tokens = self.default_max_tokens if body.max_tokens is None else body.max_tokens
        if body.stream and (body.echo or max_tokens == 0):
            raise RequestError("stream: not supported together with echo or max_tokens=0; send stream=false",
                               param="stream")
        encoded = [served.encode_prompt(p, i, max_tokens) for i, p in enumerate(prompts)]
        n = body.n
        choices = [_Choice(i * n + j, ids) for i, ids in enumerate(encoded) for j in range(n)]
        created, cid = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        if max_tokens > 0:
            events = self._launch(served, choices, body, max_tokens, served.eos_tokens, n)
            if body.stream:
                def chunk_of(choice, delta, reason, first=False, tokens=range(0)):
                    if first:
                        return None
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = self._logprobs_block(served, choice, body.logprobs, False, None, tokens)
                    return {"id": cid, "object": "text_completion", "created": created, "model": served.name,
                            "choices": [{"index": choice.index, "text": delta, "logprobs": logprobs,
                                         "finish_reason": reason}]}

                return StreamingResponse(self._stream(served, choices, events, stop, chunk_of),
                                         media_type="text/event-stream")
            await self._run_all(served, choices, events, stop, http)
        else:
            for choice in choices:
                choice.finish_reason = "length"
        prompt_scores = None
        if body.echo and body.logprobs is not None:
            sequences = [c.prompt_ids for c in choices]
            scorable = [i for i, s in enumerate(sequences) if len(s) >= 2]
            top_k = 1 if body.logprobs <= 1 else MAX_LOGPROBS
            scored = await asyncio.to_thread(served.score, [sequences[i] for i in scorable], top_k) if scorable else []
            prompt_scores = dict(zip(scorable, scored))
        out, completion_tokens = [], 0
        for position, choice in enumerate(choices):
            prompt = prompts[choice.index // n]
            text = choice.text
            if body.echo:
                text = (prompt if isinstance(prompt, str) else served.tokenizer.decode(choice.prompt_ids)) + text
            completion_tokens += len(choice.tokens)
            logprobs = None
            if body.logprobs is not None:
                scores = None if prompt_scores is None else prompt_scores.get(position, "short")
                logprobs = self._logprobs_block(served, choice, body.logprobs, body.echo, scores)
            out.append({"index": choice.index, "text": text, "finish_reason": choice.finish_reason,
                        "logprobs": logprobs})
        prompt_tokens = sum(len(ids) for ids in encoded)
        return {"id": cid, "object": "text_completion", "created": created, "model": served.name, "choices": out,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _logprobs_block(self, served: ServedModel, choice: _Choice, k: int, echo: bool, prompt_scores,
                        generated: range | None = None) -> dict:
        """OpenAI's completions ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset; the
        prompt's part (with echo) from the scorer, the first prompt token's log-prob null. ``generated``:
        which generated tokens (default all; a streamed chunk's own), their offsets counted from the
        start as in the whole answer."""
        text_of = served.tokenizer.decode
        generated = range(len(choice.tokens)) if generated is None else generated
        position = sum(len(text_of([t])) for t in choice.tokens[:generated.start])
        tokens, values, tops = [], [], []
        if echo:
            tokens = list(choice.prompt_ids)
            values, tops = [None], [None]
            if prompt_scores not in (None, "short"):
                for position in range(len(tokens) - 1):
                    values.append(float(prompt_scores.logprobs[position]))
                    top: dict[str, float] = {}
                    for value, token in zip(prompt_scores.top_logprobs[position][:max(k, 1)],
                                            prompt_scores.top_tokens[position][:max(k, 1)]):
                        top.setdefault(text_of([int(token)]), float(value))
                    tops.append(top if k > 0 else None)
        for index in generated:
            token, value, alternatives = choice.tokens[index], choice.logprobs[index], choice.tops[index]
            tokens.append(token)
            values.append(value)
            top = {}
            for alternative, lp in list(alternatives.items())[:max(k, 1)]:
                top.setdefault(text_of([alternative]), lp)
            tops.append(top if k > 0 else None)
        texts = [text_of([t]) for t in tokens]
        offsets = []
        for text in texts:
            offsets.append(position)
            position += len(text)
        return {"tokens": texts, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    # -- /v1/chat/completions -------------------------------------------------------------------

    async def _chat(self, http: Request, body: ChatCompletionRequest):
        from jaxstack.data.chat import apply_chat_template

        served = self._served(body.model)
        try:
            text = apply_chat_template(body.messages, served.chat_template)
        except ValueError as error:
            raise RequestError(str(error), param="messages") from None
        stop = parse_stop(body.stop)
        max_tokens = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
        max_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens == 0:
            raise RequestError("max_tokens: expected an integer >= 1 for chat completions", param="max_tokens")
        ids = served.encode_prompt(text, 0, max_tokens)
        choices = [_Choice(j, ids) for j in range(body.n)]
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        events = self._launch(served, choices, body, max_tokens, served.chat_stop_tokens, body.n)
        top_n = body.top_logprobs or 0
        if body.stream:
            def chunk_of(choice, delta, reason, first=False, tokens=range(0)):
                message = {"role": "assistant", "content": ""} if first else (
                    {"content": delta} if delta else {})
                logprobs = None
                if body.logprobs and not first:
                    logprobs = {"content": [self._chat_logprob(served, choice.tokens[i], choice.logprobs[i],
                                                               choice.tops[i], top_n) for i in tokens]}
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "choices": [{"index": choice.index, "delta": message, "logprobs": logprobs,
                                     "finish_reason": reason}]}

            return StreamingResponse(self._stream(served, choices, events, stop, chunk_of),
                                     media_type="text/event-stream")
        await self._run_all(served, choices, events, stop, http)
        out = []
        for choice in choices:
            logprobs = None
            if body.logprobs:
                logprobs = {"content": [self._chat_logprob(served, t, v, alts, top_n)
                                        for t, v, alts in zip(choice.tokens, choice.logprobs, choice.tops)]}
            out.append({"index": choice.index, "message": {"role": "assistant", "content": choice.text},
                        "finish_reason": choice.finish_reason, "logprobs": logprobs})
        completion_tokens = sum(len(c.tokens) for c in choices)
        return {"id": cid, "object": "chat.completion", "created": created, "model": served.name, "choices": out,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(ids) + completion_tokens}}

    @staticmethod
    def _chat_logprob(served: ServedModel, token: int, value: float, alternatives: dict[int, float], top_n: int):
        def entry(t, lp):
            text = served.tokenizer.decode([t])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8", "replace"))}

        return {**entry(token, value), "top_logprobs": [entry(t, lp) for t, lp in list(alternatives.items())[:top_n]]}


def load_server(model_dirs: Sequence[tuple[str | None, str | pathlib.Path]] | str | pathlib.Path, *,
                name: str | None = None, policy: str | None = None, slots: int = 8, max_queue: int = 256,
                **kwargs) -> ModelServer:
    """A ModelServer for local HF directories: one path (named ``name`` or after the directory), or
    (name or None, path) pairs (``jaxstack serve --model NAME=PATH``, repeated)."""
    if isinstance(model_dirs, (str, pathlib.Path)):
        model_dirs = [(name, model_dirs)]
    models = [ServedModel.load(path, name=model_name, policy=policy, slots=slots, max_queue=max_queue)
              for model_name, path in model_dirs]
    return ModelServer(models, **kwargs)


__all__ = ["ModelServer", "RequestError", "ServedModel", "load_server", "parse_prompts", "parse_stop"]
