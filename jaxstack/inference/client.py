"""The one client for OpenAI-compatible servers (``jaxstack serve``, vLLM, SGLang, hosted APIs), on the
official ``openai`` package.

Transport: :meth:`CompletionsClient.models`, :meth:`~CompletionsClient.completions` and
:meth:`~CompletionsClient.chat` send a JSON body (every parameter passes through as given) and return
the server's JSON answer as plain dicts, so server-specific fields (``max_model_len``, vLLM's
``stop_reason``) survive. A ``base_url`` without a path (``http://127.0.0.1:8000``) gets ``/v1``
appended; one with a path (``https://host/v1``, ``https://host/openai/v1``) is used as given.

Retries, the one rule: a request is retried when the server cannot be reached (connection error or
timeout) or answers 429 or 5xx, at most ``max_retries`` times (default 2), after sleeping
``backoff * 2**attempt`` seconds (default 0.5 s, then 1 s). Any other failure is raised at once. The
``openai`` package's own retries are switched off, so this rule is the only one.

Errors: :class:`ServerError`, the one error type, for an HTTP error status (``status`` set), a server
that stayed unreachable, and an answer that is not the JSON expected.

Log-likelihoods: :meth:`CompletionsClient.loglikelihoods` is lm-eval's "local-completions" pattern. The
client tokenises each (context, continuation) pair with the in-process scorer's rules
(:func:`jaxstack.inference.scoring.encode_pairs`, left truncation to the server's context), sends
token-id prompts with ``echo=true, max_tokens=0, logprobs=1`` and sums the continuation's echoed
log-probs. A continuation token is greedy when its log-prob equals the best alternative's (lm-eval's
test). Pass a client wherever the harness takes a model (``evaluate_multiple_choice(client, None, items)``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: it takes seconds, and the sampler and the server never need it
    import openai

# openai requires a key; servers that check none (jaxstack serve, a default vLLM) accept any, and an
# explicit placeholder keeps the package from reading OPENAI_API_KEY and sending it to a local server
NO_API_KEY = "EMPTY"


class ServerError(RuntimeError):
    """An OpenAI-compatible server failed: ``status`` is the HTTP error status, or None when the server
    could not be reached or its answer was not the JSON expected. ``message`` names the request."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status, self.message = status, message


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _error_detail(error: openai.APIStatusError) -> str:
    """The server's error message: ``{"error": {"message": ...}}`` (OpenAI's shape), ``{"error": "..."}``,
    else the first 300 characters of the body."""
    body = error.body  # openai unwraps the "error" member of a JSON body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body:
        return body
    return error.response.text[:300]


