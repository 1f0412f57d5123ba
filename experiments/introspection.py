"""Introspective awareness (Lindsey, Anthropic 2025; arXiv 2601.01828): the four concept-injection
experiments, ``jaxstack run introspection --preset tiny|paper``.

A tiny model cannot talk about itself, so the ``tiny`` preset (CPU) asks what the *method* shows at
toy scale. Per seed (the seed sets the model's initialisation, its training data order and the trial
draws; the world itself is fixed):

1. a 6-layer Llama is trained from scratch on a synthetic concept world
   (:mod:`jaxstack.interp.concept_world`: entities with attributes; describe / name-the-topic /
   repeat / yes-no / prefill / write tasks in the paper's ``Human: ... Assistant:`` format);
2. concept vectors are read from it with the paper's recipe at every layer;
3. **(i) the untrained reporter**: the base model on Experiment 1's exact prompt, with and without
   injection, against the 20 "no"-answer control questions under the same injections and norm-matched
   random vectors: does injection raise "yes" on the detection question more than everywhere
   (the open replications' yes-bias finding)?
4. **(ii) a trained reporter**: a copy fine-tuned to answer "Yes, the thought is about X" / "No, ..."
   on half of the concepts and half of the layers (``reporter_*``), evaluated on the *held-out*
   concepts at the *held-out* layers against all controls; net = identification - false positives;
5. **(iii) linear probes** on the same activations (the final residual at the last prompt token):
   is the injected concept *present* (probe) versus *reported* (the model's answer)?
6. Experiment 2-4 analogues on the base model: thoughts vs text, prefill detection, intentional control.

A reporter trained to map injected vectors to names and generalising to held-out concepts and layers
is a different claim from the paper's (an untrained, emergent ability in Claude): it shows the
protocol, its controls and its metrics can tell a working reporter from a yes-biased one, and that a
readout of injected concepts can be learned and transferred, not that anything introspects.

The ``paper`` preset runs the same procedures on local instruct weights (``model_dir``: SmolLM2-1.7B /
Qwen2.5-3B / 7B-Instruct, :func:`jaxstack.models.checkpoint.load_pretrained`) with the paper's prompts,
words, strengths, trial counts and T = 1, writing trials and metrics after every layer, graded by an
LLM judge through an OpenAI-compatible server (``grader="llm"``, ``grader_base_url``) or by the rule
grader when chosen explicitly (``grader="rule"``); with no grader configured it refuses to run.

Every number is a mean with its standard error (SEM) over seeds (tiny) or trials (paper, one seed);
each claim's verdict criterion (:data:`CLAIMS`) is fixed in this file before any number is computed.
The paper's numbers (:data:`PAPER`) are drawn beside ours and marked as the paper's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxstack.interp import protocol
from jaxstack.interp.analysis import (
    even_pairs,
    exp1_cells,
    exp2_cells,
    exp3_cells,
    exp4_cells,
    odd_pairs,
    probe_results,
    select_then_measure,
)
from jaxstack.interp.concept_world import (
    ConceptWorld,
    TrainSettings,
    WorldConfig,
    encode_examples,
    reporter_data,
    reporter_interventions,
    train_world_model,
)
from jaxstack.interp.grading import make_grader
from jaxstack.interp.introspection import (
    InjectedThoughtSettings,
    Setup,
    TextSettings,
    concept_vectors_all_layers,
    injected_thoughts,
    intentional_control,
    prefill_detection,
    thoughts_vs_text,
)
from jaxstack.interp.metrics import mean_sem, pearson
from jaxstack.interp.trials import TrialRunner
from jaxstack.models.configs import LlamaConfig
from jaxstack.runs import RunRecord, pyplot

NAME = "introspection"

# ----------------------------------------------------------------------------------------------------
# The paper's numbers (refs/evals_style.md section 1; quoted, never ours)

PAPER = {
    "source": "Lindsey, Emergent Introspective Awareness in Large Language Models (Anthropic, 2025; arXiv 2601.01828), "
              "as summarised in shared/refs/evals_style.md section 1; replications in section 1.9",
    "exp1": {"model": "Claude Opus 4.1", "peak_success": 0.20, "peak_relative_depth": 2 / 3, "peak_strength": 2.0,
             "false_positives": "0 of 100 control trials (production models)",
             "random_vectors_noticed": 0.09, "random_vectors_note": "norm-matched to a concept vector at strength 8",
             "base_models": "no base pretrained model has net > 0",
             "strength": "2 and 4 roughly tied for best; low: denial; high: 'brain damage'"},
    "replications": {"Hahami et al. v2 (Llama-3.1-8B)": "detection shift vs control-question shift r = 0.999 over "
                     "40 layer x strength settings",
                     "Sridharan (Qwen3 8B/14B/32B)": "introspection score -0.52 / -0.35 / -2.83",
                     "Llama-3.1-405B": "0/400 strict successes, 0/80 false positives"},
    "exp2": {"model": "all tested Claude models", "chance": 0.10, "result": "every model well above chance; Opus "
             "4/4.1 best, at the two-thirds layer, intermediate strengths"},
    "exp3": {"model": "Claude Opus 4.1 (secondary figure description)", "baseline_apology": 0.80,
             "matched_apology_strength_8": 0.50, "matched_apology_strength_16": 0.25,
             "band": "a narrow band of layers slightly past the middle", "random": "drops only at strength 32"},
    "exp4": {"model": "all tested Claude models", "result": "think > don't think > baseline; the gap in the latter "
             "half of the layers, shrinking near the end (Opus 4.1: back to baseline by the final layer)"},
}

#: Pre-registered claims and their criteria (fixed before any number is computed; :func:`verdicts`).
SE_MULTIPLE = 2.0
CLAIMS = {
    "untrained_no_introspection": (
        ("toy (i); paper: no base model has net > 0; replications: injection raises P(yes) on the detection "
         "question about as much as on 'no'-answer questions"),
        ("on the base model, (a) the introspection score (P(yes) shift on the detection question minus the shift on "
         "the 20 control questions, mean over every layer and strength) is not above 0 by more than 2 SEM over "
         "seeds, and (b) the graded net (identification - false positives) at the strength chosen on the training "
         "concepts and layers is not above 0 by more than 2 SEM. reproduced: (a) and (b); partially: one; not "
         "reproduced: neither"),
    ),
    "yes_bias": (
        "replications: injection raises 'yes' on unrelated no-questions",
        ("on the base model, P(yes) on the control questions with injection at the largest strength (mean over "
         "layers) minus without exceeds 0 by more than 2 SEM. reproduced / not reproduced"),
    ),
    "reporter_generalises": (
        ("toy (ii), not the paper's claim: a reporter trained on half the concepts and layers reports injected "
         "held-out concepts at held-out layers; paper: ~20% success, 0 false positives (Opus 4.1)"),
        ("on held-out concepts at held-out layers, at the strength with the largest net on the training concepts "
         "and layers: net > 2 SEM; random-vector identification <= chance + 2 SEM; the control questions' yes rate "
         "below the identification rate. reproduced: all three; partially: net > 2 SEM with a control failing; not "
         "reproduced: net <= 2 SEM"),
    ),
    "present_not_reported": (
        "toy (iii): a linear probe on the final residual at the last prompt token is the ceiling",
        ("on held-out concepts at held-out layers (the chosen strength): the base model's probe identification "
         "exceeds chance by > 2 SEM while its graded identification does not exceed 0 by > 2 SEM, and the "
         "reporter's graded identification is not above its probe's by > 2 SEM. reproduced: both; partially: one; "
         "not reproduced: neither"),
    ),
    "thoughts_vs_text": (
        "paper Exp 2: naming the injected word while still repeating the sentence, above chance (10%)",
        ("both-success rate (judge names the injected word AND the sentence is repeated) at the (layer, strength) "
         "chosen on even-numbered pairs, measured on odd-numbered pairs, exceeds 0.10 by > 2 SEM, and the "
         "random-vector 10-way choice there is <= 0.10 + 2 SEM. reproduced: both; partially: the first; not "
         "reproduced: neither"),
    ),
    "prefill_apology": (
        "paper Exp 3: injecting the prefilled word's vector lowers the apology rate, a random word's does not",
        ("at the (layer, strength) chosen on even-numbered pairs (largest random - matched apology gap), measured "
         "on odd-numbered pairs: random - matched > 2 SEM, with a no-injection apology rate >= 0.5. reproduced: "
         "both; partially: the gap only; not reproduced: no gap"),
    ),
    "intentional_control": (
        "paper Exp 4: think > don't think > baseline (cosine with the word's vector on the written sentence)",
        ("at the layer chosen on even-numbered pairs (largest think - don't gap), measured on odd pairs: think - "
         "don't > 2 SEM and don't - control baseline > 2 SEM. reproduced: both; partially: one; not reproduced: "
         "neither"),
    ),
}

LABEL = ("toy: a 6-layer Llama trained from scratch on a synthetic concept world; the paper's protocol, prompts and "
         "controls on it. It shows what the method and its controls measure, not introspection: a tiny model cannot "
         "talk about itself, and the trained reporter is a readout learned for the task")

TOY_MODEL = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=6, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
                        eos_token_id=1)
TOY_WORLD = WorldConfig(concepts=tuple(w.lower() for w in protocol.CONCEPT_WORDS[:16]),
                        baseline=tuple(w.lower() for w in protocol.BASELINE_WORDS[:16]),
                        task_weights=(("describe", 1.0), ("name", 1.0), ("repeat", 1.5), ("yes_no", 1.5),
                                      ("prefill", 2.5), ("write", 0.5)))
BASE_WIDTH = 127        # packed base-world rows (128 tokens)
REPORTER_WIDTH = 191    # a detection example (~151 tokens) plus replayed examples
TOY_IDENTIFICATION_PREFIX = " Yes, the thought is about"
BASE_TRAIN = TrainSettings(steps=1000, batch_size=8, learning_rate=1e-2, warmup_steps=50)
REPORTER_TRAIN = TrainSettings(steps=300, batch_size=8, learning_rate=3e-3, warmup_steps=20)


@dataclasses.dataclass(frozen=True)
class Config:
    """Introspection experiment settings (serialised to ``config.json``).

    Which model: ``model_dir`` None trains the toy (``world``, ``model``, ``base_train``,
    ``base_examples`` packed into rows of ``base_width`` + 1 tokens; then the reporter: ``reporter_train``, ``reporter_examples``,
    ``reporter_injected_fraction``, ``reporter_scale`` (0: a reporter trained without injections, the
    can-fail control), ``train_layers`` (default: every second layer from 0); ``competence_examples``
    greedy examples per world task to check what the toy learned); a directory loads
    Hugging Face weights (``policy``, ``prompt_format`` "chat" or "human_assistant").
    The protocol: ``layers`` (None: every ``layer_stride``-th layer), ``strengths`` (Experiment 1),
    ``strengths_text`` (Experiments 2 and 3), ``trials`` per (layer, strength), ``pairs`` (sentence,
    word) per setting, ``control_trials`` yes-bias questions per setting, reply budgets, ``temperature``,
    ``batch_size`` rows per call, ``short_width`` the toy's padded width for every prompt but the detection
    prompt (None: the detection prompt's; one width means fewer compiled programs, the micro preset's choice). ``seeds``: one full pipeline per seed (tiny) / trial seeds (paper); ``parallel_seeds`` toy pipelines run at
    once, in threads of this process (XLA:CPU computations are deterministic, so each seed's numbers are those
    of a sequential run; one tiny-model pipeline keeps ~1.5 of 2 cores busy: two at once train 1.5x faster, three
    oversubscribe the cores; 1: one after another).
    Words: ``concepts``, ``baseline_words``, ``sentences`` (paper preset; the toy uses its world's).
    Grading: ``grader`` "llm" | "rule" | None (refuses), ``grader_base_url``, ``grader_model``,
    ``grader_prompts_file``. ``experiments``: a subset of exp1..exp4. Record: ``out_dir/introspection/
    <run_name or a timestamp>``.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    parallel_seeds: int = 2
    experiments: tuple[str, ...] = ("exp1", "exp2", "exp3", "exp4")
    # the toy
    world: WorldConfig = TOY_WORLD
    model: LlamaConfig = TOY_MODEL
    base_train: TrainSettings = BASE_TRAIN
    base_examples: int = 12000
    base_width: int = BASE_WIDTH
    reporter_train: TrainSettings = REPORTER_TRAIN
    reporter_examples: int = 3000
    reporter_injected_fraction: float = 0.5
    reporter_scale: float = 1.0
    train_layers: tuple[int, ...] | None = None
    competence_examples: int = 24
    # a Hugging Face model instead
    model_dir: str | None = None
    policy: str = "fp32"
    prompt_format: str = "human_assistant"
    # the protocol
    layers: tuple[int, ...] | None = None
    layer_stride: int = 1
    strengths: tuple[float, ...] = protocol.STRENGTHS
    strengths_text: tuple[float, ...] = protocol.STRENGTHS_TEXT
    trials: int = 16
    pairs: int = 32
    control_trials: int = 20
    max_new_tokens: int = 12
    max_new_tokens_word: int = 12
    max_new_tokens_repeat: int = 12
    max_new_tokens_prefill: int = 12
    temperature: float = protocol.TEMPERATURE
    batch_size: int = 64
    short_width: int | None = 64
    concepts: tuple[str, ...] = protocol.CONCEPT_WORDS
    baseline_words: tuple[str, ...] = protocol.BASELINE_WORDS
    sentences: tuple[str, ...] = protocol.SENTENCES
    control_words: tuple[str, ...] = protocol.CONTROL_WORDS
    # grading
    grader: str | None = "rule"
    grader_base_url: str | None = None
    grader_model: str | None = None
    grader_prompts_file: str | None = None
    # the record
    out_dir: str = "runs"
    run_name: str | None = None
    show_progress: bool = True

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")
        bad = [e for e in self.experiments if e not in ("exp1", "exp2", "exp3", "exp4")]
        if bad or not self.experiments:
            raise ValueError(f"experiments: expected a non-empty subset of exp1..exp4, got {list(self.experiments)}")
        for name in ("parallel_seeds", "trials", "pairs", "batch_size", "max_new_tokens", "layer_stride", "base_examples",
                     "base_width", "reporter_examples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.short_width is not None and self.short_width <= 0:
            raise ValueError(f"short_width: expected a positive integer or None, got {self.short_width}")
        if self.control_trials < 0:
            raise ValueError(f"control_trials: expected >= 0, got {self.control_trials}")
        for name in ("strengths", "strengths_text"):
            values = getattr(self, name)
            if not values or any(not np.isfinite(v) or v <= 0 for v in values):
                raise ValueError(f"{name}: expected positive strengths, got {list(values)}")
        if self.reporter_scale < 0:
            raise ValueError(f"reporter_scale: expected >= 0, got {self.reporter_scale}")
        if self.grader not in (None, "llm", "rule"):
            raise ValueError(f"grader: expected 'llm', 'rule' or None, got {self.grader!r}")
        if self.prompt_format not in ("human_assistant", "chat"):
            raise ValueError(f"prompt_format: expected 'human_assistant' or 'chat', got {self.prompt_format!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Config] = {
    "tiny": Config(),
    # the paper's settings on local instruct weights: every second layer, strengths {1, 2, 4, 8} (Exp 1) and
    # {1, 2, 4, 8, 16} (Exp 2, 3), 50 trials per setting, T = 1, 100 tokens (Exp 1), 5 / 15 / 20 (Exp 2, 3)
    "paper": Config(seeds=(0,), model_dir=None, prompt_format="chat", policy="bf16", layer_stride=2, trials=50, pairs=50,
                    max_new_tokens=protocol.MAX_NEW_TOKENS, max_new_tokens_word=protocol.MAX_NEW_TOKENS_WORD,
                    max_new_tokens_repeat=protocol.MAX_NEW_TOKENS_REPEAT,
                    max_new_tokens_prefill=protocol.MAX_NEW_TOKENS_PREFILL, grader=None, batch_size=64),
    # seconds: the same code path on a smaller world and model (tests)
    "micro": Config(seeds=(0, 1), world=dataclasses.replace(TOY_WORLD, concepts=TOY_WORLD.concepts[:6],
                                                            baseline=TOY_WORLD.baseline[:6]),
                    model=dataclasses.replace(TOY_MODEL, hidden_size=32, intermediate_size=64, num_layers=2,
                                              num_heads=2, num_kv_heads=1),
                    # base and reporter share one compiled step: equal settings and row widths
                    base_train=TrainSettings(steps=20, batch_size=4, learning_rate=1e-2, warmup_steps=2),
                    base_width=REPORTER_WIDTH, base_examples=300,
                    reporter_train=TrainSettings(steps=20, batch_size=4, learning_rate=1e-2, warmup_steps=2),
                    reporter_examples=40, strengths=(2.0, 8.0), strengths_text=(4.0,), trials=6, pairs=6,
                    control_trials=4, max_new_tokens=4, max_new_tokens_word=4, max_new_tokens_repeat=4,
                    max_new_tokens_prefill=4, batch_size=32, short_width=None, competence_examples=0,
                    show_progress=False),
}
"""``tiny`` (CPU minutes), ``paper`` (accelerator; needs ``--model_dir=DIR`` and a grader), ``micro`` (tests)."""


# ----------------------------------------------------------------------------------------------------
# Setups


def _toy_setups(config: Config, world: ConceptWorld, model) -> tuple[Setup, Setup]:
    """(the long-prompt setup for Experiment 1's detection prompt, the short one for everything else)."""
    tokenizer = world.tokenizer
    ids = tokenizer.token_id
    detection_len = len(tokenizer.encode(protocol.render_human_assistant(protocol.detection_turns())))
    prefix_len = len(tokenizer.encode(TOY_IDENTIFICATION_PREFIX))
    common = {"encode": tokenizer.encode, "decode": tokenizer.decode, "prompt_format": protocol.PromptFormat(),
              "stop_tokens": (tokenizer.eos_id, ids("\n\n")), "yes_ids": (ids("Yes"),), "no_ids": (ids("No"),),
              "word_token": ids, "identification_prefix": TOY_IDENTIFICATION_PREFIX, "apology_ids": (ids("Sorry"),),
              "intent_ids": (ids("Yes"),)}
    long = Setup(runner=TrialRunner(model, width=detection_len + prefix_len, batch=config.batch_size,
                                    pad_id=tokenizer.pad_id), **common)
    width = long.runner.width if config.short_width is None else config.short_width
    short = Setup(runner=TrialRunner(model, width=width, batch=config.batch_size, pad_id=tokenizer.pad_id), **common)
    return long, short


def _layers(config: Config, num_layers: int) -> tuple[int, ...]:
    layers = tuple(range(0, num_layers, config.layer_stride)) if config.layers is None else tuple(config.layers)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"layers: expected indices in [0, {num_layers}), got {list(layers)}")
    return layers


def world_competence(setup: Setup, world: ConceptWorld, seed: int, per_task: int = 24) -> dict[str, float]:
    """Greedy exact-match accuracy of the model on ``per_task`` fresh examples of each base-world task (the
    toy's evidence that it learned its world; ``per_task`` 0: not measured, ``{}``)."""
    if per_task <= 0:
        return {}
    from jaxstack.interp.trials import EncodedPrompt, Trial

    rng = np.random.default_rng(10_000 + seed)
    tokenizer = world.tokenizer
    out = {}
    for task in ("describe", "name", "repeat", "yes_no", "prefill", "write"):
        examples = [world.sample(task, rng) for _ in range(per_task)]
        trials, references = [], []
        for example in examples:
            prompt = "".join(example.segments[:-1])
            trials.append(Trial(EncodedPrompt(tuple(tokenizer.encode(prompt)), 0, 1, prompt)))
            references.append(tokenizer.split(example.segments[-1]))
        replies = setup.runner.sample(trials, max_new_tokens=12, temperature=0.0, stop_tokens=setup.stop_tokens)
        out[task] = float(np.mean([tokenizer.tokens(r) == ref for r, ref in zip(replies, references)]))
    return out


# ----------------------------------------------------------------------------------------------------
# Probes


# ----------------------------------------------------------------------------------------------------
# Per-seed numbers


def seed_numbers(result: dict[str, Any], layers, strengths, strengths_text) -> dict[str, Any]:
    """Every per-seed number the summary, the verdicts and the plots use (from one seed's records)."""
    out: dict[str, Any] = {}
    split = result.get("split")
    if "exp1" in result:
        for model_name, data in result["exp1"].items():
            heldout = split["heldout_concepts"] if split else None
            trained = split["train_concepts"] if split else None
            out[f"exp1_{model_name}_heldout"] = exp1_cells(data["records"], data["probes"], layers=layers,
                                                           strengths=strengths, concept_set=heldout)
            out[f"exp1_{model_name}_train"] = exp1_cells(data["records"], data["probes"], layers=layers,
                                                         strengths=strengths, concept_set=trained)
            out[f"exp1_{model_name}_all"] = exp1_cells(data["records"], data["probes"], layers=layers,
                                                       strengths=strengths, concept_set=None)
    if "exp2" in result:
        out["exp2"] = exp2_cells(result["exp2"], layers, strengths_text)
        out["exp2_even"] = exp2_cells(result["exp2"], layers, strengths_text, even_pairs)
        out["exp2_odd"] = exp2_cells(result["exp2"], layers, strengths_text, odd_pairs)
    if "exp3" in result:
        out["exp3"] = exp3_cells(result["exp3"], layers, strengths_text)
        out["exp3_even"] = exp3_cells(result["exp3"], layers, strengths_text, even_pairs)
        out["exp3_odd"] = exp3_cells(result["exp3"], layers, strengths_text, odd_pairs)
    if "exp4" in result:
        out["exp4"] = exp4_cells(result["exp4"], layers)
        out["exp4_even"] = exp4_cells(result["exp4"], layers, even_pairs)
        out["exp4_odd"] = exp4_cells(result["exp4"], layers, odd_pairs)
    return out


# ----------------------------------------------------------------------------------------------------
# Selection, aggregation, verdicts


def _layer_mask(layers, chosen) -> np.ndarray:
    return np.asarray([layer in set(chosen) for layer in layers])


def reporter_headline(numbers: dict[str, Any], model_name: str, layers, strengths, train_layers) -> dict[str, float]:
    """One seed's Experiment 1 headline for ``model_name``: the strength with the largest net on the training
    concepts at the training layers, and at it, on the held-out concepts at the held-out layers (means over
    those layers): identification, false positives, net, logit identification, the control questions' yes
    rate, random-vector identification / detection, probe identification / detection."""
    train_mask = _layer_mask(layers, train_layers)
    held_mask = ~train_mask if (~train_mask).any() else train_mask
    train = numbers[f"exp1_{model_name}_train"]
    held = numbers[f"exp1_{model_name}_heldout"]
    train_net = np.nanmean(train["net"][train_mask], axis=0)
    j = int(np.nanargmax(np.where(np.isnan(train_net), -np.inf, train_net)))
    pick = lambda m: float(np.nanmean(held[m][held_mask, j]))
    return {"strength": float(strengths[j]), "identification": pick("identification"), "net": pick("net"),
            "false_positive": float(held["false_positive"]), "detection": pick("detection"),
            "logit_identification": pick("logit_identification"), "control_yes": pick("control_yes"),
            "random_identification": pick("random_identification"), "random_detection": pick("random_detection"),
            "random_logit_identification": pick("random_logit_identification"),
            "probe_identification": pick("probe_identification"), "probe_detection": pick("probe_detection"),
            "probe_random_identification": pick("probe_random_identification")}


def _across(values: Sequence[float]) -> dict[str, Any]:
    out = mean_sem(values)
    out["per_seed"] = [float(v) for v in values]
    return out


def _above(estimate: dict[str, Any], threshold: float = 0.0) -> bool:
    """mean - threshold > SE_MULTIPLE * SEM (False for a NaN SEM: fewer than two seeds)."""
    return bool(estimate["mean"] - threshold > SE_MULTIPLE * estimate["sem"])


def verdicts(per_seed: Sequence[dict[str, Any]], layers, strengths, strengths_text, train_layers,
             chance: float) -> dict[str, Any]:
    """The pre-registered verdicts (:data:`CLAIMS`) over the seeds' numbers."""
    out: dict[str, Any] = {}

    def claim(name, checks: dict[str, bool], estimates: dict[str, Any]):
        statement, criterion = CLAIMS[name]
        out[name] = {"statement": statement, "criterion": criterion, "checks": checks, "estimates": estimates}

    if any("exp1_base_all" in s for s in per_seed):
        scores = _across([float(np.nanmean(s["exp1_base_all"]["introspection_score"])) for s in per_seed])
        base = [reporter_headline(s, "base", layers, strengths, train_layers) for s in per_seed]
        base_net = _across([b["net"] for b in base])
        checks = {"score_not_above_0": not _above(scores), "net_not_above_0": not _above(base_net)}
        claim("untrained_no_introspection", checks, {"introspection_score": scores, "base_net_heldout": base_net})
        n = sum(checks.values())
        out["untrained_no_introspection"]["verdict"] = {2: "reproduced", 1: "partially", 0: "not reproduced"}[n]
        top = len(strengths) - 1
        shift = _across([float(np.nanmean(s["exp1_base_all"]["control_p_yes"][:, top])
                               - s["exp1_base_all"]["control_none_p_yes"]) for s in per_seed])
        mass = _across([float(np.nanmean(s["exp1_base_all"]["control_p_yes_mass"][:, top])
                              - s["exp1_base_all"]["control_none_p_yes_mass"]) for s in per_seed])
        sampled = _across([float(np.nanmean(s["exp1_base_all"]["control_yes"][:, top])
                                 - s["exp1_base_all"]["control_none_yes"]) for s in per_seed])
        claim("yes_bias", {"control_shift_above_0": _above(shift)},
              {"control_p_yes_shift_top_strength": shift, "control_p_yes_mass_shift_top_strength": mass,
               "control_sampled_yes_shift_top_strength": sampled})
        out["yes_bias"]["verdict"] = "reproduced" if _above(shift) else "not reproduced"
        if all("exp1_reporter_heldout" in s for s in per_seed):
            rep = [reporter_headline(s, "reporter", layers, strengths, train_layers) for s in per_seed]
            est = {k: _across([r[k] for r in rep]) for k in rep[0]}
            net_ok = _above(est["net"])
            random_ok = not _above(est["random_identification"], chance)
            control_ok = est["control_yes"]["mean"] < est["identification"]["mean"]
            claim("reporter_generalises", {"net_above_0": net_ok, "random_identification_at_chance": random_ok,
                                           "control_yes_below_identification": control_ok}, est)
            out["reporter_generalises"]["verdict"] = ("reproduced" if net_ok and random_ok and control_ok else
                                                     "partially" if net_ok else "not reproduced")
            base_est = {k: _across([b[k] for b in base]) for k in base[0]}
            present = _above(base_est["probe_identification"], chance) and not _above(base_est["identification"])
            ceiling = not _above(difference := _across([r["identification"] - r["probe_identification"] for r in rep]))
            claim("present_not_reported", {"base_present_not_reported": present, "reporter_at_most_probe": ceiling},
                  {"base": base_est, "reporter_minus_probe_identification": difference})
            out["present_not_reported"]["verdict"] = {2: "reproduced", 1: "partially", 0: "not reproduced"}[
                present + ceiling]
    if all("exp2_even" in s for s in per_seed) and per_seed:
        chosen = [select_then_measure(s["exp2_even"]["both"], s["exp2_odd"]["both"]) for s in per_seed]
        both = _across([c[1] for c in chosen])
        random = _across([float(s["exp2_odd"]["random_word_logit"][c[0]]) for s, c in zip(per_seed, chosen)])
        checks = {"both_above_chance": _above(both, 0.10), "random_at_chance": not _above(random, 0.10)}
        claim("thoughts_vs_text", checks, {"both_heldout_pairs": both, "random_word_choice": random,
                                           "chosen": [[layers[c[0][0]], strengths_text[c[0][1]]] for c in chosen]})
        out["thoughts_vs_text"]["verdict"] = ("reproduced" if all(checks.values()) else
                                              "partially" if checks["both_above_chance"] else "not reproduced")
    if all("exp3_even" in s for s in per_seed) and per_seed:
        chosen = [select_then_measure(s["exp3_even"]["random_apology"] - s["exp3_even"]["matched_apology"],
                                      s["exp3_odd"]["random_apology"] - s["exp3_odd"]["matched_apology"])
                  for s in per_seed]
        gap = _across([c[1] for c in chosen])
        none = _across([s["exp3"]["none_apology"] for s in per_seed])
        checks = {"gap_above_0": _above(gap), "baseline_apology_at_least_half": none["mean"] >= 0.5}
        claim("prefill_apology", checks, {"random_minus_matched_apology": gap, "none_apology": none,
                                          "chosen": [[layers[c[0][0]], strengths_text[c[0][1]]] for c in chosen]})
        out["prefill_apology"]["verdict"] = ("reproduced" if all(checks.values()) else
                                             "partially" if checks["gap_above_0"] else "not reproduced")
    if all("exp4_even" in s for s in per_seed) and per_seed:
        chosen = [select_then_measure(s["exp4_even"]["think"] - s["exp4_even"]["dont_think"],
                                      s["exp4_odd"]["think"] - s["exp4_odd"]["dont_think"]) for s in per_seed]
        gap = _across([c[1] for c in chosen])
        above = _across([float(s["exp4_odd"]["dont_think"][c[0]] - s["exp4_odd"]["control"][c[0]])
                         for s, c in zip(per_seed, chosen)])
        checks = {"think_above_dont": _above(gap), "dont_above_control": _above(above)}
        claim("intentional_control", checks, {"think_minus_dont": gap, "dont_minus_control": above,
                                              "chosen_layer": [layers[c[0][0]] for c in chosen]})
        out["intentional_control"]["verdict"] = {2: "reproduced", 1: "partially", 0: "not reproduced"}[
            sum(checks.values())]
    return out


def _stack(per_seed: Sequence[dict[str, Any]], key: str, metric: str) -> dict[str, Any]:
    """mean / sem over seeds of ``per_seed[s][key][metric]`` (arrays or scalars), as lists."""
    values = np.stack([np.asarray(s[key][metric], np.float64) for s in per_seed])
    stats = mean_sem(values, axis=0)
    return {"mean": stats["mean"], "sem": stats["sem"], "n": stats["n"]}


def figures(per_seed: Sequence[dict[str, Any]], layers, strengths, strengths_text, train_layers) -> dict[str, Any]:
    """Every plotted number, mean and SEM over seeds (what ``summary.json["figures"]`` holds)."""
    figs: dict[str, Any] = {"layers": list(layers), "strengths": list(strengths),
                            "strengths_text": list(strengths_text), "train_layers": list(train_layers)}
    exp1_metrics = ("identification", "detection", "net", "logit_identification", "p_yes", "control_yes",
                    "control_p_yes", "p_yes_mass", "control_p_yes_mass", "random_detection", "random_identification",
                    "random_logit_identification", "probe_detection", "probe_identification",
                    "probe_random_identification", "introspection_score")
    scalars = ("false_positive", "none_p_yes", "control_none_yes", "control_none_p_yes", "none_identification",
               "probe_false_positive", "none_p_yes_mass", "control_none_p_yes_mass")
    for model_name in ("base", "reporter"):
        for split in ("heldout", "train", "all"):
            key = f"exp1_{model_name}_{split}"
            if not all(key in s for s in per_seed):
                continue
            figs[key] = {m: _stack(per_seed, key, m) for m in exp1_metrics + scalars}
    # vs strength: per seed, the mean over the held-out layers at each strength, strength 0 = no injection
    held = [i for i, layer in enumerate(layers) if layer not in set(train_layers)] or list(range(len(layers)))
    zero = {"identification": "none_identification", "detection": "false_positive", "net": None,
            "control_yes": "control_none_yes", "random_detection": "false_positive", "p_yes": "none_p_yes",
            "control_p_yes": "control_none_p_yes"}
    for model_name in ("base", "reporter"):
        key = f"exp1_{model_name}_heldout"
        if not all(key in s for s in per_seed):
            continue
        series = {}
        for metric, at_zero in zero.items():
            rows = []
            for s in per_seed:
                cells = s[key]
                first = (cells["none_identification"] - cells["false_positive"]) if at_zero is None else cells[at_zero]
                rows.append(np.concatenate([[first], np.nanmean(np.asarray(cells[metric])[held], axis=0)]))
            stats = mean_sem(np.stack(rows), axis=0)
            series[metric] = {"mean": stats["mean"], "sem": stats["sem"], "n": stats["n"]}
        figs[f"{key}_by_strength"] = {"strengths": [0.0, *strengths], "layers": [layers[i] for i in held], **series}
    # the yes-bias scatter: per seed and (layer, strength), the P(yes) shifts on the detection and control prompts
    if all("exp1_base_all" in s for s in per_seed):
        detect, control = [], []
        for s in per_seed:
            cells = s["exp1_base_all"]
            detect += (np.asarray(cells["p_yes"]) - cells["none_p_yes"]).reshape(-1).tolist()
            control += (np.asarray(cells["control_p_yes"]) - cells["control_none_p_yes"]).reshape(-1).tolist()
        ok = [i for i in range(len(detect)) if np.isfinite(detect[i]) and np.isfinite(control[i])]
        figs["exp1_base_yes_bias_scatter"] = {
            "detection_shift": detect, "control_shift": control,
            "pearson_r": pearson([detect[i] for i in ok], [control[i] for i in ok]) if len(ok) > 1 else None,
            "points": "one per seed x layer x strength (seed-major, then layer, then strength)"}
    for key, metrics in (("exp2", ("word_logit", "word_judge", "repeat", "both", "random_word_logit",
                                   "none_word_logit", "none_word_judge", "none_repeat")),
                         ("exp3", ("matched_apology", "random_apology", "matched_p_apology", "random_p_apology",
                                   "none_apology", "none_p_apology")),
                         ("exp4", ("think", "dont_think", "control", "control_std"))):
        if all(key in s for s in per_seed):
            figs[key] = {m: _stack(per_seed, key, m) for m in metrics}
    return figs


# ----------------------------------------------------------------------------------------------------
# Plots


def _num(value) -> float:
    """A summary number as a float (``summary.json`` writes NaN as null: a SEM over one seed)."""
    return float("nan") if value is None else float(value)


def _errorbar(ax, x, stats, label, **style):
    mean = np.asarray(stats["mean"], np.float64)
    sem = np.nan_to_num(np.asarray(stats["sem"], np.float64))
    ax.errorbar(x, mean, yerr=sem, capsize=3, label=label, **style)


def plot_exp1_layers(figs: dict[str, Any], strength_index: dict[str, int], num_layers: int):
    """Success vs layer, base and reporter (held-out concepts), with false-positive, yes-bias, random and
    probe curves; the paper's peak marked at its relative depth."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    layers = np.asarray(figs["layers"])
    train_layers = set(figs["train_layers"])
    for ax, model_name in zip(axes, ("base", "reporter")):
        key = f"exp1_{model_name}_heldout"
        if key not in figs:
            ax.set_visible(False)
            continue
        data, j = figs[key], strength_index.get(model_name, 0)
        col = lambda m: {"mean": np.asarray(data[m]["mean"], np.float64)[:, j], "sem": np.asarray(data[m]["sem"], np.float64)[:, j]}  # noqa
        # wide and pale: with no false positives the net curve lies exactly on top of it
        _errorbar(ax, layers, col("identification"), "identification (graded: coherent AND criterion 4)",
                  marker="o", ms=9, lw=5, alpha=0.45, color="tab:green")
        _errorbar(ax, layers, col("net"), "net = identification - false positives", marker="s", color="black")
        _errorbar(ax, layers, col("logit_identification"), "logit identification (forced choice)", marker="^",
                  color="tab:olive", ls="--")
        _errorbar(ax, layers, col("control_yes"), "yes-bias: control questions answered yes", marker="v",
                  color="tab:red")
        _errorbar(ax, layers, col("random_detection"), "random vectors: detection claimed", marker="x",
                  color="tab:purple")
        _errorbar(ax, layers, col("probe_identification"), "probe identification (ceiling: present)",
                  marker="D", color="tab:blue", ls=":")
        fp = {k: _num(data["false_positive"][k]) for k in ("mean", "sem")}
        ax.axhline(fp["mean"], color="tab:orange", ls="--", label="false positives (no injection)")
        for layer in layers:
            if layer in train_layers and model_name == "reporter":
                ax.axvspan(layer - 0.4, layer + 0.4, color="0.9", zorder=0)
        ax.plot([PAPER["exp1"]["peak_relative_depth"] * (num_layers - 1)], [PAPER["exp1"]["peak_success"]], "*",
                ms=16, color="gold", mec="black", label="paper (Claude Opus 4.1): ~20% at ~2/3 depth, strength 2")
        strength = figs["strengths"][j]
        title = ("base model (untrained reporter)" if model_name == "base" else
                 "reporter (grey: training layers; curves: held-out concepts)")
        ax.set_title(f"{title}; strength {strength:g}; false positives {fp['mean']:.2f} +- {fp['sem']:.2f}",
                     fontsize=9)
        ax.set_xlabel("layer (injection and extraction)")
        ax.set_ylim(-0.35, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rate (mean +- SEM over seeds)")
    handles, labels = axes[-1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5)
    fig.suptitle("Exp 1 (toy): injected thoughts vs layer, held-out concepts", fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 0.96))
    return fig


def plot_exp1_strength(figs: dict[str, Any]):
    """Identification, detection, yes-bias and random-vector rates vs strength (held-out concepts, mean over
    the held-out layers; strength 0 = no injection), and the base model's yes-bias scatter."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.0))
    for ax, model_name in zip(axes[:2], ("base", "reporter")):
        key = f"exp1_{model_name}_heldout_by_strength"
        if key not in figs:
            ax.set_visible(False)
            continue
        data = figs[key]
        x = data["strengths"]
        _errorbar(ax, x, data["identification"], "identification (graded)", marker="o", ms=9, lw=5, alpha=0.45,
                  color="tab:green")
        _errorbar(ax, x, data["net"], "net", marker="s", color="black")
        _errorbar(ax, x, data["detection"], "detection claimed (strength 0: false positives)", marker="^",
                  color="tab:cyan")
        _errorbar(ax, x, data["control_yes"], "control questions answered yes", marker="v", color="tab:red")
        _errorbar(ax, x, data["random_detection"], "random vectors: detection claimed", marker="x", color="tab:purple")
        ax.plot([PAPER["exp1"]["peak_strength"]], [PAPER["exp1"]["peak_success"]], "*", ms=16, color="gold",
                mec="black", label="paper (Claude Opus 4.1): ~20% at strength 2 (2 and 4 tied)")
        ax.plot([8.0], [PAPER["exp1"]["random_vectors_noticed"]], "P", ms=11, color="gold", mec="black",
                label="paper (Claude Opus 4.1): random vectors noticed 9/100 (strength 8)")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.set_xlabel("strength (0 = no injection)")
        ax.set_title(f"{model_name}: held-out concepts, mean over layers {data['layers']}", fontsize=9)
        ax.set_ylim(-0.35, 1.05)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels() if axes[1].get_visible() else axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5, bbox_to_anchor=(0.34, 0.0))
    ax = axes[2]
    scatter = figs.get("exp1_base_yes_bias_scatter")
    if scatter:
        ax.scatter(scatter["control_shift"], scatter["detection_shift"], s=18, color="tab:red", alpha=0.7,
                   label="base model: one point per seed, layer, strength")
        ax.plot([-1, 1], [-1, 1], color="0.5", lw=1, ls="--", label="equal shifts (no evidence of detection)")
        r = scatter["pearson_r"]
        ax.set_title(f"yes-bias: ours r = {r:.2f}" if r is not None else "yes-bias", fontsize=9)
        ax.text(0.02, 0.97, "replications (not ours): r = 0.999 over 40 settings,\nHahami et al. v2, Llama-3.1-8B",
                transform=ax.transAxes, va="top", fontsize=7.5, bbox={"fc": "lightyellow", "ec": "0.6"})
        ax.set_xlabel("P(yes) shift on the 20 control questions")
        ax.set_ylabel("P(yes) shift on the detection question")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Exp 1 (toy): vs strength, and the yes-bias control (P(yes) as a share of P(yes) + P(no))",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 0.95))
    return fig


