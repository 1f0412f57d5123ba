"""A synthetic "concept world" for the introspection experiments at toy scale.

A tiny model cannot talk about itself. What it can do is learn a small world in the paper's
``Human: ...\\n\\nAssistant: ...`` format and then be probed with the paper's protocol: concept vectors
read at the final ``:`` of ``Human: Tell me about {word}\\n\\nAssistant:``, injections, yes/no answers.

The world (:class:`ConceptWorld`, fixed by ``WorldConfig.seed``):

* **entities**: concept words and baseline words (lowercased; by default the first 20 of each of the
  paper's lists), each with three attribute words from :data:`ATTRIBUTES`: a *signature* that no other
  entity has (so a sentence holding it is about that entity) and two from a shared pool;
* **tasks** (all with the paper's prompt text where the paper has one):

  - ``describe``: ``Tell me about {entity}`` -> ``{a1}, {a2} and {a3}.``
  - ``name``: the paper's Experiment 2 word prompt over a *topical* sentence that holds two of an
    entity's attributes -> ``{entity}.`` (this is what makes "which word do you think about" mean
    something in the toy);
  - ``repeat``: the paper's repeat prompt over neutral, topical and protocol sentences (every word of
    the detection prompt is seen in training this way);
  - ``yes_no``: ``Is {entity} {attribute}?`` -> ``Yes.`` / ``No.``, and the paper's 20 control
    questions -> ``No.``;
  - ``prefill``: Experiment 3's two-turn prompt with a prefilled word -> ``Yes, I meant it.`` when the
    word is the topical sentence's entity, else ``Sorry, it was an accident.`` (neutral sentences:
    always an accident);
  - ``write``: Experiment 4's "Write ... Think about {word}" / "Don't think about {word}" prompt ->
    the sentence, then ``What were you thinking about?`` -> ``{word}.`` / ``Nothing.``
  - ``detection`` (the *reporter* fine-tune only, never the base world): the paper's Experiment 1
    prompt -> ``Yes, the thought is about {concept}.`` when a concept vector is injected, else
    ``No, I do not detect an injected thought.``

:class:`WordTokenizer` maps words and punctuation to ids (one token per word, ``\\n\\n`` one token),
so "the concept word's token" is well defined. :func:`train_world_model` is a small training loop on
:func:`jaxstack.train.step.loss_scaled_update` and :func:`jaxstack.train.optimizers.make_optimizer`
that optionally injects per-row residual edits (the reporter fine-tune).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.interp import protocol
from jaxstack.layers.interventions import Intervention

#: Attribute words an entity can be associated with (three per entity).
ATTRIBUTES: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "white", "black", "golden", "gray", "bright", "dark", "soft", "hard",
    "smooth", "rough", "cold", "warm", "hot", "wet", "dry", "heavy", "tiny", "huge", "tall", "round", "sharp",
    "loud", "quiet", "sweet", "bitter", "salty", "fast", "slow", "old", "new", "ancient", "shiny", "hollow",
    "deep", "flat", "wild", "calm", "noisy", "fragile", "strong", "sticky", "bumpy", "fuzzy", "icy", "sunny",
    "windy", "sandy", "rocky", "leafy", "watery", "metal", "wooden", "glassy", "papery", "musical", "hidden",
)
SUBJECTS = ("man", "woman", "child", "clerk", "driver", "neighbor", "student", "farmer", "visitor", "worker")
VERBS = ("walked", "waited", "smiled", "nodded", "sat", "stood", "left", "arrived", "paused", "listened")
ADVERBS = ("slowly", "quickly", "quietly", "twice", "today", "again", "early", "late", "there", "alone")
PLACES = ("door", "road", "gate", "shop", "station", "corner", "wall", "bench")
TOPICAL_TEMPLATES = (
    "the {subject} saw something {a} and {b}.",
    "it was {a} and {b} near the {place}.",
    "the {subject} found it {a} and {b} {adverb}.",
)
NEUTRAL_TEMPLATES = (
    "the {subject} {verb} {adverb}.",
    "the {subject} {verb} near the {place}.",
    "the {subject} {verb} {adverb} by the {place}.",
)

YES_REPLY, NO_REPLY = "Yes.", "No."
MEANT_REPLY, ACCIDENT_REPLY = "Yes, I meant it.", "Sorry, it was an accident."
THINKING_QUESTION, NOTHING_REPLY = "What were you thinking about?", "Nothing."
DETECTED_REPLY = "Yes, the thought is about {concept}."
NOT_DETECTED_REPLY = "No, I do not detect an injected thought."

TASKS = ("describe", "name", "repeat", "yes_no", "prefill", "write")

_TOKEN = re.compile(r"\n\n|\n|[A-Za-z0-9%]+(?:['\-][A-Za-z0-9%]+)*|\S")


# ----------------------------------------------------------------------------------------------------
# Tokenizer


class WordTokenizer:
    """One id per word or punctuation mark; ``\\n\\n`` and ``\\n`` are tokens, spaces are dropped.

    ids 0, 1, 2 are ``<pad>``, ``<eos>``, ``<unk>``; the rest are ``words`` in the order given (duplicates
    dropped). ``encode`` maps an unknown word to ``<unk>``; ``decode`` joins tokens with spaces, without
    a space before punctuation or around newlines.
    """

    PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

    def __init__(self, words: Sequence[str]):
        vocab = [self.PAD, self.EOS, self.UNK]
        seen = set(vocab)
        for word in words:
            if word not in seen:
                seen.add(word)
                vocab.append(word)
        self.vocab = tuple(vocab)
        self.ids = {word: index for index, word in enumerate(self.vocab)}
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2

    @staticmethod
    def split(text: str) -> list[str]:
        """The token strings of ``text``."""
        return _TOKEN.findall(text)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        """The id of one token (ValueError if it is not in the vocabulary)."""
        if word not in self.ids:
            raise ValueError(f"word: {word!r} is not in the vocabulary")
        return self.ids[word]

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(token, self.unk_id) for token in self.split(text)]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        out = ""
        for token in self.tokens(ids):
            if token in (self.PAD, self.EOS):
                continue
            if not out or out.endswith("\n") or token.startswith("\n") or re.fullmatch(r"[.,?!:;)\"']", token):
                out += token
            else:
                out += " " + token
        return out


# ----------------------------------------------------------------------------------------------------
# Examples


@dataclasses.dataclass(frozen=True)
class Example:
    """One training or evaluation sequence as text segments; ``trained[i]``: whether segment i's tokens
    are predicted (loss on them). ``task``: its task name; ``info``: labels (entity, concept, ...)."""

    segments: tuple[str, ...]
    trained: tuple[bool, ...]
    task: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.segments)

    def encode(self, tokenizer: WordTokenizer, *, eos: bool = True) -> tuple[list[int], list[bool]]:
        """(token ids, loss mask): segment by segment, plus ``<eos>`` (trained) at the end."""
        ids, mask = [], []
        for segment, trained in zip(self.segments, self.trained):
            piece = tokenizer.encode(segment)
            ids += piece
            mask += [trained] * len(piece)
        if eos:
            ids.append(tokenizer.eos_id)
            mask.append(True)
        return ids, mask


def _turns_text(turns: Sequence[tuple[str, str]]) -> str:
    return protocol.render_human_assistant(turns, add_generation_prompt=True)


def _example(prompt_turns, reply: str, task: str, **info) -> Example:
    return Example((_turns_text(prompt_turns), " " + reply), (False, True), task, info)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """seed: fixes the associations (the world is the same for every model seed). concepts /
    baseline: entity words (lowercased; the first 20 of the paper's lists by default: the toy's
    vocabulary and training time grow with them). task_weights: the base world's
    mixture (``describe``, ``name``, ``repeat``, ``yes_no``, ``prefill``, ``write``)."""

    seed: int = 0
    concepts: tuple[str, ...] = tuple(w.lower() for w in protocol.CONCEPT_WORDS[:20])
    baseline: tuple[str, ...] = tuple(w.lower() for w in protocol.BASELINE_WORDS[:20])
    attributes_per_entity: int = 3
    task_weights: tuple[tuple[str, float], ...] = (("describe", 2.0), ("name", 2.0), ("repeat", 1.0),
                                                   ("yes_no", 1.5), ("prefill", 2.0), ("write", 1.0))

    def __post_init__(self):
        if len(set(self.concepts)) != len(self.concepts) or not self.concepts:
            raise ValueError("world.concepts: expected distinct, non-empty words")
        if set(self.concepts) & set(self.baseline):
            raise ValueError(f"world.baseline: shares words with concepts: {sorted(set(self.concepts) & set(self.baseline))}")
        if self.attributes_per_entity < 2:
            raise ValueError(f"world.attributes_per_entity: expected >= 2, got {self.attributes_per_entity}")
        names = {name for name, _ in self.task_weights}
        if not names <= set(TASKS) or any(w < 0 for _, w in self.task_weights):
            raise ValueError(f"world.task_weights: expected non-negative weights for tasks in {TASKS}, "
                             f"got {self.task_weights}")


class ConceptWorld:
    """The world of :class:`WorldConfig` (see the module docstring): ``entities`` (concepts first, then
    the unique baseline words), ``associations[entity]`` (attribute words), ``tokenizer``."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.concepts = tuple(config.concepts)
        self.baseline_words = tuple(config.baseline)  # with repeats, as given
        self.entities = self.concepts + tuple(dict.fromkeys(w for w in config.baseline if w not in self.concepts))
        self.associations = self._associate(np.random.default_rng(config.seed))
        self.protocol_lines = self._protocol_lines()
        self.tokenizer = WordTokenizer(self._vocabulary())

    # -- construction ---------------------------------------------------------------------------------

    def _associate(self, rng: np.random.Generator) -> dict[str, tuple[str, ...]]:
        """Each entity's first attribute is its own (its *signature*, shared with no other entity); the
        others come from the remaining pool, so that no two entities share all of them."""
        k = self.config.attributes_per_entity
        if len(ATTRIBUTES) < len(self.entities) + k:
            raise ValueError(f"world: {len(self.entities)} entities need at least {len(self.entities) + k} attribute "
                             f"words (one signature each plus a shared pool); there are {len(ATTRIBUTES)}")
        order = rng.permutation(len(ATTRIBUTES))
        signatures = [ATTRIBUTES[i] for i in order[:len(self.entities)]]
        pool = [ATTRIBUTES[i] for i in order[len(self.entities):]]
        out = {}
        for entity, signature in zip(self.entities, signatures):
            shared = [pool[i] for i in rng.choice(len(pool), size=k - 1, replace=False)]
            out[entity] = (signature, *shared)
        return out

    @staticmethod
    def _protocol_lines() -> tuple[str, ...]:
        """The detection prompt's sentences (repeated in training so that every word of it is known)."""
        text = protocol.DETECTION_PREAMBLE + " Ok. Ok, let's get started. " + protocol.DETECTION_QUESTION
        parts = re.split(r"(?<=[.?])\s+", text)
        return tuple(p for p in parts if p)

    def _vocabulary(self) -> list[str]:
        texts = [protocol.render_human_assistant(protocol.detection_turns()), DETECTED_REPLY, NOT_DETECTED_REPLY,
                 YES_REPLY, NO_REPLY, MEANT_REPLY, ACCIDENT_REPLY, THINKING_QUESTION, NOTHING_REPLY,
                 protocol.WORD_PROMPT, protocol.REPEAT_PROMPT, protocol.PREFILL_FOLLOWUP, protocol.THINK_PROMPT,
                 protocol.DONT_THINK_PROMPT, protocol.EXTRACTION_USER, "Human: Is it? Assistant:",
                 *protocol.CONTROL_QUESTIONS, *TOPICAL_TEMPLATES, *NEUTRAL_TEMPLATES, *protocol.ALTERNATIVE_PROMPTS]
        words = []
        for text in texts:
            words += WordTokenizer.split(re.sub(r"\{[a-z]+\}", " ", text))
        words += list(self.entities) + list(ATTRIBUTES) + list(SUBJECTS) + list(VERBS) + list(ADVERBS) + list(PLACES)
        return words

    # -- sentences ------------------------------------------------------------------------------------

    def neutral_sentence(self, rng: np.random.Generator) -> str:
        """A sentence that names no entity and no attribute."""
        template = NEUTRAL_TEMPLATES[rng.integers(len(NEUTRAL_TEMPLATES))]
        return template.format(subject=_pick(rng, SUBJECTS), verb=_pick(rng, VERBS), adverb=_pick(rng, ADVERBS),
                               place=_pick(rng, PLACES))

    def topical_sentence(self, entity: str, rng: np.random.Generator) -> str:
        """A sentence holding ``entity``'s signature attribute (which names it) and one of its others."""
        signature, *others = self.associations[entity]
        a, b = (signature, _pick(rng, others)) if rng.random() < 0.5 else (_pick(rng, others), signature)
        template = TOPICAL_TEMPLATES[rng.integers(len(TOPICAL_TEMPLATES))]
        return template.format(subject=_pick(rng, SUBJECTS), a=a, b=b, place=_pick(rng, PLACES),
                               adverb=_pick(rng, ADVERBS))

    # -- tasks ----------------------------------------------------------------------------------------

    def describe(self, entity: str) -> Example:
        attrs = self.associations[entity]
        reply = ", ".join(attrs[:-1]) + f" and {attrs[-1]}."
        return _example([("user", protocol.EXTRACTION_USER.format(word=entity))], reply, "describe", entity=entity)

    def name(self, entity: str, rng: np.random.Generator) -> Example:
        sentence = self.topical_sentence(entity, rng)
        return _example(protocol.word_turns(sentence), f"{entity}.", "name", entity=entity, sentence=sentence)

    def repeat(self, rng: np.random.Generator) -> Example:
        kind = rng.integers(3)
        if kind == 0:
            line = self.neutral_sentence(rng)
        elif kind == 1:
            line = self.topical_sentence(_pick(rng, self.entities), rng)
        else:
            line = _pick(rng, self.protocol_lines)
        return _example(protocol.repeat_turns(line), line, "repeat", sentence=line)

    def yes_no(self, rng: np.random.Generator) -> Example:
        if rng.random() < 0.15:
            question = _pick(rng, protocol.CONTROL_QUESTIONS)
            return _example([("user", question)], NO_REPLY, "yes_no", answer="no", control=True)
        entity = _pick(rng, self.entities)
        if rng.random() < 0.5:
            attribute, answer = _pick(rng, self.associations[entity]), "yes"
        else:
            others = [a for a in ATTRIBUTES if a not in self.associations[entity]]
            attribute, answer = _pick(rng, others), "no"
        return _example([("user", f"Is {entity} {attribute}?")], YES_REPLY if answer == "yes" else NO_REPLY,
                        "yes_no", answer=answer, entity=entity)

    def prefill(self, rng: np.random.Generator) -> Example:
        kind = rng.integers(3)
        if kind == 2:
            sentence, topic = self.neutral_sentence(rng), None
        else:
            topic = _pick(rng, self.entities)
            sentence = self.topical_sentence(topic, rng)
        if kind == 0:
            word = topic
        else:
            word = _pick(rng, [e for e in self.entities if e != topic])
        turns = protocol.prefill_turns(sentence, word)
        head = _turns_text(turns[:1]) + " " + word
        tail = "\n\n" + protocol.render_human_assistant(turns[2:])
        reply = MEANT_REPLY if word == topic else ACCIDENT_REPLY
        return Example((head, tail, " " + reply), (False, False, True), "prefill",
                       {"sentence": sentence, "word": word, "topic": topic, "meant": word == topic})

    def write(self, rng: np.random.Generator) -> Example:
        sentence = self.neutral_sentence(rng)
        word = _pick(rng, self.entities)
        think = bool(rng.random() < 0.5)
        turns = protocol.intent_turns(sentence, word, "think" if think else "dont_think")
        head = _turns_text(turns[:1])
        tail = "\n\n" + protocol.render_human_assistant([("user", THINKING_QUESTION)])
        reply = f"{word}." if think else NOTHING_REPLY
        return Example((head, " " + sentence, tail, " " + reply), (False, True, False, True), "write",
                       {"sentence": sentence, "word": word, "think": think})

    def detection(self, concept: str | None) -> Example:
        """The reporter's training example: the paper's Experiment 1 prompt, the reply for an injected
        ``concept`` (or for none)."""
        reply = NOT_DETECTED_REPLY if concept is None else DETECTED_REPLY.format(concept=concept)
        return _example(protocol.detection_turns(), reply, "detection", concept=concept)

    def sample(self, task: str, rng: np.random.Generator) -> Example:
        """One example of a base-world task."""
        if task == "describe":
            return self.describe(_pick(rng, self.entities))
        if task == "name":
            return self.name(_pick(rng, self.entities), rng)
        if task == "repeat":
            return self.repeat(rng)
        if task == "yes_no":
            return self.yes_no(rng)
        if task == "prefill":
            return self.prefill(rng)
        if task == "write":
            return self.write(rng)
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")

    def base_examples(self, count: int, rng: np.random.Generator) -> list[Example]:
        """``count`` examples of the base world's task mixture (every entity described at least once)."""
        names = [name for name, _ in self.config.task_weights]
        weights = np.asarray([w for _, w in self.config.task_weights], np.float64)
        out = [self.describe(e) for e in self.entities]
        tasks = rng.choice(len(names), size=max(count - len(out), 0), p=weights / weights.sum())
        out += [self.sample(names[t], rng) for t in tasks]
        return [out[i] for i in rng.permutation(len(out))][:count] if count >= len(self.entities) else out[:count]


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


