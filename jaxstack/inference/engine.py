"""A continuous-batching decode engine for one model (the scheduler behind ``jaxstack serve``).

Read top to bottom: the request and its settings, the two jitted programs (prefill one prompt into a
slot; one decode step over every slot), the engine (admission, the scheduling loop, warm-up).

Slots. The engine owns one decode cache of ``slots`` rows, each ``max_length`` tokens long (the
model family's own cache: KVCache, or KimiCache with its KDA recurrent and short-conv states and MLA
latents per row). Its size is fixed at start and logged (``cache_bytes``); for the Llama family it is
``slots x max_length x layers x kv_heads x head_dim x 2 (k, v) x dtype bytes``. A request holds one
slot from its prefill until it finishes; requests join and leave the running batch between two
decode steps, so a short request never waits for a long one.

Compiled shapes. Every program's shapes are fixed: prefill runs one prompt padded to one of a few
bucket widths (powers of two from 16 up to ``max_length``), the decode step runs all ``slots`` rows.
A Kimi Linear prompt cannot be padded (its recurrent state would absorb the pad tokens), so it is fed
exactly, as a sum of power-of-two chunks that continue the row's state. Per-row sampling settings
(temperature, top-k, top-p, the request's seed, stop ids padded to ``max_stop_ids``, max tokens) are
traced arrays, so mixed requests share one compiled step. ``start()`` compiles every program
(warm-up, logged); after it serving compiles nothing (``compiles_after_warmup`` counts XLA compiles
on the engine thread, for tests and the load benchmark).

Failure isolation. Settings are checked at admission (``submit`` raises ``ValueError`` naming the
field); a request whose own host-side handling fails (its listener raises) is failed alone and its
slot freed; ``cancel()`` frees a slot at the next step. The queue is bounded: ``submit`` raises
:class:`QueueFull` when it is full (the HTTP layer answers 429).

Randomness. A request's draws depend only on its seed and its own logits: step ``n`` of a request
with seed ``s`` samples with ``fold_in(fold_in(key(s_hi), s_lo), n)``, whatever its batch-mates.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxstack.inference.sampler import RowSampling, init_decode_cache, prefill_pads, select_tokens

logger = logging.getLogger(__name__)

SEED_RANGE = (-(2**63), 2**64)  # any signed or unsigned 64-bit seed
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class QueueFull(RuntimeError):
    """The engine's queue holds ``max_queue`` waiting requests already; retry later (HTTP 429)."""


class EngineStopped(RuntimeError):
    """The engine is not running (not started, or shut down)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """One request's settings. temperature 0 = greedy; top_k 0 and top_p 1 = off; seed None = a random
    seed; stop_ids: token ids that end the request (the stop token is emitted and counted)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()


@dataclasses.dataclass
class TokenEvent:
    """One generated token: its id, log-prob under the raw model and the top alternatives
    (``top_ids`` / ``top_logprobs``, ``top_logprobs`` of the engine, best first)."""

    token: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


class Request:
    """A submitted request. ``tokens`` / ``events`` grow as it decodes; ``finish_reason`` is set when it
    ends: ``"stop"`` (a stop id), ``"length"`` (max_tokens), ``"cancelled"`` or ``"error"`` (``error``
    holds the exception). ``wait()`` blocks until then."""

    def __init__(self, request_id: int, prompt: list[int], params: SamplingParams, seed: int,
                 listener: Callable[[Request, TokenEvent | None], None] | None):
        self.id, self.prompt, self.params, self.seed = request_id, prompt, params, seed
        self.listener = listener
        self.events: list[TokenEvent] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self._cancelled = threading.Event()
        self._done = threading.Event()

    @property
    def tokens(self) -> list[int]:
        return [event.token for event in self.events]

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stops the request at the next decode step (or before its prefill) and frees its slot."""
        self._cancelled.set()

    def wait(self, timeout: float | None = None) -> Request:
        """Blocks until the request ends; raises TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id}: not finished after {timeout} s")
        return self

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        self.finish_reason, self.error = reason, error
        self._done.set()
        if self.listener is not None:
            try:
                self.listener(self, None)
            except Exception:  # noqa: BLE001 - the request has ended; its listener cannot fail it further
                logger.exception("request %d: listener failed on finish", self.id)


# ----------------------------------------------------------------------------------------------------
# The jitted programs (pure functions of the model state, the cache and per-row arrays)


