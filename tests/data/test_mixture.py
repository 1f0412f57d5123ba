"""Stage schedules over Grain mixtures: token shares, exact resume, changed mixtures, two hosts."""

import json

import grain
import numpy as np
import pytest

from jaxstack.data import mixture as mx

# Three sources with very different document lengths (mean tokens per document). Every token of
# document i of source s has the value BASE[s] + i, so a token's source and document are recoverable
# from its value alone -- independently of the pipeline's own bookkeeping.
LENGTHS = {"long": 2000, "mid": 200, "short": 25}
COUNTS = {"long": 300, "mid": 2000, "short": 20000}
BASE = {"long": 100_000, "mid": 200_000, "short": 300_000}


@pytest.fixture(scope="module")
def documents():
    rng = np.random.default_rng(0)
    docs = {}
    for name, mean in LENGTHS.items():
        lengths = np.maximum(1, rng.exponential(mean, COUNTS[name]).astype(int))
        docs[name] = grain.MapDataset.source([np.full(n, BASE[name] + i, np.int32) for i, n in enumerate(lengths)])
    return docs


def _source_of(values: np.ndarray) -> np.ndarray:
    return np.where(values == 0, -1, values // 100_000 - 1)  # 0 = EOS (belongs to the row's source)


THREE_STAGES = mx.StageSchedule((
    mx.Stage("s1", 2**20, {"long": 90, "mid": 10}),
    mx.Stage("s2", 2**20, {"long": 75, "mid": 20, "short": 5}),
    mx.Stage("s3", 2**20, {"long": 20, "mid": 30, "short": 50}, lr_phase="decay"),
))


@pytest.mark.slow  # streams ~3M tokens (~19-31 s); the mixture's per-stage tests stay fast
def test_realised_token_shares_match_targets_within_one_percent(documents):
    staged = mx.StagedMixture(THREE_STAGES, documents, None, seq_len=1024, batch_size=8)
    bounds = THREE_STAGES.stage_steps(staged.tokens_per_step)
    iterator = iter(staged)
    names = ["long", "mid", "short"]
    for stage, (start, end) in zip(THREE_STAGES.stages, bounds):
        counts = np.zeros(3)
        for _ in range(start, end):
            # attribute every token by its value (EOS to its row's source); every row must hold tokens
            # of one source only -- that is what packing per source before mixing guarantees
            sources = _source_of(next(iterator)["tokens"])
            highest, lowest = sources.max(1), np.where(sources < 0, 99, sources).min(1)
            np.testing.assert_array_equal(highest, lowest)
            counts += np.bincount(highest, minlength=3) * sources.shape[1]
        assert counts.sum() >= 1_000_000
        realised = counts / counts.sum()
        for i, name in enumerate(names):
            target = stage.shares.get(name, 0.0)
            assert abs(realised[i] - target) <= 0.01, (stage.name, name, realised[i], target)
        # the pipeline's own accounting agrees with the token-level count
        own = iterator.realised_shares()[stage.name]
        for name, share in own.items():
            assert abs(share - realised[names.index(name)]) < 1e-9
    assert iterator.step == bounds[-1][1]


def _batches(iterator, n):
    return [next(iterator)["tokens"].copy() for _ in range(n)]


def test_restore_mid_stage_reproduces_the_next_50_batches_bit_for_bit(documents):
    schedule = mx.StageSchedule((mx.Stage("a", 40 * 8 * 64, {"long": 70, "mid": 20, "short": 10}),
                                 mx.Stage("b", 100 * 8 * 64, {"long": 20, "short": 80})))
    staged = mx.StagedMixture(schedule, documents, None, seq_len=64, batch_size=8, seed=3)
    reference = iter(staged)
    _batches(reference, 17)  # mid-stage "a"
    state = json.loads(json.dumps(reference.get_state()))  # what the Orbax/Grain handler writes
    expected = _batches(reference, 50)  # crosses into stage "b" at step 40
    restored = iter(mx.StagedMixture(schedule, documents, None, seq_len=64, batch_size=8, seed=3))
    restored.set_state(state)
    for want, got in zip(expected, _batches(restored, 50)):
        np.testing.assert_array_equal(want, got)
    assert restored.token_counts() == reference.token_counts()


def test_orbax_checkpoint_restores_the_staged_iterator(documents, tmp_path):
    import jax.numpy as jnp

    from jaxstack.train.checkpoint import Checkpointer

    staged = mx.StagedMixture(THREE_STAGES, documents, None, seq_len=255, batch_size=4)
    iterator = iter(staged)
    _batches(iterator, 5)
    checkpointer = Checkpointer(tmp_path / "ckpt", async_save=False)
    state = {"w": jnp.arange(3.0)}
    checkpointer.save(5, state, iterator, force=True)
    checkpointer.wait()
    expected = _batches(iterator, 50)
    fresh = iter(mx.StagedMixture(THREE_STAGES, documents, None, seq_len=255, batch_size=4))
    _, step = checkpointer.restore(state, fresh)
    checkpointer.close()
    assert step == 5 and fresh.step == 5
    for want, got in zip(expected, _batches(fresh, 50)):
        np.testing.assert_array_equal(want, got)


def test_restore_across_a_stage_boundary_with_an_added_source(documents):
    tokens = 30 * 8 * 64
    stable = mx.Stage("stable", tokens, {"long": 60, "mid": 40})
    only_stable = mx.StageSchedule((stable,))
    annealed = mx.StageSchedule((stable, mx.Stage("decay", tokens, {"long": 40, "mid": 30, "short": 30},
                                                   lr_phase="decay")))
    first = iter(mx.StagedMixture(only_stable, documents, None, seq_len=64, batch_size=8))
    seen = np.concatenate(_batches(first, 30))
    state = json.loads(json.dumps(first.get_state()))  # checkpoint at the end of the stable phase

    resumed = iter(mx.StagedMixture(annealed, documents, None, seq_len=64, batch_size=8))
    resumed.set_state(state)
    after = _batches(resumed, 30)
    # identical to never stopping: the continuing sources resume where they were, "short" starts fresh
    straight = iter(mx.StagedMixture(annealed, documents, None, seq_len=64, batch_size=8))
    _batches(straight, 30)
    for want, got in zip(_batches(straight, 30), after):
        np.testing.assert_array_equal(want, got)
    after = np.concatenate(after)
    sources = _source_of(after)
    assert set(np.unique(sources)) >= {0, 1, 2}  # the added source is there
    # "long" continues its document stream rather than restarting it: the first "long" document after
    # the switch is the one the stable phase stopped in, or one it never reached
    long_before = [v for v in seen.ravel() if 100_000 <= v < 200_000]
    long_after = [v for v in after.ravel() if 100_000 <= v < 200_000]
    # (restarting the stream would replay the stable phase's first document)
    assert long_after[0] == long_before[-1] or long_after[0] not in set(long_before)
    shares = resumed.realised_shares()["decay"]
    assert abs(shares["short"] - 0.30) < 0.02 and "stable" in resumed.realised_shares()


def test_restore_into_a_changed_mixture_mid_stage_continues_every_source(documents):
    """C-arm style: a checkpoint saved in stage "decay" of one schedule restored into a schedule whose
    "decay" draws another source: continuing sources resume, the new one starts, shares follow the new weights."""
    tokens = 20 * 8 * 64
    hi = mx.StageSchedule((mx.Stage("stable", tokens, {"long": 1}), mx.Stage("decay", tokens, {"long": 1, "mid": 1})))
    lo = mx.StageSchedule((mx.Stage("stable", tokens, {"long": 1}), mx.Stage("decay", tokens, {"long": 1, "short": 1})))
    first = iter(mx.StagedMixture(hi, documents, None, seq_len=64, batch_size=8))
    _batches(first, 25)
    state = json.loads(json.dumps(first.get_state()))
    second = iter(mx.StagedMixture(lo, documents, None, seq_len=64, batch_size=8))
    second.set_state(state)
    rows = np.concatenate(_batches(second, 15))
    assert set(np.unique(_source_of(rows))) - {-1} == {0, 2}
    assert second.step == 40


def test_two_hosts_see_disjoint_documents_split_evenly_and_switch_together(documents):
    schedule = mx.StageSchedule((mx.Stage("s1", 20 * 8 * 128, {"long": 50, "mid": 50}),
                                 mx.Stage("s2", 20 * 8 * 128, {"long": 30, "mid": 30, "short": 40})))
    hosts = [iter(mx.StagedMixture(schedule, documents, None, seq_len=128, batch_size=4, shard_index=i,
                                   shard_count=2)) for i in range(2)]
    assert hosts[0].staged.tokens_per_step == 8 * 128  # global batch: 2 hosts x 4 rows
    seen = [set(), set()]
    for step in range(40):
        stages = []
        for host, iterator in enumerate(hosts):
            stages.append(iterator.stage.name)
            seen[host] |= set(np.unique(next(iterator)["tokens"]).tolist()) - {0}
        assert stages[0] == stages[1] == ("s1" if step < 20 else "s2")
    assert not seen[0] & seen[1]
    for name, base in BASE.items():
        count = COUNTS[name]
        shard = [set(range(base + i, base + count, 2)) for i in range(2)]
        assert abs(len(shard[0]) - len(shard[1])) <= 1  # even split of each source's documents
        for host in range(2):
            mine = {v for v in seen[host] if base <= v < base + count}
            assert mine and mine <= shard[host], (name, host)


def test_wsd_decay_starts_at_the_first_decay_stage():
    from jaxstack.train.optimizers import OptimizerConfig, make_schedule

    schedule = mx.StageSchedule((mx.Stage("a", 1000, {"x": 1}), mx.Stage("b", 500, {"x": 1}),
                                 mx.Stage("c", 500, {"x": 1, "y": 1}, lr_phase="decay")))
    assert schedule.stage_steps(100) == [(0, 10), (10, 15), (15, 20)]
    assert schedule.stage_steps(300) == [(0, 4), (4, 5), (5, 7)]  # ceil of the cumulative budgets
    config = schedule.optimizer_config(OptimizerConfig(learning_rate=1.0, warmup_steps=2), 100)
    lr = make_schedule(config, schedule.total_steps(100))
    assert float(lr(14)) == pytest.approx(1.0) and float(lr(15)) == pytest.approx(1.0)
    assert float(lr(16)) < 1.0 and float(lr(20)) == pytest.approx(0.0, abs=1e-6)


def test_published_smollm2_schedule_category_shares():
    schedule = mx.get_schedule("smollm2-1.7b")
    assert [s.tokens for s in schedule.stages] == [6e12, 2e12, 2e12, 1e12]
    web, code = {"fineweb_edu", "dclm"}, {"starcoderdata", "stack_edu"}
    math = {"owm", "infimm_webmath", "finemath4plus", "infiwebmath3plus", "aug_gsm8k"}
    expected = [(90, 10, 0, 0), (75, 20, 5, 0), (74, 16, 10, 0), (58, 24, 14, 4)]  # paper Figure 2
    for stage, want in zip(schedule.stages, expected):
        shares = stage.shares
        got = tuple(round(100 * sum(v for k, v in shares.items() if k in group), 6)
                    for group in (web, code, math, {"cosmopedia_v2"}))
        assert got == pytest.approx(want)
    assert schedule.decay_steps(2**21) == schedule.stage_steps(2**21)[-1][1] - schedule.stage_steps(2**21)[-1][0]
    small = mx.get_schedule("smollm2-135m")
    assert len(small.stages) == 1 and small.decay_fraction == 0.2 and small.total_tokens == 2 * 10**12
    with pytest.raises(ValueError, match="no path set"):
        mx.load_documents(schedule.source("dclm"))
    mapped = schedule.with_paths({"dclm": "/data/dclm/*.parquet"})
    assert mapped.source("dclm").path == "/data/dclm/*.parquet"
    with pytest.raises(ValueError, match="unknown sources"):
        schedule.with_paths({"the_pile": "x"})


def test_schedule_errors():
    with pytest.raises(ValueError, match="must be positive"):
        mx.Stage("s", 10, {"a": 0.0})
    with pytest.raises(ValueError, match="positive integer"):
        mx.Stage("s", 0, {"a": 1})
    with pytest.raises(ValueError, match="decay stages must come last"):
        mx.StageSchedule((mx.Stage("d", 10, {"a": 1}, lr_phase="decay"), mx.Stage("s", 10, {"a": 1})))
    with pytest.raises(ValueError, match="less than one step"):
        mx.StageSchedule((mx.Stage("s", 150, {"a": 1}), mx.Stage("t", 10, {"a": 1}))).stage_steps(100)
    with pytest.raises(ValueError, match="no documents for sources"):
        mx.StagedMixture(THREE_STAGES, {}, None, seq_len=8, batch_size=1)
    with pytest.raises(ValueError, match="unknown preset"):
        mx.get_schedule("gpt5")


def test_text_documents_are_tokenized_with_eos():
    from jaxstack.data.tokenizer import train_bpe

    tokenizer = train_bpe(["hello world", "foo bar baz"] * 10, 300)
    docs = {"t": grain.MapDataset.source(["hello world", "foo bar baz", "hello foo"])}
    schedule = mx.StageSchedule((mx.Stage("s", 64, {"t": 1}),))
    batch = next(iter(mx.StagedMixture(schedule, docs, tokenizer, seq_len=15, batch_size=2)))
    assert batch["tokens"].shape == (2, 16) and batch["tokens"].dtype == np.int32
    assert tokenizer.eos_id in batch["tokens"]
    text = tokenizer.decode(batch["tokens"].ravel().tolist())
    assert "hello" in text and "<|endoftext|>" in text


@pytest.mark.slow
def test_mp_prefetch_with_two_workers_restores_across_a_stage_switch(documents):
    schedule = mx.StageSchedule((mx.Stage("s", 8 * 4 * 64, {"long": 1, "mid": 1}),
                                 mx.Stage("t", 40 * 4 * 64, {"long": 1, "mid": 1, "short": 2})))
    make = lambda: iter(mx.StagedMixture(schedule, documents, None, seq_len=64, batch_size=4, num_workers=2))
    iterator = make()
    _batches(iterator, 5)
    state = iterator.get_state()
    expected = _batches(iterator, 10)  # crosses into stage "t" at step 8
    assert iterator.stage.name == "t"
    iterator.close()
    restored = make()
    restored.set_state(state)
    for want, got in zip(expected, _batches(restored, 10)):
        np.testing.assert_array_equal(want, got)
    restored.close()


def test_document_masking_keeps_segment_ids_and_positions(documents):
    schedule = mx.StageSchedule((mx.Stage("s", 4 * 2 * 256, {"mid": 1, "short": 1}),))
    staged = mx.StagedMixture(schedule, documents, None, seq_len=255, batch_size=2, document_masking=True)
    batch = next(iter(staged))
    assert set(batch) == {"tokens", "segment_ids", "positions"}
    for row in range(2):
        tokens, segments, positions = (batch[k][row] for k in ("tokens", "segment_ids", "positions"))
        assert segments.dtype == np.int32 and positions.dtype == np.int32
        for s in np.unique(segments):
            span = segments == s
            values = set(tokens[span].tolist()) - {0}
            assert len(values) <= 1  # one document per segment (EOS excepted)
            np.testing.assert_array_equal(positions[span], np.arange(span.sum()) + positions[span][0])
        starts = np.flatnonzero(np.diff(segments)) + 1
        assert (positions[starts] == 0).all()  # positions restart at every new document


def test_adding_a_source_to_a_resumed_run_keeps_the_other_sources_streams(documents):
    """The restored run is given one more source ("aardvark", sorting first): the continuing sources'
    document order does not depend on which other sources exist."""
    tokens = 10 * 4 * 64
    before = mx.StageSchedule((mx.Stage("s1", tokens, {"long": 1, "mid": 1}),))
    after = mx.StageSchedule((mx.Stage("s1", tokens, {"long": 1, "mid": 1}), mx.Stage("s2", tokens, {"long": 1})))
    first = iter(mx.StagedMixture(before, {k: documents[k] for k in ("long", "mid")}, None, seq_len=64, batch_size=4))
    _batches(first, 10)
    state = json.loads(json.dumps(first.get_state()))
    straight = iter(mx.StagedMixture(after, {k: documents[k] for k in ("long", "mid")}, None, seq_len=64, batch_size=4))
    _batches(straight, 10)
    more = {"aardvark": documents["short"], "long": documents["long"], "mid": documents["mid"]}
    resumed = iter(mx.StagedMixture(after, more, None, seq_len=64, batch_size=4))
    resumed.set_state(state)
    for want, got in zip(_batches(straight, 10), _batches(resumed, 10)):
        np.testing.assert_array_equal(want, got)
