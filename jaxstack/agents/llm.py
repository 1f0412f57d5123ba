"""LLM clients: one interface for "a policy that maps a prompt to text".

* :class:`LLMClient` - the protocol: ``complete(messages, *, stop, max_tokens, temperature)``
  returning a :class:`Completion`.
* :class:`ScriptedPolicy` - replays fixed responses or calls a Python function (the oracle
  policies of the experiments are built on it).
* :class:`OpenAICompatibleClient` - ``POST {base_url}/chat/completions`` (or
  ``/completions`` with ``raw=True``) with the standard library only, bounded retries with
  backoff on 429/5xx and connection errors, clear errors otherwise. Works with vLLM's or any
  hosted OpenAI-compatible server.
* :class:`JaxstackModelClient` - a local jaxstack model through the KV-cache sampler
  (ChatML rendering, batched generation, stop tokens and stop strings, token counts).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Message",
    "Completion",
    "LLMClient",
    "LLMError",
    "ScriptedPolicy",
    "OpenAICompatibleClient",
    "JaxstackModelClient",
    "render_chat",
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
    """A backend failed in a way retrying did not fix (HTTP status, malformed body, ...)."""


@runtime_checkable
class LLMClient(Protocol):
    """A policy mapping a chat prompt to text."""

    def complete(self, messages: Sequence[Message], *, stop: Sequence[str] | None = None,
                 max_tokens: int | None = None, temperature: float | None = None) -> Completion:  # pragma: no cover
        ...


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"messages[{i}]['role'] must be system/user/assistant/tool, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]['content'] must be a str")


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """Qwen-style ChatML text (``<|im_start|>role\\ncontent<|im_end|>\\n`` ...), the template
    the public AgentFold code applies before calling a raw completions endpoint."""
    _check_messages(messages)
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


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
        _check_messages(messages)
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
    """Client for an OpenAI-compatible HTTP endpoint (vLLM, SGLang, hosted APIs).

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000/v1"``.
        model: model name sent in the request.
        api_key: sent as ``Authorization: Bearer ...`` when given.
        timeout: seconds per request.
        max_retries: extra attempts after a 429 / 5xx / connection error (bounded).
        backoff: first retry delay in seconds, doubled each retry.
        raw: use ``/completions`` with :func:`render_chat` text instead of ``/chat/completions``.
        extra_body: merged into every request body (e.g. ``{"presence_penalty": 1.1}``).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 2, backoff: float = 0.5, raw: bool = False, extra_body: dict | None = None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be a non-empty string")
        if max_retries < 0 or timeout <= 0:
            raise ValueError(f"max_retries must be >= 0 and timeout > 0, got {max_retries}, {timeout}")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff, self.raw = max_retries, backoff, raw
        self.extra_body = dict(extra_body or {})

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError:
                    raise LLMError(f"{path}: response is not JSON: {payload[:200]!r}") from None
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code == 429 or e.code >= 500:
                    last = LLMError(f"{path}: HTTP {e.code}: {detail}")
                else:
                    raise LLMError(f"{path}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = LLMError(f"{path}: cannot reach {self.base_url}: {e}")
            if attempt < self.max_retries:
                time.sleep(self.backoff * 2**attempt)
        raise LLMError(f"{last} (after {self.max_retries + 1} attempts)")

    def complete(self, messages, *, stop=None, max_tokens=None, temperature=None) -> Completion:
        _check_messages(messages)
        body: dict = {"model": self.model, **self.extra_body}
        if stop:
            body["stop"] = list(stop)
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if temperature is not None:
            body["temperature"] = float(temperature)
        t0 = time.perf_counter()
        if self.raw:
            body["prompt"] = render_chat(messages)
            out = self._post("/completions", body)
        else:
            body["messages"] = list(messages)
            out = self._post("/chat/completions", body)
        try:
            choice = out["choices"][0]
            text = choice["text"] if self.raw else choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"malformed completion response (no choices[0] text): {str(out)[:200]}") from None
        if not isinstance(text, str):
            raise LLMError(f"completion text is not a string: {text!r}")
        usage = out.get("usage") or {}
        # Servers drop the stop string; restore it so tag parsers see the closing tag.
        reason = choice.get("finish_reason")
        if stop and reason == "stop" and isinstance(choice.get("stop_reason"), str):
            text += choice["stop_reason"]
        return Completion(text, usage.get("prompt_tokens"), usage.get("completion_tokens"), reason,
                          time.perf_counter() - t0)


class JaxstackModelClient:
    """A local jaxstack model behind the KV-cache sampler (:func:`jaxstack.inference.generate`).

    ``complete(messages)``: :func:`render_chat` (ChatML with the assistant generation prompt) ->
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
            from jaxstack.models.hf import load_pretrained

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
        ids = self.tokenizer.encode(render_chat(messages))
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
