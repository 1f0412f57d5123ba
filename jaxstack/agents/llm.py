"""LLM clients: one interface for "a policy that maps a prompt to text".

* :class:`LLMClient` - the protocol: ``complete(messages, *, stop, max_tokens, temperature)``
  returning a :class:`Completion`.
* :class:`ScriptedPolicy` - replays fixed responses or calls a Python function (the oracle
  policies of the experiments are built on it).
* :class:`OpenAICompatibleClient` - ``POST {base_url}/chat/completions`` (or
  ``/completions`` with ``raw=True``) through :class:`jaxstack.inference.client.CompletionsClient`,
  the one HTTP client (its retry rule; its one error type,
  :class:`~jaxstack.inference.client.ServerError`). Works with vLLM's, ``jaxstack serve`` or any
  hosted OpenAI-compatible server.
* :class:`JaxstackModelClient` - a local jaxstack model through the KV-cache sampler
  (ChatML rendering, batched generation, stop tokens and stop strings, token counts).

Prompts are rendered by :func:`jaxstack.data.chat.render_chat` (ChatML), messages checked by
:func:`jaxstack.data.chat.validate_messages`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from jaxstack.data.chat import render_chat, validate_messages

__all__ = [
    "Message",
    "Completion",
    "LLMClient",
    "LLMError",
    "ScriptedPolicy",
    "OpenAICompatibleClient",
    "JaxstackModelClient",
]

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Completion:
    """One model response. Token counts are those the backend reports (``None`` if it does not)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency_s: float = 0.0


class LLMError(RuntimeError):
    """A scripted policy cannot answer (HTTP backends raise :class:`jaxstack.inference.client.ServerError`)."""


@runtime_checkable
class LLMClient(Protocol):
    """A policy mapping a chat prompt to text."""

    def complete(self, messages: Sequence[Message], *, stop: Sequence[str] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None) -> Completion:  # pragma: no cover
        ...


def _apply_stop(text: str, stop: Sequence[str] | None) -> tuple[str, str | None]:
    if not stop:
        return text, None
    cut = min((text.index(s) + len(s) for s in stop if s in text), default=None)
    return (text, None) if cut is None else (text[:cut], "stop")


class ScriptedPolicy:
    """A scripted policy: either a list of responses returned in order, or a function
    ``fn(messages) -> str``. Stop strings cut the text *after* the stop string (the stop string
    is kept, as the GAP / AgentFold runtimes need the closing tag).

    Attributes:
        calls: number of completed calls.
        history: the message lists it was called with.
    """

    def __init__(self, responses: Sequence[str] | Callable[[Sequence[Message]], str]):
        if callable(responses):
            self._fn, self._responses = responses, None
        else:
            if isinstance(responses, str) or not all(isinstance(r, str) for r in responses):
                raise TypeError("responses must be a list of strings or a callable")
            self._fn, self._responses = None, list(responses)
        self.calls = 0
        self.history: list[list[Message]] = []

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        validate_messages(messages)
        self.history.append(list(messages))
        if self._fn is not None:
            text = self._fn(messages)
        else:
            if self.calls >= len(self._responses):
                raise LLMError(f"ScriptedPolicy ran out of responses after {self.calls} calls")
            text = self._responses[self.calls]
        self.calls += 1
        text, reason = _apply_stop(text, stop)
        return Completion(text, finish_reason=reason or "stop")