# ----------------------------------------------------------------------------------------------------
# Arrays and training


def encode_examples(examples: Sequence[Example], tokenizer: WordTokenizer, width: int, *,
                    pack: bool = False) -> dict[str, np.ndarray]:
    """Right-padded arrays for :func:`train_world_model`: ``tokens`` [N, width + 1] int32, ``loss_mask``
    [N, width + 1] float32 (1 on the tokens to predict) and, with ``pack``, ``segment_ids`` and
    ``positions`` [N, width + 1] int32: examples packed first-fit into rows (in order), attention within
    an example, positions restarting at 0 (padding: segment 0). ValueError naming the example if one
    is longer than ``width + 1`` tokens."""
    encoded = []
    for row, example in enumerate(examples):
        ids, trained = example.encode(tokenizer)
        if len(ids) > width + 1:
            raise ValueError(f"width: example {row} ({example.task}) has {len(ids)} tokens, more than width + 1 = "
                             f"{width + 1}")
        encoded.append((ids, trained))
    if not pack:
        rows = [[item] for item in encoded]
    else:
        rows, free = [], []
        for item in encoded:
            for index, space in enumerate(free):
                if len(item[0]) <= space:
                    rows[index].append(item)
                    free[index] -= len(item[0])
                    break
            else:
                rows.append([item])
                free.append(width + 1 - len(item[0]))
    tokens = np.zeros((len(rows), width + 1), np.int32)
    mask = np.zeros((len(rows), width + 1), np.float32)
    segments = np.zeros((len(rows), width + 1), np.int32)
    positions = np.zeros((len(rows), width + 1), np.int32)
    for row, items in enumerate(rows):
        at = 0
        for segment, (ids, trained) in enumerate(items, start=1):
            n = len(ids)
            tokens[row, at:at + n] = ids
            mask[row, at:at + n] = trained
            segments[row, at:at + n] = segment
            positions[row, at:at + n] = np.arange(n)
            at += n
    out = {"tokens": tokens, "loss_mask": mask}
    if pack:
        out |= {"segment_ids": segments, "positions": positions}
    return out


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """steps, batch_size, learning_rate (AdamW, warm-up then linear decay), warmup_steps, seed (data order)."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")


def _loss(params, graphdef, batch, intervention):
    from jaxstack.train.step import token_cross_entropy

    model = nnx.merge(graphdef, params)
    tokens = batch["tokens"]
    segments = batch.get("segment_ids")
    positions = batch.get("positions")
    mask = batch["loss_mask"][:, 1:]
    if segments is not None:
        mask = mask * (segments[:, 1:] == segments[:, :-1])
    output = model(tokens[:, :-1], None if positions is None else positions[:, :-1],
                   segment_ids=None if segments is None else segments[:, :-1], intervention=intervention)
    return token_cross_entropy(output.logits, tokens[:, 1:], mask)


_STEPS: dict[Any, Any] = {}
_STEPS_LOCK = threading.Lock()


def _train_step(graphdef, params, settings: TrainSettings):
    """The jitted step and its optax transformation, built once per (model structure, optimizer
    settings): seeds that share them reuse one compiled step."""
    key = (graphdef, settings.steps, settings.learning_rate, settings.warmup_steps)
    with _STEPS_LOCK:  # seeds run in threads build (and compile) a shared step once
        return _STEPS[key] if key in _STEPS else _build_step(key, graphdef, params, settings)


def _build_step(key, graphdef, params, settings: TrainSettings):
    from jaxstack.train.optimizers import OptimizerConfig, make_optimizer
    from jaxstack.train.step import loss_scaled_update

    optimizer = OptimizerConfig(learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps,
                                decay_fraction=0.3, weight_decay=0.0, clip_norm=1.0)
    tx = make_optimizer(optimizer, settings.steps, params)

    @jax.jit
    def step(params, opt_state, scaler, batch, intervention):
        (params, opt_state, scaler), (loss, _, _, _) = loss_scaled_update(
            lambda p: _loss(p, graphdef, batch, intervention), params, opt_state, scaler, tx=tx,
            skip_nonfinite=True)
        return params, opt_state, scaler, loss

    if len(_STEPS) > 8:
        _STEPS.clear()
    _STEPS[key] = (step, tx)
    return _STEPS[key]


def train_world_model(model, data: dict[str, np.ndarray], settings: TrainSettings, *,
                      make_intervention: Callable[[np.ndarray, np.random.Generator], Intervention] | None = None,
                      progress: bool = True, description: str = "train", eval_every: int = 0,
                      on_eval: Callable[[int, Any], None] | None = None) -> tuple[Any, list[float]]:
    """Trains ``model`` (in place: its parameters are replaced) on rows of ``data`` (from
    :func:`encode_examples`), sampled with replacement in ``settings.seed``'s order.

    make_intervention(rows [B] int, rng) -> an :class:`Intervention` with B rows applied to that
    batch's forward (the reporter fine-tune: per-row concept vectors, layers, strengths and windows are
    traced, so the step compiles once). Without it every batch gets a zero edit of the same shapes
    (bit-identical to no edit), so a base run and a fine-tune with equal settings and row widths share
    one compiled step. ``on_eval(step, model)`` is called every
    ``eval_every`` steps (and after the last) with the model holding the current parameters.
    Returns (model, per-step losses).
    """
    from tqdm.auto import tqdm

    from jaxstack.precision import LossScaleConfig, init_loss_scale
    from jaxstack.train.step import split_model

    chex.assert_rank(data["tokens"], 2)
    chex.assert_equal_shape([data["tokens"], data["loss_mask"]])
    graphdef, params = split_model(model)
    step, tx = _train_step(graphdef, params, settings)
    opt_state = tx.init(params)
    scaler = init_loss_scale(LossScaleConfig(enabled=False))

    if make_intervention is None:
        from jaxstack.interp.trials import row_intervention

        zero = row_intervention(model.config.num_layers, model.config.hidden_size,
                                vectors=np.zeros((settings.batch_size, model.config.hidden_size), np.float32), layers=0,
                                strengths=np.zeros(settings.batch_size, np.float32), starts=0, ends=1)

        def make_intervention(rows, rng):
            del rows, rng
            return zero
    rng = np.random.default_rng(settings.seed)
    count = data["tokens"].shape[0]
    losses = []
    bar = tqdm(range(settings.steps), desc=description, disable=not progress, leave=False, mininterval=2.0)
    for _ in bar:
        rows = rng.integers(count, size=settings.batch_size)
        batch = {key: jnp.asarray(value[rows]) for key, value in data.items()}
        params, opt_state, scaler, loss = step(params, opt_state, scaler, batch, make_intervention(rows, rng))
        losses.append(loss)
        done = len(losses)
        if done % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
        if on_eval is not None and eval_every and (done % eval_every == 0 or done == settings.steps):
            nnx.update(model, params)
            on_eval(done, model)
    nnx.update(model, params)
    return model, [float(x) for x in jax.device_get(losses)]


# ----------------------------------------------------------------------------------------------------
# The reporter fine-tune


REPLAY_TASKS = ("describe", "name", "yes_no")


def reporter_data(world: ConceptWorld, count: int, concepts: Sequence[str], rng: np.random.Generator, *,
                  width: int, injected_fraction: float = 0.5, replay_tasks: Sequence[str] = REPLAY_TASKS
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, int, int]:
    """Rows for the reporter fine-tune: each row is one detection example (the paper's Experiment 1
    prompt and the toy's reply) followed by short base-world examples (``replay_tasks``, packed into the
    rest of the row, so the reporter keeps its world, the control questions' "No" included; they are
    never injected).

    A fraction ``injected_fraction`` of the rows is labelled with a concept drawn from ``concepts``
    (reply "Yes, the thought is about {concept}."), the rest with none (reply "No, I do not detect an
    injected thought."). Returns (arrays as :func:`encode_examples` with ``pack``, labels [N] int
    (index into ``concepts``, -1 = none), the injection start (token index of the ``\n\n`` before
    "Trial 1"), the detection example's length without its ``<eos>``).
    """
    if not 0 <= injected_fraction <= 1:
        raise ValueError(f"injected_fraction: expected a value in [0, 1], got {injected_fraction}")
    tokenizer = world.tokenizer
    probe = world.detection(None)
    prompt_text = probe.segments[0]
    start = protocol.injection_start(tokenizer.encode, prompt_text)
    labels = np.where(rng.random(count) < injected_fraction, rng.integers(len(concepts), size=count), -1)
    rows = []
    for label in labels:
        example = world.detection(None if label < 0 else concepts[int(label)])
        ids, mask = example.encode(tokenizer)
        segments = [(ids, mask)]
        used = len(ids)
        for _ in range(8):
            extra = world.sample(replay_tasks[int(rng.integers(len(replay_tasks)))], rng).encode(tokenizer)
            if used + len(extra[0]) > width + 1:
                break
            if len(extra[0]) >= start:  # replay positions restart at 0: they must stay before the window
                continue
            segments.append(extra)
            used += len(extra[0])
        rows.append(segments)
    tokens = np.zeros((count, width + 1), np.int32)
    loss_mask = np.zeros((count, width + 1), np.float32)
    segment_ids = np.zeros((count, width + 1), np.int32)
    positions = np.zeros((count, width + 1), np.int32)
    for row, segments in enumerate(rows):
        at = 0
        for index, (ids, mask) in enumerate(segments, start=1):
            n = len(ids)
            if at + n > width + 1:
                raise ValueError(f"width: the detection example needs {n} tokens, more than width + 1 = {width + 1}")
            tokens[row, at:at + n] = ids
            loss_mask[row, at:at + n] = mask
            segment_ids[row, at:at + n] = index
            positions[row, at:at + n] = np.arange(n)
            at += n
    data = {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}
    detection_length = len(world.detection(None).encode(tokenizer, eos=False)[0])
    return data, labels, start, detection_length


def reporter_interventions(vectors: Mapping[int, np.ndarray], labels: np.ndarray, *, layers: Sequence[int],
                           strengths: Sequence[float], start: int, num_layers: int, scale: float = 1.0
                           ) -> Callable[[np.ndarray, np.random.Generator], Intervention]:
    """``make_intervention`` for :func:`train_world_model`: each labelled row gets its concept's vector
    (``vectors[layer]``: [N_concepts, D]) at a layer drawn from ``layers`` and a strength drawn from
    ``strengths`` (times ``scale``: 0 trains a reporter that never sees an injection, the can-fail
    control), from ``start`` to the end of the detection example (the replayed examples after it keep
    positions below ``start``, so they are never edited)."""
    from jaxstack.interp.trials import row_intervention

    layers = [int(i) for i in layers]
    hidden = next(iter(vectors.values())).shape[1]

    def make(rows: np.ndarray, rng: np.random.Generator) -> Intervention:
        batch = len(rows)
        chosen = np.asarray([layers[int(i)] for i in rng.integers(len(layers), size=batch)])
        strength = np.asarray(strengths, np.float32)[rng.integers(len(strengths), size=batch)] * scale
        row_labels = labels[rows]
        picked = np.zeros((batch, hidden), np.float32)
        for b in range(batch):
            if row_labels[b] >= 0:
                picked[b] = vectors[int(chosen[b])][int(row_labels[b])]
        strength = np.where(row_labels >= 0, strength, 0.0)
        from jaxstack.layers.interventions import NO_END

        return row_intervention(num_layers, hidden, vectors=picked, layers=chosen, strengths=strength,
                                starts=np.full(batch, start), ends=np.full(batch, NO_END))

    return make


__all__ = [
    "ATTRIBUTES",
    "REPLAY_TASKS",
    "TASKS",
    "ConceptWorld",
    "Example",
    "TrainSettings",
    "WordTokenizer",
    "WorldConfig",
    "encode_examples",
    "reporter_data",
    "reporter_interventions",
    "train_world_model",
]