class CompletionsClient:
    """A client for one OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended) or ``https://host/v1``.
        tokenizer: a jaxstack Tokenizer (needed for ``loglikelihoods``).
        model: the model name to send (default: the server's first, from ``GET /models``).
        api_key: sent as ``Authorization: Bearer ...`` (default: the placeholder ``EMPTY``).
        timeout: seconds per attempt.
        max_retries, backoff: the retry rule of the module docstring.
        max_length: the model's context for ``loglikelihoods`` (default: the server's ``max_model_len``).
    """

    def __init__(self, base_url: str, tokenizer=None, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2, backoff: float = 0.5, max_length: int | None = None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected a URL starting with http:// or https://, got {base_url!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an integer >= 0, got {max_retries!r}")
        if timeout <= 0 or backoff < 0:
            raise ValueError(f"timeout / backoff: expected > 0 / >= 0 seconds, got {timeout} / {backoff}")
        self.base_url = base_url.rstrip("/")
        if urllib.parse.urlsplit(self.base_url).path == "":
            self.base_url += "/v1"
        self.tokenizer, self.timeout = tokenizer, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self._model, self._max_length = model, max_length
        self.truncated = 0
        import openai

        self._openai = openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_API_KEY, timeout=timeout,
                                     max_retries=0)

    # -- transport ------------------------------------------------------------------------------

    def _request(self, what: str, send: Callable[[], Any]) -> dict:
        """Runs ``send`` (an ``openai`` ``with_raw_response`` call) under the retry rule and parses the
        answer. ``what``: e.g. ``"POST /completions"``, for error messages."""
        import openai

        failure = None
        for attempt in range(self.max_retries + 1):
            try:
                text = send().http_response.text
            except openai.APIStatusError as error:
                failure = ServerError(f"{what}: HTTP {error.status_code}: {_error_detail(error)}",
                                      status=error.status_code)
                if not _retryable(error.status_code):
                    raise failure from None
            except openai.APIConnectionError as error:  # APITimeoutError included
                failure = ServerError(f"{what}: cannot reach {self.base_url}: {error.__cause__ or error}")
            except openai.APIError as error:  # anything else the package raises: not retried
                raise ServerError(f"{what}: {error}") from None
            else:
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ServerError(f"{what}: the response is not JSON: {text[:200]!r}") from None
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2**attempt)
        attempts = self.max_retries + 1
        raise ServerError(f"{failure.message} (after {attempts} attempt{'s' if attempts > 1 else ''})",
                          status=failure.status)

    def models(self) -> list[dict]:
        """``GET /models``: the served models (``id``; jaxstack and vLLM add ``max_model_len``)."""
        answer = self._request("GET /models", self._openai.models.with_raw_response.list)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise ServerError(f"GET /models: expected {{'data': [...]}}, got {str(answer)[:200]}")
        return answer["data"]

    def _model_info(self) -> dict:
        models = self.models()
        if not models:
            raise ServerError("GET /models: the server lists no models")
        if self._model is None:
            return models[0]
        for info in models:
            if info.get("id") == self._model:
                return info
        raise ServerError(f"model {self._model!r} is not served; available: {[m.get('id') for m in models]}")

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._model_info()["id"]
        return self._model

    @property
    def max_length(self) -> int:
        if self._max_length is None:
            info = self._model_info()
            if "max_model_len" not in info:
                raise ValueError("max_length: the server does not report max_model_len; pass max_length")
            self._max_length = int(info["max_model_len"])
        return self._max_length

    # -- completions ----------------------------------------------------------------------------

    def completions(self, prompt: Any, **params) -> dict:
        """``POST /completions`` with ``prompt`` (a string, strings, token ids or lists of token ids)
        and ``params`` (``max_tokens``, ``temperature``, ``echo``, ``logprobs``, ...) as given."""
        create = self._openai.completions.with_raw_response.create
        return self._request("POST /completions", lambda: create(model=self.model, prompt=prompt, extra_body=params))

    def chat(self, messages: list[dict], **params) -> dict:
        """``POST /chat/completions`` with ``messages`` and ``params`` as given."""
        create = self._openai.chat.completions.with_raw_response.create
        return self._request("POST /chat/completions",
                             lambda: create(model=self.model, messages=messages, extra_body=params))

    def complete_chat(self, prompts: Sequence[str], *, temperature: float = 0.8, top_p: float = 0.95,
                      max_new_tokens: int = 256, progress: bool = True, **params) -> list[str]:
        """One user-turn chat completion per prompt (the Global PIQA prompted format over HTTP)."""
        from tqdm.auto import tqdm

        return [self.chat([{"role": "user", "content": p}], temperature=temperature, top_p=top_p,
                          max_tokens=max_new_tokens, **params)["choices"][0]["message"]["content"]
                for p in tqdm(prompts, desc="chat", disable=not progress)]

    # -- log-likelihoods ------------------------------------------------------------------------

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16,
                             progress: bool = True) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        from jaxstack.inference.scoring import truncate_requests

        max_length = self.max_length
        sequences, lengths, truncated = truncate_requests(requests, max_length)
        if truncated:
            self.truncated += truncated
            warnings.warn(f"loglikelihood: {truncated} of {len(requests)} requests exceed the server's context of "
                          f"{max_length} tokens; their contexts were truncated from the left", stacklevel=3)
        out: list[tuple[float, bool]] = []
        for start in tqdm(range(0, len(sequences), batch_size), desc="loglikelihood (http)", disable=not progress):
            batch = sequences[start:start + batch_size]
            response = self.completions(batch, max_tokens=0, echo=True, logprobs=1, temperature=0.0)
            for choice in sorted(response["choices"], key=lambda c: c["index"]):
                length = lengths[len(out)]
                logprobs = choice["logprobs"]["token_logprobs"][-length:]
                tops = choice["logprobs"]["top_logprobs"][-length:]
                greedy = all(value == max(top.values()) for value, top in zip(logprobs, tops))
                out.append((float(sum(logprobs)), bool(greedy)))
        return out

    def loglikelihoods(self, requests: Sequence[tuple[str, str]], *, batch_size: int = 16,
                       progress: bool = True) -> list[tuple[float, bool]]:
        """lm-eval ``loglikelihood`` through the server (see the module docstring)."""
        from jaxstack.inference.scoring import encode_pairs

        if self.tokenizer is None:
            raise ValueError("tokenizer: CompletionsClient needs the model's tokenizer to score log-likelihoods")
        pairs = encode_pairs(self.tokenizer, requests)
        return self.loglikelihood_tokens(pairs, batch_size=batch_size, progress=progress)


__all__ = ["NO_API_KEY", "CompletionsClient", "ServerError"]