class OpenAICompatibleClient:
    """:class:`LLMClient` over an OpenAI-compatible HTTP endpoint (vLLM, SGLang, hosted APIs).

    The transport is :class:`jaxstack.inference.client.CompletionsClient`: its retry rule (429, 5xx and
    connection errors, at most ``max_retries`` more attempts, ``backoff * 2**attempt`` seconds apart) and
    its one error type, :class:`~jaxstack.inference.client.ServerError` (also for a malformed answer).

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000/v1"``.
        model: model name sent in the request.
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds per request.
        max_retries: extra attempts after a 429 / 5xx / connection error (bounded).
        backoff: first retry delay in seconds, doubled each retry.
        raw: use ``/completions`` with :func:`~jaxstack.data.chat.render_chat` text (ChatML and the
            generation prompt) instead of ``/chat/completions``.
        extra_body: merged into every request body (e.g. ``{"presence_penalty": 1.1}``).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 2, backoff: float = 0.5, raw: bool = False, extra_body: dict | None = None):
        from jaxstack.inference.client import CompletionsClient  # the inference package imports jax

        if not model:
            raise ValueError("model must be a non-empty string")
        self.transport = CompletionsClient(base_url, model=model, api_key=api_key, timeout=timeout,
                                           max_retries=max_retries, backoff=backoff)
        self.base_url, self.model, self.raw = self.transport.base_url, model, raw
        self.extra_body = dict(extra_body or {})

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        from jaxstack.inference.client import ServerError

        validate_messages(messages)
        body: dict = dict(self.extra_body)
        if stop:
            body["stop"] = list(stop)
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if temperature is not None:
            body["temperature"] = float(temperature)
        t0 = time.perf_counter()
        if self.raw:
            out = self.transport.completions(render_chat(messages, add_generation_prompt=True), **body)
        else:
            out = self.transport.chat(list(messages), **body)
        try:
            choice = out["choices"][0]
            text = choice["text"] if self.raw else choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"malformed completion response (no choices[0] text): {str(out)[:200]}") from None
        if not isinstance(text, str):
            raise ServerError(f"completion text is not a string: {text!r}")
        usage = out.get("usage") or {}
        # Servers drop the stop string; restore it so tag parsers see the closing tag.
        reason = choice.get("finish_reason")
        if stop and reason == "stop" and isinstance(choice.get("stop_reason"), str):
            text += choice["stop_reason"]
        return Completion(text, usage.get("prompt_tokens"), usage.get("completion_tokens"), reason,
                          time.perf_counter() - t0)


class JaxstackModelClient:
    """A local jaxstack model behind the KV-cache sampler (:func:`jaxstack.inference.generate`).

    ``complete(messages)``: ``render_chat`` (ChatML with the assistant generation prompt) ->
    token ids -> ``generate`` (greedy at temperature 0) -> decode. Generation ends at a stop
    *token* (``<|im_end|>`` and ``<|endoftext|>`` when the vocabulary has them, plus
    ``stop_token_ids``) or after ``max_tokens``; the stop token itself is not part of the text
    (as with OpenAI-compatible servers). Stop *strings* are applied afterwards by truncation
    after the first occurrence (the string is kept, like :class:`ScriptedPolicy`): the sampler
    cannot stop on a string, so the tokens after it are computed and discarded.

    Token counts: ``prompt_tokens`` is the prompt as fed to the model (after ``max_prompt_tokens``
    left truncation); ``completion_tokens`` counts the tokens of the returned text -- the stop
    token included when generation stopped on one, and only the tokens needed to cover the text
    when a stop string cut it. ``finish_reason`` is ``"stop"`` (stop token or stop string) or
    ``"length"``.

    Args:
        model: a ``LlamaForCausalLM``, or a local Hugging Face model directory (``load_pretrained``).
        tokenizer: a :class:`jaxstack.data.tokenizer.Tokenizer`, a ``tokenizers.Tokenizer``, or a
            path to a ``tokenizer.json`` (or a directory holding one).
        max_new_tokens: default generation budget (``complete(max_tokens=...)`` overrides it).
        temperature, top_k, top_p: sampling settings (temperature 0 = greedy).
        seed: base seed; call ``i`` samples with ``seed + i`` so repeated calls differ at T > 0.
        max_prompt_tokens: keep only the last this many prompt tokens (None = keep all).
        stop_token_ids: extra token ids that end a generation.
    """

    def __init__(self, model=None, tokenizer=None, *, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 max_prompt_tokens: int | None = None, stop_token_ids: Sequence[int] = ()):
        if model is None or tokenizer is None:
            raise ValueError("JaxstackModelClient needs a model (LlamaForCausalLM or HF directory) and a tokenizer")
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from jaxstack.models.checkpoint import load_pretrained

            model = load_pretrained(model)
        if not hasattr(model, "config") or not hasattr(model.config, "vocab_size"):
            raise TypeError(f"model must be a jaxstack LlamaForCausalLM or a model directory, got {type(model).__name__}")
        self.model = model
        self.tokenizer = _as_tokenizer(tokenizer)
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        if max_prompt_tokens is not None and max_prompt_tokens <= 0:
            raise ValueError(f"max_prompt_tokens must be a positive integer or None, got {max_prompt_tokens}")
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.top_k, self.top_p, self.seed = top_k, top_p, seed
        self.max_prompt_tokens = max_prompt_tokens
        vocab = self.model.config.vocab_size
        backend = self.tokenizer.backend
        stops = {backend.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None}
        stops |= {int(t) for t in stop_token_ids}
        bad = sorted(t for t in stops if not 0 <= t < vocab)
        if bad:
            raise ValueError(f"stop token ids {bad} are outside the model's vocabulary [0, {vocab})")
        if self.tokenizer.vocab_size > vocab:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens but the model's vocab_size is {vocab}")
        self.stop_token_ids = tuple(sorted(stops))
        self.calls = 0

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The prompt token ids of ``messages`` (ChatML + generation prompt, left-truncated)."""
        ids = self.tokenizer.encode(render_chat(messages, add_generation_prompt=True))
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            ids = ids[-self.max_prompt_tokens:]
        return ids

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        return self.complete_batch([messages], stop=stop, max_tokens=max_tokens, temperature=temperature)[0]

    def complete_batch(self, conversations: Sequence[Sequence[Message]], *, stop: Sequence[str] | None = None,
                       max_tokens: int | None = None, temperature: float | None = None) -> list[Completion]:
        """:meth:`complete` for several conversations in one batched ``generate`` call (one compile
        per distinct (batch, longest prompt, max_tokens) shape)."""
        from jaxstack.inference import SamplingConfig, generate

        if not isinstance(conversations, (list, tuple)) or not conversations:
            raise ValueError("conversations must be a non-empty list of message lists")
        prompts = [self.encode_prompt(messages) for messages in conversations]  # validates messages
        budget = self.max_new_tokens if max_tokens is None else int(max_tokens)
        if budget <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
        config = SamplingConfig(max_new_tokens=budget,
                                temperature=self.temperature if temperature is None else float(temperature),
                                top_k=self.top_k, top_p=self.top_p, stop_tokens=self.stop_token_ids)
        t0 = time.perf_counter()
        result = generate(self.model, prompts, config, seed=self.seed + self.calls)
        self.calls += 1
        tokens = [row.tolist() for row in _host(result.tokens)]
        lengths = _host(result.lengths).tolist()
        latency = (time.perf_counter() - t0) / len(prompts)
        out = []
        for prompt, row, n in zip(prompts, tokens, lengths):
            generated = row[:n]
            stopped = bool(generated) and generated[-1] in self.stop_token_ids
            content = generated[:-1] if stopped else generated
            text = self.tokenizer.decode(content)
            cut, reason = _apply_stop(text, stop)
            used = len(generated)
            if reason == "stop" and cut != text:
                used = _tokens_covering(self.tokenizer, content, len(cut))
            elif stopped:
                reason = "stop"
            out.append(Completion(cut, len(prompt), used, reason or "length", latency))
        return out


def _host(array):
    import numpy as np

    return np.asarray(array)


def _tokens_covering(tokenizer, ids: Sequence[int], n_chars: int) -> int:
    """The fewest leading tokens of ``ids`` whose decoded text has at least ``n_chars`` characters."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid])) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _as_tokenizer(tokenizer):
    """A :class:`jaxstack.data.tokenizer.Tokenizer` from a wrapper, a ``tokenizers.Tokenizer`` or a path."""
    from jaxstack.data.tokenizer import Tokenizer, load_tokenizer

    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        return load_tokenizer(tokenizer)
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "token_to_id"):
        return Tokenizer(tokenizer)
    raise TypeError(f"tokenizer must be a jaxstack Tokenizer, a tokenizers.Tokenizer or a path, "
                    f"got {type(tokenizer).__name__}")
