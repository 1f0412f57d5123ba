"""A client for OpenAI-compatible completion servers (``jaxstack serve``, vLLM, ...), standard library only.

``CompletionsClient.loglikelihoods`` is lm-eval's "local-completions" pattern: the client tokenises
each (context, continuation) pair with the same rules as the in-process scorer
(:func:`jaxstack.evals.scoring.encode_pair`, left truncation to the server's context), sends token-id
prompts with ``echo=true, max_tokens=0, logprobs=1`` and sums the continuation's echoed log-probs.
A continuation token is greedy when its log-prob equals the best alternative's (lm-eval's test).
Pass a client wherever the harness takes a model (``evaluate_multiple_choice(client, None, items)``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from typing import Any


class ServerError(RuntimeError):
    """The server answered with an error (status and its message)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class CompletionsClient:
    """base_url: e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended). tokenizer: a jaxstack Tokenizer
    (needed for ``loglikelihoods``). model: the model name to send (default: the server's first)."""

    def __init__(self, base_url: str, tokenizer=None, *, model: str | None = None, timeout: float = 600.0,
                 max_length: int | None = None):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.tokenizer, self.timeout = tokenizer, timeout
        self._model, self._max_length = model, max_length
        self.truncated = 0

    # -- transport ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            payload = error.read().decode("utf-8", "replace")
            try:
                message = json.loads(payload)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = payload
            raise ServerError(error.code, message) from None

    def _model_info(self) -> dict:
        models = self.request("GET", "/models")["data"]
        if not models:
            raise ServerError(500, "the server lists no models")
        if self._model is None:
            return models[0]
        for info in models:
            if info["id"] == self._model:
                return info
        raise ServerError(404, f"model {self._model!r} is not served; available: {[m['id'] for m in models]}")

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
        return self.request("POST", "/completions", {"model": self.model, "prompt": prompt, **params})

    def chat(self, messages: list[dict], **params) -> dict:
        return self.request("POST", "/chat/completions", {"model": self.model, "messages": messages, **params})

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

        max_length = self.max_length
        sequences, lengths, truncated = [], [], 0
        for index, (context_ids, continuation_ids) in enumerate(requests):
            if not continuation_ids:
                raise ValueError(f"requests[{index}]: the continuation encodes to no tokens")
            if len(continuation_ids) > max_length:
                raise ValueError(f"requests[{index}]: the continuation has {len(continuation_ids)} tokens, more "
                                 f"than the model's context of {max_length}; it cannot be scored")
            whole = list(context_ids) + list(continuation_ids)
            if len(whole) > max_length + 1:  # lm-eval's rule: inputs are the last max_length tokens
                truncated += 1
                whole = whole[-(max_length + 1):]
            sequences.append(whole)
            lengths.append(len(continuation_ids))
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
        from jaxstack.evals.scoring import encode_pairs

        if self.tokenizer is None:
            raise ValueError("tokenizer: CompletionsClient needs the model's tokenizer to score log-likelihoods")
        pairs = encode_pairs(self.tokenizer, requests)
        return self.loglikelihood_tokens(pairs, batch_size=batch_size, progress=progress)


__all__ = ["CompletionsClient", "ServerError"]
