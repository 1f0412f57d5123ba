"""The continuous-batching engine: each request's greedy tokens equal ``generate`` on its prompt alone
(whenever it arrives and whoever shares its steps), seeded sampling is reproducible per request, mixed
settings compile nothing after warm-up, a bad or failing request fails alone, the queue is bounded
and cancellation frees a slot."""

import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference.engine import Engine, QueueFull, SamplingParams, exact_chunks, prefill_buckets
from jaxstack.inference.sampler import SamplingConfig, generate
from jaxstack.models import LlamaForCausalLM, get_config

MAX_NEW = 12


@pytest.fixture(scope="module")
def model():
    config = get_config("llama-test", max_position_embeddings=64, initializer_range=0.1)
    return LlamaForCausalLM(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model, slots=3, max_queue=4).start()
    yield engine
    engine.shutdown()


def _prompts(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 250, size=int(rng.integers(1, 17))).tolist() for _ in range(count)]


def _alone(model, prompt, max_tokens):
    """Greedy tokens of ``generate`` on this prompt alone (padded to 16: one compile for all; padding
    does not change greedy tokens, tests/inference/test_server.py)."""
    out = generate(model, [prompt], SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.0), pad_length=16)
    return np.asarray(out.tokens[0]).tolist()[:max_tokens]


def _wait_steps(engine, n, timeout=60.0):
    target, deadline = engine.steps + n, time.monotonic() + timeout
    while engine.steps < target and time.monotonic() < deadline:
        time.sleep(0.002)


def test_buckets_and_exact_chunks():
    assert prefill_buckets(64) == (16, 32, 64) and prefill_buckets(100) == (16, 32, 64, 100)
    assert exact_chunks(13, 64) == [8, 4, 1] and exact_chunks(100, 64) == [64, 32, 4]
    assert all(sum(exact_chunks(n, 48)) == n and max(exact_chunks(n, 48)) <= 32 for n in range(1, 49))


def test_greedy_equals_generate_alone_for_requests_arriving_at_different_steps(engine, model):
    """Seven requests through three slots: some queue, later ones join mid-decode of earlier ones."""
    prompts = _prompts(7)
    max_tokens = [MAX_NEW, 3, 7, MAX_NEW, 1, 5, 9]
    requests = []
    for index, (prompt, n) in enumerate(zip(prompts, max_tokens)):
        requests.append(engine.submit(prompt, SamplingParams(max_tokens=n, temperature=0.0)))
        if index in (1, 3):
            _wait_steps(engine, 2)  # the next requests arrive while these decode
    for request, prompt, n in zip(requests, prompts, max_tokens):
        request.wait(120)
        assert request.finish_reason == "length" and request.error is None
        assert request.tokens == _alone(model, prompt, n), prompt
        assert len(request.events[0].top_ids) == 5 and request.events[0].top_logprobs[0] >= request.events[0].logprob


def test_stop_ids_end_a_request_with_reason_stop(engine, model):
    prompt = _prompts(1, seed=3)[0]
    greedy = _alone(model, prompt, MAX_NEW)
    stop = greedy[4]
    request = engine.generate(prompt, SamplingParams(max_tokens=MAX_NEW, temperature=0.0, stop_ids=(stop,)), 120)
    assert request.finish_reason == "stop" and request.tokens == greedy[: greedy.index(stop) + 1]


def test_seeded_sampling_is_reproducible_whatever_the_batch_mates(engine):
    prompt = [5, 17, 33, 2]
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=40, seed=2**63 + 11)
    alone = engine.generate(prompt, params, 120).tokens
    mates = [engine.submit(p, SamplingParams(max_tokens=8, temperature=t, seed=i))
             for i, (p, t) in enumerate(zip(_prompts(2, seed=5), (1.3, 0.0)))]
    _wait_steps(engine, 3)
    crowded = engine.generate(prompt, params, 120).tokens
    for mate in mates:
        mate.wait(120)
    other_seed = engine.generate(prompt, SamplingParams(**{**params.__dict__, "seed": 1}), 120).tokens
    assert crowded == alone and other_seed != alone


def test_no_compiles_after_warmup_under_sixteen_settings(engine):
    before = engine.compiles_after_warmup
    prompts = _prompts(16, seed=7)
    requests = [
        engine_submit_retrying(engine, prompt, SamplingParams(
            max_tokens=2 + i % 5, temperature=0.1 + 0.1 * i, top_p=1.0 - 0.03 * i, top_k=(0, 5, 50)[i % 3],
            seed=i, stop_ids=(7,) * (i % 3)))
        for i, prompt in enumerate(prompts)
    ]
    for request in requests:
        request.wait(120)
        assert request.finish_reason in ("length", "stop")
    assert engine.compiles_after_warmup == before == 0