@struct.dataclass
class SlotRows:
    """Per-slot settings, traced. active: [S] bool; temperature / top_p: [S] float32; top_k: [S] int32;
    seeds: [S, 2] uint32 (high, low words); counts: [S] int32 tokens generated so far; stop_ids:
    [S, max_stop_ids] int32 padded with -1; max_tokens: [S] int32."""

    active: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array
    seeds: jax.Array
    counts: jax.Array
    stop_ids: jax.Array
    max_tokens: jax.Array


def _batch_axis(leaf: jax.Array) -> int:
    """Both decode caches keep ``lengths`` as [B] and every other stacked field as [layers, B, ...]."""
    return 0 if leaf.ndim == 1 else 1


def _batch_axes(cache):
    """The batch axis of each leaf of ``cache``: the cache's own ``batch_axes()`` where it has one
    (a Llama KVCache of per-layer [B, ...] arrays), else :func:`_batch_axis`."""
    if hasattr(cache, "batch_axes"):
        return cache.batch_axes()
    return jax.tree.map(_batch_axis, cache)


def _describe(name: str, value) -> str:
    """``name[shape] dtype`` of a cache field; a tuple of per-layer arrays as ``name L x [shape] dtype``."""
    if isinstance(value, (tuple, list)):
        return f"{name} {len(value)} x {list(value[0].shape)} {value[0].dtype}"
    return f"{name}{list(value.shape)} {value.dtype}"


def _row_keys(seeds: jax.Array, counts: jax.Array) -> jax.Array:
    """keys [S]: step ``counts[s]`` of the stream seeded by ``seeds[s]`` (high, low uint32 words)."""

    def key(seed, count):
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed[0]), seed[1]), count)

    return jax.vmap(key)(seeds, counts)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache", "logits"))
def _prefill(graphdef, state, cache, logits, slot, tokens, start, valid):
    """Feeds tokens [1, W] (the first ``valid`` real) into row ``slot`` after its first ``start`` tokens.

    start == 0 begins the row afresh (its state is zeroed). logits: [S, V] float32, the next-token
    logits of every slot; row ``slot`` gets those after the last real token. Returns (cache, logits).
    """
    model = nnx.merge(graphdef, state)
    axes = _batch_axes(cache)
    row = jax.tree.map(lambda a, axis: jax.lax.dynamic_slice_in_dim(a, slot, 1, axis=axis), cache, axes)
    row = jax.tree.map(lambda a: jnp.where(start == 0, jnp.zeros_like(a), a), row)
    out = model(tokens, cache=row.replace(lengths=jnp.full((1,), start, jnp.int32)))
    new_row = out.cache.replace(lengths=jnp.full((1,), start + valid, jnp.int32))
    cache = jax.tree.map(
        lambda a, r, axis: jax.lax.dynamic_update_slice_in_dim(a, r.astype(a.dtype), slot, axis=axis),
        cache, new_row, axes)
    last = jax.lax.dynamic_index_in_dim(out.logits[0], valid - 1, axis=0, keepdims=False)
    return cache, logits.at[slot].set(last.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("graphdef", "top_logprobs"), donate_argnames=("cache", "logits"))
def _decode_step(graphdef, state, cache, logits, rows: SlotRows, *, top_logprobs: int):
    """Samples one token per slot from ``logits`` [S, V] and feeds it to the model.

    Returns (cache, next logits [S, V], (token [S], log-prob [S], top log-probs [S, k], top ids
    [S, k], done [S] bool: the token is a stop id or the request's last)). Inactive rows compute too
    (fixed shapes); their length is held at 0, and a prefill resets the row before it is used.
    """
    model = nnx.merge(graphdef, state)
    sampling = RowSampling(temperature=rows.temperature, top_k=rows.top_k, top_p=rows.top_p)
    token, logprob, _ = select_tokens(logits, _row_keys(rows.seeds, rows.counts), sampling)
    top_values, top_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_logprobs)
    done = jnp.any(token[:, None] == rows.stop_ids, axis=-1) | (rows.counts + 1 >= rows.max_tokens)
    out = model(token[:, None], cache=cache)
    new_cache = out.cache.replace(lengths=jnp.where(rows.active, out.cache.lengths, 0))
    return new_cache, out.logits[:, -1].astype(jnp.float32), (token, logprob, top_values, top_ids, done)