def plot_exp2(figs, strengths_text):
    plt = pyplot()
    data = figs["exp2"]
    layers = np.asarray(figs["layers"])
    fig, axes = plt.subplots(1, len(strengths_text), figsize=(max(3.6 * len(strengths_text), 8), 4.2), sharey=True, squeeze=False)
    for j, (ax, strength) in enumerate(zip(axes[0], strengths_text)):
        col = lambda m: {"mean": np.asarray(data[m]["mean"], np.float64)[:, j], "sem": np.asarray(data[m]["sem"], np.float64)[:, j]}  # noqa
        _errorbar(ax, layers, col("both"), "both (judge names the word AND repeat ok)", marker="o", color="black")
        _errorbar(ax, layers, col("word_judge"), "word (rule judge)", marker="s", color="tab:green")
        _errorbar(ax, layers, col("word_logit"), "word (10-way logit choice)", marker="^", color="tab:olive", ls="--")
        _errorbar(ax, layers, col("repeat"), "repeat ok", marker="v", color="tab:blue")
        _errorbar(ax, layers, col("random_word_logit"), "random vector: word choice", marker="x", color="tab:purple")
        ax.axhline(PAPER["exp2"]["chance"], color="tab:red", ls=":", label="chance (10%); paper: all Claude models "
                   "well above")
        ax.set_title(f"strength {strength:g}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("rate (mean +- SEM over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5)
    fig.suptitle("Exp 2 (toy): thoughts vs text (injection on the sentence tokens only)", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    return fig


def plot_exp3(figs, strengths_text, num_layers):
    plt = pyplot()
    data = figs["exp3"]
    layers = np.asarray(figs["layers"])
    fig, axes = plt.subplots(1, len(strengths_text), figsize=(max(3.6 * len(strengths_text), 8), 4.2), sharey=True, squeeze=False)
    for j, (ax, strength) in enumerate(zip(axes[0], strengths_text)):
        col = lambda m: {"mean": np.asarray(data[m]["mean"], np.float64)[:, j], "sem": np.asarray(data[m]["sem"], np.float64)[:, j]}  # noqa
        _errorbar(ax, layers, col("matched_apology"), "prefilled word's vector", marker="o", color="tab:green")
        _errorbar(ax, layers, col("random_apology"), "another word's vector", marker="x", color="tab:purple")
        none = data["none_apology"]
        ax.axhline(_num(none["mean"]), color="0.4", ls="--", label="no injection")
        ax.axhline(PAPER["exp3"]["baseline_apology"], color="tab:red", ls=":", lw=1,
                   label="paper (Opus 4.1): ~80% baseline")
        if strength in (8.0, 16.0):
            value = PAPER["exp3"][f"matched_apology_strength_{int(strength)}"]
            ax.plot([0.55 * (num_layers - 1)], [value], "*", ms=14, color="gold", mec="black",
                    label=f"paper: matched ~{value:.0%} at strength {strength:g}, band past the middle")
        ax.set_title(f"strength {strength:g}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("apology rate (mean +- SEM over seeds)")
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # one legend for all panels (the paper's stars appear only at strengths 8 and 16)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7.5)
    fig.suptitle("Exp 3 (toy): prefill detection, injection on the sentence before the prefilled word", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    return fig


def plot_exp4(figs):
    plt = pyplot()
    data = figs["exp4"]
    layers = np.asarray(figs["layers"])
    fig, ax = plt.subplots(figsize=(7, 4.4))
    _errorbar(ax, layers, data["think"], '"Think about {word}"', marker="o", color="tab:green")
    _errorbar(ax, layers, data["dont_think"], '"Don\'t think about {word}"', marker="s", color="tab:red")
    control = np.asarray(data["control"]["mean"], np.float64)
    spread = np.asarray(data["control_std"]["mean"], np.float64)
    ax.plot(layers, control, color="0.4", label="control words' vectors (mean; band: +-1 std)")
    ax.fill_between(layers, control - spread, control + spread, color="0.85")
    ax.text(0.02, 0.97, "paper (all Claude models): think > don't think > baseline,\nlatter half of the layers",
            transform=ax.transAxes, va="top", fontsize=8, bbox={"fc": "lightyellow", "ec": "0.6"})
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine with the word's concept vector\n(assistant's sentence tokens; mean +- SEM over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Exp 4 (toy): intentional control, teacher-forced sentence", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# The toy pipeline


def _concept_split(concepts: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(1000 + seed).permutation(len(concepts))
    half = len(concepts) // 2
    return [concepts[i] for i in sorted(order[:half])], [concepts[i] for i in sorted(order[half:])]


def _exp1(setup, vectors, concepts, config, layers, grader, seed, probe_layer, question_setup=None):
    settings = InjectedThoughtSettings(layers=layers, strengths=config.strengths, trials=config.trials,
                                       max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                       control_trials=config.control_trials, probe_layers=(probe_layer,), seed=seed)
    return injected_thoughts(setup, vectors, concepts, settings, grader, show_progress=config.show_progress,
                             question_setup=question_setup)


def _text_settings(config, layers, seed):
    return TextSettings(layers=layers, strengths=config.strengths_text, pairs=config.pairs,
                        max_new_tokens_word=config.max_new_tokens_word,
                        max_new_tokens_repeat=config.max_new_tokens_repeat,
                        max_new_tokens_prefill=config.max_new_tokens_prefill, temperature=config.temperature, seed=seed)


def _toy_seed(config: Config, world: ConceptWorld, seed: int, record: RunRecord, grader) -> dict[str, Any]:
    import jax
    from flax import nnx

    from jaxstack.models import LlamaForCausalLM

    clock = {"start": time.time()}
    tokenizer = world.tokenizer
    model = LlamaForCausalLM(config.model.replace(vocab_size=tokenizer.vocab_size), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    data = encode_examples(world.base_examples(config.base_examples, rng), tokenizer, config.base_width, pack=True)
    model, losses = train_world_model(model, data, dataclasses.replace(config.base_train, seed=seed),
                                      progress=config.show_progress, description=f"seed {seed} base")
    for step in range(0, len(losses), 10):
        record.log_metrics(step + 1, seed=seed, stage="base", loss=float(np.mean(losses[step:step + 10])))
    clock["base_train"] = time.time()
    long, short = _toy_setups(config, world, model)
    layers = _layers(config, model.config.num_layers)
    result: dict[str, Any] = {"seed": seed,
                              "competence_base": world_competence(short, world, seed, config.competence_examples),
                              "base_loss": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))]}
    all_layers = tuple(range(model.config.num_layers))
    vectors = concept_vectors_all_layers(short, world.concepts, world.baseline_words, all_layers)
    result["vector_norms"] = {str(layer): float(np.linalg.norm(vectors[layer].vectors, axis=1).mean())
                              for layer in all_layers}
    probe_layer = model.config.num_layers - 1
    concepts = list(world.concepts)
    train_concepts, heldout = _concept_split(concepts, seed)
    train_layers = tuple(config.train_layers) if config.train_layers is not None else tuple(layers[::2])
    result["split"] = {"train_concepts": set(train_concepts), "heldout_concepts": set(heldout),
                       "train_layers": train_layers}
    if "exp1" in config.experiments:
        records, features = _exp1(long, vectors, concepts, config, layers, grader, seed, probe_layer, short)
        probes = probe_results(records, features, concepts, set(train_layers))
        result["exp1"] = {"base": {"records": records, "probes": probes}}
    clock["exp1_base"] = time.time()
    text = _text_settings(config, layers, seed)
    entities = list(world.concepts)
    sentences = [world.neutral_sentence(np.random.default_rng(20_000 + seed + i)) for i in range(config.pairs)]
    if "exp2" in config.experiments:
        result["exp2"] = thoughts_vs_text(short, vectors, entities, sentences, text, grader,
                                          show_progress=config.show_progress)
    if "exp3" in config.experiments:
        result["exp3"] = prefill_detection(short, vectors, entities, sentences, text, grader,
                                           show_progress=config.show_progress)
    if "exp4" in config.experiments:
        baseline_unique = list(dict.fromkeys(world.baseline_words))
        control = concept_vectors_all_layers(short, baseline_unique, world.baseline_words, layers)
        result["exp4"] = intentional_control(short, vectors, entities, sentences, control, layers=layers,
                                             pairs=config.pairs, seed=seed)
    clock["exp234"] = time.time()
    if "exp1" in config.experiments:
        reporter = nnx.merge(*nnx.split(model))
        rdata, labels, start, _ = reporter_data(world, config.reporter_examples, train_concepts, rng,
                                                width=REPORTER_WIDTH,
                                                injected_fraction=config.reporter_injected_fraction)
        index = [concepts.index(c) for c in train_concepts]
        train_vectors = {layer: vectors[layer].vectors[index] for layer in all_layers}
        make = reporter_interventions(train_vectors, labels, layers=train_layers, strengths=config.strengths,
                                      start=start, num_layers=model.config.num_layers, scale=config.reporter_scale)
        reporter, rlosses = train_world_model(reporter, rdata, dataclasses.replace(config.reporter_train, seed=seed),
                                              make_intervention=make, progress=config.show_progress,
                                              description=f"seed {seed} reporter")
        for step in range(0, len(rlosses), 10):
            record.log_metrics(step + 1, seed=seed, stage="reporter", loss=float(np.mean(rlosses[step:step + 10])))
        clock["reporter_train"] = time.time()
        rlong, rshort = _toy_setups(config, world, reporter)
        result["competence_reporter"] = world_competence(rshort, world, seed, config.competence_examples)
        rvectors = concept_vectors_all_layers(rshort, world.concepts, world.baseline_words, all_layers)
        records, features = _exp1(rlong, rvectors, concepts, config, layers, grader, seed + 500, probe_layer, rshort)
        probes = probe_results(records, features, concepts, set(train_layers))
        result["exp1"]["reporter"] = {"records": records, "probes": probes}
        result["reporter_loss"] = [float(np.mean(rlosses[:20])), float(np.mean(rlosses[-20:]))]
        clock["exp1_reporter"] = time.time()
    del jax
    marks = list(clock.items())
    result["durations_s"] = {name: round(t - marks[i - 1][1], 1) for i, (name, t) in enumerate(marks) if i}
    return result


# ----------------------------------------------------------------------------------------------------
# A Hugging Face model (the paper preset)


def _hf_setup(config: Config, seed: int):
    import functools as _functools

    from jaxstack.data.chat import apply_chat_template, load_chat_template
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.interp.metrics import answer_token_ids
    from jaxstack.models.checkpoint import load_pretrained

    model_dir = pathlib.Path(config.model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model_dir: {model_dir} has no config.json (a local Hugging Face model directory)")
    tokenizer = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, policy=config.policy)
    if config.prompt_format == "chat":
        template = load_chat_template(model_dir)
        if template is None:
            raise ValueError(f"prompt_format: 'chat' needs a chat template in {model_dir} (tokenizer_config.json)")
        prompt_format = protocol.PromptFormat("chat", _functools.partial(apply_chat_template, jinja_template=template))
        prefix = "Yes, I detect an injected thought. It is about"
    else:
        prompt_format = protocol.PromptFormat()
        prefix = " Yes, I detect an injected thought. It is about"
    eos = model.config.eos_token_id
    stops = tuple(eos) if isinstance(eos, tuple) else (() if eos is None else (int(eos),))
    end_turn = tokenizer.backend.token_to_id("<|im_end|>")
    if end_turn is not None:
        stops += (int(end_turn),)
    setup_kwargs = {
        "encode": tokenizer.encode,
        "decode": lambda ids: tokenizer.backend.decode(list(ids), skip_special_tokens=True),
        "prompt_format": prompt_format, "stop_tokens": stops,
        "yes_ids": tuple(answer_token_ids(tokenizer.encode, ("Yes", "yes"))),
        "no_ids": tuple(answer_token_ids(tokenizer.encode, ("No", "no"))),
        # the token a concept starts with after "... about" (space-prefixed in byte-level BPEs)
        "word_token": lambda word: int(tokenizer.encode(" " + word.lower())[0]),
        "identification_prefix": prefix}
    width = max(len(tokenizer.encode(prompt_format(protocol.detection_turns()))) + 24, 96)
    long = Setup(runner=TrialRunner(model, width=width, batch=config.batch_size), **setup_kwargs)
    short = Setup(runner=TrialRunner(model, width=width, batch=config.batch_size), **setup_kwargs)
    return model, tokenizer, long, short


def _paper_seed(config: Config, seed: int, record: RunRecord, grader) -> dict[str, Any]:
    """One trial seed on the loaded model; every layer's trials are written as soon as they are graded."""
    model, _, long, short = _hf_setup(config, seed)
    layers = _layers(config, model.config.num_layers)
    concepts = list(config.concepts)
    vectors = concept_vectors_all_layers(short, concepts, config.baseline_words, layers)
    train_concepts, heldout = _concept_split(concepts, seed)
    result: dict[str, Any] = {"seed": seed, "split": {"train_concepts": set(train_concepts),
                                                      "heldout_concepts": set(heldout),
                                                      "train_layers": tuple(layers[::2])}}
    trials_file = record.path(f"trials_seed{seed}.jsonl")
    text = _text_settings(config, layers, seed)
    exp1_records, exp1_features, exp2, exp3 = [], [], [], []
    for layer in layers:
        one = (layer,)
        if "exp1" in config.experiments:
            records, features = _exp1(long, vectors, concepts, config, one, grader, seed * 1000 + layer,
                                      model.config.num_layers - 1, short)
            offset = sum(f.shape[1] for f in exp1_features)
            keep = [r for r in records if r["layer"] == layer or layer == layers[0]]
            for r in keep:
                if r["row"] is not None:
                    r["row"] += offset
            exp1_records += keep
            exp1_features.append(features)
            _append(trials_file, records)
        if "exp2" in config.experiments:
            rows = thoughts_vs_text(short, vectors, concepts, config.sentences, dataclasses.replace(text, layers=one),
                                    grader)
            exp2 += [r for r in rows if r["layer"] == layer or layer == layers[0]]
            _append(trials_file, rows)
        if "exp3" in config.experiments:
            rows = prefill_detection(short, vectors, concepts, config.sentences, dataclasses.replace(text, layers=one),
                                     grader)
            exp3 += [r for r in rows if r["layer"] == layer or layer == layers[0]]
            _append(trials_file, rows)
        record.log_metrics(layer, seed=seed, stage="layer_done", layer=layer)
    if "exp1" in config.experiments:
        features = np.concatenate(exp1_features, axis=1)
        probes = probe_results(exp1_records, features, concepts, set(layers[::2]))
        result["exp1"] = {"model": {"records": exp1_records, "probes": probes}}
    if exp2:
        result["exp2"] = exp2
    if exp3:
        result["exp3"] = exp3
    if "exp4" in config.experiments:
        control = concept_vectors_all_layers(short, list(dict.fromkeys(config.control_words)), config.baseline_words,
                                             layers)
        result["exp4"] = intentional_control(short, vectors, concepts, config.sentences, control, layers=layers,
                                             pairs=config.pairs, seed=seed)
        _append(trials_file, result["exp4"])
    return result


def _append(path: pathlib.Path, rows: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.writelines(json.dumps(row, default=_json_default) + "\n" for row in rows)
        out.flush()


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return sorted(value) if isinstance(value, set) else list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ----------------------------------------------------------------------------------------------------
# The run


def _grader(config: Config, related=None):
    return make_grader(config.grader, base_url=config.grader_base_url, model=config.grader_model,
                       prompts_file=config.grader_prompts_file, related=related)


def run(config: Config) -> pathlib.Path:
    """Runs the experiment; returns the run directory (``summary.json``, plots, ``trials_seed*.jsonl``)."""
    started, cpu_started = time.time(), time.process_time()
    grader = None if config.model_dir is None else _grader(config)  # a paper run refuses before any work
    if config.model_dir is None and config.grader == "llm":
        raise ValueError("grader: the toy's replies are graded by the rule grader (grader='rule'); an LLM judge "
                         "is for the paper preset")
    record = RunRecord.create(config.out_dir, NAME, config, stamp=config.run_name)
    per_seed_results, per_seed = [], []
    if config.model_dir is None:
        world = ConceptWorld(config.world)
        grader = _grader(config, related={e: world.associations[e][:1] for e in world.entities})
        pool = concurrent.futures.ThreadPoolExecutor(min(config.parallel_seeds, len(config.seeds)),
                                                     thread_name_prefix="introspection-seed")
        try:
            futures = [pool.submit(_toy_seed, config, world, seed, record, grader) for seed in config.seeds]
            for seed, future in zip(config.seeds, futures):
                result = future.result()  # a failing seed fails the run; the seeds not started are cancelled
                _append(record.path(f"trials_seed{seed}.jsonl"), _flatten_records(result))
                per_seed_results.append(result)
                layers = _layers(config, config.model.num_layers)
                per_seed.append(seed_numbers(result, layers, config.strengths, config.strengths_text))
                print(f"[introspection] seed {seed}: {result['durations_s']} competence {result['competence_base']}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        num_layers = config.model.num_layers
        train_layers = per_seed_results[0]["split"]["train_layers"]
        chance = 1.0 / len(world.concepts)
        label = LABEL
    else:
        for seed in config.seeds:
            result = _paper_seed(config, seed, record, grader)
            # one model: the reporter-free numbers go under "base"
            if "exp1" in result:
                result["exp1"] = {"base": result["exp1"]["model"]}
            per_seed_results.append(result)
        from jaxstack.models.checkpoint import read_config

        hf = read_config(config.model_dir)
        num_layers = int(hf.get("num_hidden_layers", 0)) or len(per_seed_results[0]["split"]["train_layers"])
        layers = _layers(config, num_layers)
        train_layers = layers
        per_seed = [seed_numbers(r, layers, config.strengths, config.strengths_text) for r in per_seed_results]
        chance = 1.0 / len(config.concepts)
        label = f"{config.model_dir}: the paper's protocol on local weights, grader {config.grader}"
    layers = _layers(config, num_layers)
    figs = figures(per_seed, layers, config.strengths, config.strengths_text, train_layers)
    claims = verdicts(per_seed, layers, config.strengths, config.strengths_text, train_layers, chance)
    headline = {}
    for model_name in ("base", "reporter"):
        if all(f"exp1_{model_name}_heldout" in s for s in per_seed):
            values = [reporter_headline(s, model_name, layers, config.strengths, train_layers) for s in per_seed]
            headline[model_name] = {k: _across([v[k] for v in values]) for k in values[0]}
    summary = {
        "label": label,
        "seeds": list(config.seeds),
        "sem_over": "seeds (model initialisation, training data order and trial draws; the world is fixed)"
                    if config.model_dir is None else "seeds (trial draws of one model)",
        "chance_identification": chance,
        "layers": list(layers),
        "num_layers": num_layers,
        "layer_stride": config.layer_stride,
        "train_layers": list(train_layers),
        "headline": headline,
        "headline_note": "net = identification - false positive rate on held-out concepts at held-out layers, at the "
                         "strength with the largest net on the training concepts and layers (mean +- SEM over seeds)",
        "claims": claims,
        "verdicts": {name: c["verdict"] for name, c in claims.items()},
        "figures": _jsonable(figs),
        "per_seed": [_seed_summary(r) for r in per_seed_results],
        "paper": PAPER,
        "sources": protocol.SOURCES,
        "what_the_toy_shows": WHAT_THE_TOY_SHOWS if config.model_dir is None else None,
        "wall_time_s": round(time.time() - started, 1),
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "load_average_at_end": _load_average(),
    }
    record.write_summary(_jsonable(summary))
    save_plots(record, _jsonable(figs), _jsonable(headline), num_layers)
    for model_name, numbers in headline.items():
        print(f"[introspection] {model_name} (held-out concepts, held-out layers, strength "
              f"{numbers['strength']['per_seed']}): " + ", ".join(
                  f"{k} {v['mean']:.3f} +- {v['sem']:.3f}" for k, v in numbers.items() if k != "strength"))
    for name, claim in claims.items():
        print(f"[introspection] claim {name}: {claim['verdict']} ({claim['checks']})")
    print(f"[introspection] {time.time() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU, load "
          f"{_load_average()}; run {record.dir}")
    return record.dir


WHAT_THE_TOY_SHOWS = {
    "can_show": [
        ("whether the paper's controls separate a yes-biased model from a reporter: an untrained model's 'yes' can "
         "move with injection on the control questions as much as on the detection question"),
        "whether injected concept vectors are linearly present in the final residual (probes), reported or not",
        ("whether a readout trained on some concepts and layers transfers to held-out concepts and layers, and how "
         "net, false positives, yes-bias and random-vector rates then behave"),
        ("how the Exp 2-4 measurements behave on a model whose world makes 'the word you think about', 'did you "
         "mean it' and 'think about X' trained behaviours"),
    ],
    "cannot_show": [
        ("introspection: the toy has no self-model, and the reporter is trained on the very mapping it is tested "
         "on (only the concepts and layers are held out)"),
        "the paper's numbers: its models are Claude Opus 4.1 and others at frontier scale, its judge Claude Sonnet 4",
        "anything about emergence with scale or post-training",
    ],
}


def _modal_strength_index(strengths: Sequence[float], chosen: Sequence[float]) -> int:
    """The index in ``strengths`` of the strength the seeds chose most often (ties: the smallest)."""
    counts = [sum(1 for c in chosen if c == s) for s in strengths]
    return int(np.argmax(counts))


def save_plots(record: RunRecord, figs: dict[str, Any], headline: dict[str, Any], num_layers: int) -> None:
    """Draws every figure from the summary's numbers (``summary.json["figures"]`` and ``["headline"]``)."""
    strength_index = {m: _modal_strength_index(figs["strengths"], headline[m]["strength"]["per_seed"])
                      for m in headline}
    if "exp1_base_heldout" in figs:
        record.save_plot(plot_exp1_layers(figs, strength_index, num_layers), "exp1_layers.png")
        record.save_plot(plot_exp1_strength(figs), "exp1_strength.png")
    if "exp2" in figs:
        record.save_plot(plot_exp2(figs, figs["strengths_text"]), "exp2_thoughts_vs_text.png")
    if "exp3" in figs:
        record.save_plot(plot_exp3(figs, figs["strengths_text"], num_layers), "exp3_prefill.png")
    if "exp4" in figs:
        record.save_plot(plot_exp4(figs), "exp4_intentional_control.png")


def replot(run_dir: str | pathlib.Path) -> None:
    """Redraws a finished run's plots from its ``summary.json`` (no model, no trials)."""
    record = RunRecord.open(run_dir)
    summary = record.read_summary()
    num_layers = len(summary["figures"]["layers"]) if summary["layer_stride"] == 1 else summary["num_layers"]
    save_plots(record, summary["figures"], summary["headline"], num_layers)


def _load_average() -> list[float] | None:
    """The machine's 1 / 5 / 15-minute load averages (the timing's context), where the OS reports them."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _flatten_records(result: dict[str, Any]):
    for model_name, data in result.get("exp1", {}).items():
        for row in data["records"]:
            yield {"model": model_name, "seed": result["seed"], **row}
    for key in ("exp2", "exp3", "exp4"):
        for row in result.get(key, []):
            yield {"model": "base", "seed": result["seed"], **row}


def _seed_summary(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("seed", "competence_base", "competence_reporter", "base_loss", "reporter_loss", "vector_norms",
            "durations_s")
    out = {k: result[k] for k in keep if k in result}
    split = result.get("split")
    if split:
        out["split"] = {k: sorted(v) if isinstance(v, set) else list(v) for k, v in split.items()}
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


if __name__ == "__main__":
    print(run(PRESETS["tiny"]))