def engine_submit_retrying(engine, prompt, params, timeout=60.0):
    """submit, waiting while the bounded queue is full (a client would retry on 429)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return engine.submit(prompt, params)
        except QueueFull:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.parametrize("field, params", [
    ("seed", SamplingParams(seed=2**64)),
    ("temperature", SamplingParams(temperature=float("nan"))),
    ("top_p", SamplingParams(top_p=0.0)),
    ("top_k", SamplingParams(top_k=-1)),
    ("max_tokens", SamplingParams(max_tokens=0)),
    ("max_tokens", SamplingParams(max_tokens=64)),
    ("stop_ids", SamplingParams(stop_ids=(10**6,))),
])
def test_bad_settings_are_refused_at_admission_naming_the_field(engine, field, params):
    with pytest.raises(ValueError, match=f"^{field}:"):
        engine.submit([1, 2, 3], params)


def test_a_request_failing_in_its_post_processing_fails_alone(engine, model):
    def poisoned(request, event):
        if event is not None and len(request.events) == 2:
            raise RuntimeError("poisoned listener")

    prompts = _prompts(3, seed=11)
    good = [engine.submit(p, SamplingParams(max_tokens=8, temperature=0.0)) for p in prompts[:2]]
    bad = engine.submit(prompts[2], SamplingParams(max_tokens=8, temperature=0.0), listener=poisoned)
    with pytest.raises(ValueError, match="seed"):
        engine.submit(prompts[2], SamplingParams(seed=2**64))
    bad.wait(120)
    assert bad.finish_reason == "error" and "poisoned" in str(bad.error) and len(bad.tokens) == 2
    for request, prompt in zip(good, prompts):
        assert request.wait(120).finish_reason == "length" and request.tokens == _alone(model, prompt, 8)


def test_bounded_queue_and_cancellation(engine, model):
    """A listener holds the engine thread on the first token, so the queue fills: QueueFull. Cancelling a
    running and a queued request frees them; the others are answered correctly."""
    release = threading.Event()

    def hold(request, event):
        if event is not None and len(request.events) == 1:
            release.wait(60)

    running = engine.submit([1, 2, 3], SamplingParams(max_tokens=40, temperature=0.0), listener=hold)
    while not running.events:
        time.sleep(0.002)
    queued = [engine.submit([4, 5, 6 + i], SamplingParams(max_tokens=3, temperature=0.0)) for i in range(4)]
    with pytest.raises(QueueFull, match="retry later"):
        engine.submit([7, 8], SamplingParams(max_tokens=3))
    running.cancel()
    queued[0].cancel()
    release.set()
    assert running.wait(60).finish_reason == "cancelled" and len(running.tokens) < 40
    assert queued[0].wait(60).finish_reason == "cancelled" and queued[0].tokens == []
    for request in queued[1:]:
        assert request.wait(60).tokens == _alone(model, request.prompt, 3)
    assert engine.stats()["active"] == 0


@pytest.mark.slow
def test_kimi_linear_slots_decode_like_generate_alone():
    """KDA recurrent + short-conv state and MLA latents per slot; prompts fed as exact chunks."""
    from jaxstack.models import KimiLinearForCausalLM, get_kimi_config

    config = get_kimi_config("kimi-linear-tiny", kda_backend="xla", kda_chunk_size=8, vocab_size=128,
                             initializer_range=0.2)
    kimi = KimiLinearForCausalLM(config, rngs=nnx.Rngs(0))
    engine = Engine(kimi, slots=2, max_length=24).start()
    try:
        assert engine.buckets == (1, 2, 4, 8, 16)
        prompts = [[1, 2, 3], list(range(5, 16)), [9] * 7]
        requests = [engine.submit(p, SamplingParams(max_tokens=5, temperature=0.0)) for p in prompts]
        for request, prompt in zip(requests, prompts):
            alone = generate(kimi, [prompt], SamplingConfig(max_new_tokens=5, temperature=0.0))
            assert request.wait(300).tokens == np.asarray(alone.tokens[0]).tolist()
        assert engine.compiles_after_warmup == 0
        assert engine._listening
    finally:
        engine.shutdown()
    # no listener left behind: shutdown() unregistered it, so a second unregistration is refused
    # (jax.monitoring has no public listener list in jax 0.10)
    assert not engine._listening
    with pytest.raises((AssertionError, ValueError)):
        jax.monitoring.unregister_event_duration_listener(engine._count_compile)