def prefill_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded prompt widths: powers of two from ``smallest``, and ``max_length`` itself."""
    widths, width = [], smallest
    while width < max_length:
        widths.append(width)
        width *= 2
    return tuple(widths) + (max_length,)


def exact_chunks(length: int, max_length: int) -> list[int]:
    """``length`` as power-of-two chunks, largest first (at most ``max_length`` each): no padding."""
    largest = 1 << (max_length.bit_length() - 1)
    chunks = []
    while length:
        size = min(largest, 1 << (length.bit_length() - 1))
        chunks.append(size)
        length -= size
    return chunks


# ----------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Continuous batching over ``slots`` cache rows for one model (see the module docstring).

    Args:
        model: a jaxstack model (Llama family or Kimi Linear).
        slots: rows decoded together; with ``max_length`` it fixes the cache budget.
        max_length: tokens per slot, prompt + generated (default: the model's context).
        max_queue: requests waiting for a slot before ``submit`` raises QueueFull.
        max_stop_ids: stop ids per request (the traced array's width).
        top_logprobs: alternatives reported per generated token.
        cache_dtype: dtype of the cache (default: the policy's compute dtype).
    """

    def __init__(self, model, *, slots: int = 8, max_length: int | None = None, max_queue: int = 256,
                 max_stop_ids: int = 8, top_logprobs: int = 5, cache_dtype=None, name: str = "engine"):
        for field, value in (("slots", slots), ("max_queue", max_queue), ("max_stop_ids", max_stop_ids),
                             ("top_logprobs", top_logprobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field}: expected a positive integer, got {value!r}")
        config = model.config
        self.max_length = int(max_length or config.max_position_embeddings)
        if not 2 <= self.max_length <= config.max_position_embeddings:
            raise ValueError(f"max_length: expected 2..{config.max_position_embeddings} (the model's context), "
                             f"got {self.max_length}")
        self.model, self.name, self.slots = model, name, slots
        self.vocab_size = config.vocab_size
        self.max_stop_ids, self.top_logprobs = max_stop_ids, min(top_logprobs, config.vocab_size)
        self.pads = prefill_pads(model)
        self.buckets = (prefill_buckets(self.max_length, min(16, self.max_length)) if self.pads
                        else tuple(1 << i for i in range(self.max_length.bit_length())))
        self.graphdef, self.state = nnx.split(model)
        self.cache_dtype = jnp.dtype(cache_dtype or model.policy.compute_dtype)
        self.cache = init_decode_cache(model, slots, self.max_length, self.cache_dtype)
        self.cache_bytes = int(sum(leaf.nbytes for leaf in jax.tree.leaves(self.cache)))
        self.logits = jnp.zeros((slots, config.vocab_size), jnp.float32)
        self._rows = {
            "active": np.zeros((slots,), bool), "temperature": np.zeros((slots,), np.float32),
            "top_p": np.ones((slots,), np.float32), "top_k": np.zeros((slots,), np.int32),
            "seeds": np.zeros((slots, 2), np.uint32), "counts": np.zeros((slots,), np.int32),
            "stop_ids": np.full((slots, max_stop_ids), -1, np.int32), "max_tokens": np.ones((slots,), np.int32),
        }
        self._slot_requests: list[Request | None] = [None] * slots
        self._queue: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._listening = False
        self._stopping = threading.Event()
        self._compiles = 0  # XLA compiles on the engine thread after warm-up
        self._warm = False
        self.steps = 0  # decode steps run
        self.peak_active = 0  # most requests decoded together in one step
        self.prefills = 0  # prefill programs run
        self.warmup_seconds: float | None = None
        self.failure: BaseException | None = None  # an error that stopped the loop itself
        fields = ", ".join(_describe(k, v) for k, v in self._cache_fields().items())
        logger.info("%s: %d slots x %d tokens, decode cache %.1f MiB (%s)", name, slots, self.max_length,
                    self.cache_bytes / 2**20, fields)

    def _cache_fields(self) -> dict[str, jax.Array]:
        """Each cache field as one array: KimiCache keeps a tuple of per-layer buffers per field, reported
        as their stacked shape (an abstract value: nothing is concatenated)."""
        def as_array(value):
            if isinstance(value, tuple):
                shape = (sum(b.shape[0] for b in value),) + tuple(value[0].shape[1:])
                return jax.ShapeDtypeStruct(shape, value[0].dtype)
            return value

        return {f.name: as_array(getattr(self.cache, f.name)) for f in dataclasses.fields(self.cache)}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Compiles every program (warm-up, logged) and starts the scheduling thread."""
        if self._thread is not None:
            return self
        jax.monitoring.register_event_duration_secs_listener(self._count_compile)
        self._listening = True
        began = time.perf_counter()
        for width in self.buckets:
            self.cache, self.logits = _prefill(self.graphdef, self.state, self.cache, self.logits, np.int32(0),
                                               np.zeros((1, width), np.int32), np.int32(0), np.int32(width))
        self.cache, self.logits, outputs = _decode_step(self.graphdef, self.state, self.cache, self.logits,
                                                        self._slot_rows(), top_logprobs=self.top_logprobs)
        jax.block_until_ready(outputs)
        self.warmup_seconds = time.perf_counter() - began
        logger.info("%s: warm-up compiled %d prefill widths %s and the %d-slot decode step in %.1f s", self.name,
                    len(self.buckets), list(self.buckets), self.slots, self.warmup_seconds)
        self._thread = threading.Thread(target=self._loop, name=f"jaxstack-engine-{self.name}", daemon=True)
        self._warm = True
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stops the loop; requests still queued or running finish as ``"cancelled"``."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._listening:
            self._listening = False
            try:
                jax.monitoring.unregister_event_duration_listener(self._count_compile)
            except (AssertionError, ValueError):  # already gone (e.g. jax.monitoring.clear_event_listeners())
                pass

    @property
    def compiles_after_warmup(self) -> int:
        return self._compiles

    def _count_compile(self, event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT and self._warm and threading.current_thread() is self._thread:
            self._compiles += 1

    def stats(self) -> dict:
        return {"slots": self.slots, "active": int(self._rows["active"].sum()), "queued": self._queue.qsize(),
                "max_length": self.max_length, "cache_bytes": self.cache_bytes, "steps": self.steps,
                "peak_active": self.peak_active,
                "prefills": self.prefills, "compiles_after_warmup": self._compiles,
                "warmup_seconds": self.warmup_seconds}

    # -- admission ------------------------------------------------------------------------------

    def check(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """Raises ValueError naming the field when the request cannot be served."""
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError("prompt: expected a non-empty list of token ids")
        if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.vocab_size
               for t in prompt):
            raise ValueError(f"prompt: token ids must be integers in [0, {self.vocab_size})")
        _integer_in("max_tokens", params.max_tokens, 1, self.max_length)
        if len(prompt) + params.max_tokens > self.max_length:
            raise ValueError(f"max_tokens: {len(prompt)} prompt tokens + max_tokens {params.max_tokens} exceed "
                             f"the context of {self.max_length} tokens")
        _finite_in("temperature", params.temperature, 0.0, None)
        _finite_in("top_p", params.top_p, 0.0, 1.0, open_low=True)
        _integer_in("top_k", params.top_k, 0, None)
        if params.seed is not None:
            _integer_in("seed", params.seed, SEED_RANGE[0], SEED_RANGE[1] - 1)
        if not isinstance(params.stop_ids, tuple) or len(params.stop_ids) > self.max_stop_ids:
            raise ValueError(f"stop_ids: expected a tuple of at most {self.max_stop_ids} token ids")
        for token in params.stop_ids:
            _integer_in("stop_ids", token, 0, self.vocab_size - 1)

    def submit(self, prompt: Sequence[int], params: SamplingParams,
               listener: Callable[[Request, TokenEvent | None], None] | None = None) -> Request:
        """Queues a request; raises ValueError (bad settings), QueueFull or EngineStopped.

        listener(request, event) is called on the engine thread after every token (event) and once when
        the request ends (None); if it raises while decoding, this request alone fails.
        """
        if self._thread is None or self._stopping.is_set() or not self._thread.is_alive():
            raise EngineStopped(f"{self.name}: the engine is not running")
        self.check(prompt, params)
        seed = secrets.randbits(64) if params.seed is None else params.seed % 2**64
        request = Request(next(self._ids), [int(t) for t in prompt], params, seed, listener)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self.name}: {self._queue.maxsize} requests are waiting already; retry later") from None
        return request

    def generate(self, prompt: Sequence[int], params: SamplingParams, timeout: float | None = None) -> Request:
        """submit + wait."""
        return self.submit(prompt, params).wait(timeout)

    # -- the scheduling loop --------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._admit(block=not self._rows["active"].any())
                if self._rows["active"].any():
                    self._step()
        except BaseException as error:  # noqa: BLE001 - the loop itself broke: fail everyone, say why
            self.failure = error
            logger.exception("%s: the scheduling loop failed", self.name)
        finally:
            self._stopping.set()
            for slot, request in enumerate(self._slot_requests):
                if request is not None:
                    self._free(slot, "cancelled" if self.failure is None else "error", self.failure)
            while True:
                try:
                    self._queue.get_nowait()._finish("cancelled")
                except queue.Empty:
                    break

    def _admit(self, *, block: bool) -> None:
        """Moves queued requests into free slots (prefilling each); waits briefly when idle."""
        while not self._rows["active"].all():
            try:
                request = self._queue.get(timeout=0.05) if block else self._queue.get_nowait()
            except queue.Empty:
                return
            block = False
            if request._cancelled.is_set():
                request._finish("cancelled")
                continue
            slot = int(np.flatnonzero(~self._rows["active"])[0])
            self._prefill_slot(slot, request)

    def _prefill_slot(self, slot: int, request: Request) -> None:
        prompt, params = request.prompt, request.params
        start = 0
        for width, valid in self._plan(len(prompt)):
            tokens = np.zeros((1, width), np.int32)
            tokens[0, :valid] = prompt[start:start + valid]
            self.cache, self.logits = _prefill(self.graphdef, self.state, self.cache, self.logits, np.int32(slot),
                                               tokens, np.int32(start), np.int32(valid))
            self.prefills += 1
            start += valid
        rows = self._rows
        rows["active"][slot] = True
        rows["temperature"][slot] = params.temperature
        rows["top_p"][slot] = params.top_p
        rows["top_k"][slot] = params.top_k
        rows["seeds"][slot] = (request.seed >> 32, request.seed & 0xFFFFFFFF)
        rows["counts"][slot] = 0
        rows["stop_ids"][slot] = -1
        rows["stop_ids"][slot, :len(params.stop_ids)] = params.stop_ids
        rows["max_tokens"][slot] = params.max_tokens
        self._slot_requests[slot] = request

    def _plan(self, length: int) -> list[tuple[int, int]]:
        """(width, real tokens) per prefill call: one padded bucket, or exact chunks (module docstring)."""
        if self.pads:
            return [(next(b for b in self.buckets if b >= length), length)]
        return [(size, size) for size in exact_chunks(length, self.max_length)]

    def _slot_rows(self) -> SlotRows:
        return SlotRows(**{name: jnp.asarray(value) for name, value in self._rows.items()})

    def _step(self) -> None:
        self.cache, self.logits, outputs = _decode_step(self.graphdef, self.state, self.cache, self.logits,
                                                        self._slot_rows(), top_logprobs=self.top_logprobs)
        tokens, logprobs, top_values, top_ids, done = jax.device_get(outputs)
        self.steps += 1
        self.peak_active = max(self.peak_active, int(self._rows["active"].sum()))
        for slot in np.flatnonzero(self._rows["active"]):
            request = self._slot_requests[slot]
            try:
                event = TokenEvent(int(tokens[slot]), float(logprobs[slot]), top_ids[slot].tolist(),
                                   top_values[slot].tolist())
                request.events.append(event)
                self._rows["counts"][slot] += 1
                if request.listener is not None:
                    request.listener(request, event)
            except Exception as error:  # noqa: BLE001 - this request's own handling failed: fail it alone
                logger.warning("%s: request %d failed in its post-processing: %r", self.name, request.id, error)
                self._free(slot, "error", error)
                continue
            if request._cancelled.is_set():
                self._free(slot, "cancelled")
            elif done[slot]:
                self._free(slot, "stop" if event.token in request.params.stop_ids else "length")

    def _free(self, slot: int, reason: str, error: BaseException | None = None) -> None:
        request = self._slot_requests[slot]
        self._slot_requests[slot] = None
        self._rows["active"][slot] = False
        request._finish(reason, error)


def _integer_in(field: str, value, low: int | None, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{field}: expected an integer in {bounds}, got {value!r}")


def _finite_in(field: str, value, low: float, high: float | None, *, open_low: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) and np.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'(' if open_low else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"{field}: expected a finite number in {bounds}, got {value!r}")


__all__ = ["Engine", "EngineStopped", "QueueFull", "Request", "SamplingParams", "TokenEvent", "exact_chunks",
           "prefill_buckets"]
