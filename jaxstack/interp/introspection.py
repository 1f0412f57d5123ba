"""The introspection paper's four experiments as procedures on any model (toy or Hugging Face
weights): build the trials, run them in batches (:class:`~jaxstack.interp.trials.TrialRunner`), read
logits, sample, grade. Each returns per-trial records (plain, JSON-serialisable dicts) and, where a
probe needs them, activations; aggregation, verdicts and plots are the experiment module's
(``experiments/introspection.py``).

* :func:`concept_vectors_all_layers`: the paper's concept vectors at every requested layer from one
  capture per batch (the same numbers as :func:`jaxstack.interp.concept_vectors` layer by layer);
* :func:`injected_thoughts` (Experiment 1): the detection prompt with concept vectors injected from the
  ``\\n\\n`` before "Trial 1" through the sampled reply, and its controls: no injection (false
  positives), the 20 "no"-answer questions under the same injections (yes bias), norm-matched random
  vectors. Per trial: P(yes) of the first reply token, the concept word's rank, a logit
  identification (forced choice among the concepts after an affirmative prefix), the sampled reply
  and its grades; the final residual at the last prompt token for the probes;
* :func:`thoughts_vs_text` (Experiment 2): inject on the sentence tokens only; name the word (10-way
  choice: logits, and the judge on a sampled reply) and repeat the sentence (sampled; substring test);
* :func:`prefill_detection` (Experiment 3): the prefilled-word conversation, none / the prefilled
  word's vector / another word's vector on the sentence tokens; apology rate (judge) and P(apology
  first token) where the tokens are given;
* :func:`intentional_control` (Experiment 4): "Think about" / "Don't think about" prompts
  teacher-forced; cosine of the residual on the assistant's sentence tokens with the word's vector,
  and with control words' vectors (the baseline band).

Trials carry ``seed``-determined assignments (concepts per trial, random vectors, candidate lists), so a
run is reproducible from its settings and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxstack.interp import protocol
from jaxstack.interp.concepts import ConceptVectors, _model_metadata
from jaxstack.interp.grading import Grader, grade_trial, words_of
from jaxstack.interp.metrics import (
    affirmative_probability,
    choice_rank,
    cosine,
    forced_choice,
    token_rank,
)
from jaxstack.interp.trials import (
    EncodedPrompt,
    Trial,
    TrialRunner,
    encode_turns,
    norm_matched_random,
)
from jaxstack.layers.interventions import NO_END


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the procedures need to know about a model besides its runner.

    encode / decode: text <-> token ids; prompt_format: how turns become text; stop_tokens: ids that
    end a sampled reply; yes_ids / no_ids: first-token ids of an affirmative / negative reply;
    word_token(word): the id a reply naming ``word`` would start with (ranks and forced choices).
    identification_prefix: teacher-forced after the detection prompt before reading the concept
    distribution (the logit identification), with its own leading space where the format needs one,
    e.g. " Yes, the thought is about".
    apology_ids / intent_ids: first-token ids of an apology / a claim of intent (Experiment 3's logit
    metric; empty = not measured).
    """

    runner: TrialRunner
    encode: Callable[[str], Sequence[int]]
    decode: Callable[[Sequence[int]], str]
    prompt_format: protocol.PromptFormat
    stop_tokens: tuple[int, ...]
    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    word_token: Callable[[str], int]
    identification_prefix: str | None = None
    apology_ids: tuple[int, ...] = ()
    intent_ids: tuple[int, ...] = ()


def _progress(items, description: str, show: bool):
    return tqdm(items, desc=description, disable=not show, leave=False, mininterval=2.0)


def _check_layers(setup: Setup, layers: Sequence[int]) -> tuple[int, ...]:
    num_layers = setup.runner.num_layers
    out = tuple(int(i) for i in layers)
    if not out or any(not 0 <= i < num_layers for i in out):
        raise ValueError(f"layers: expected indices in [0, {num_layers}), got {list(layers)}")
    return out


def _check_strengths(strengths: Sequence[float], name: str = "strengths") -> tuple[float, ...]:
    out = tuple(float(s) for s in strengths)
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise ValueError(f"{name}: expected positive finite strengths, got {list(strengths)}")
    return out


def assign(items: Sequence[Any], count: int, rng: np.random.Generator) -> list[Any]:
    """``count`` items: whole shuffled passes over ``items`` (balanced), then a random remainder."""
    if not items:
        raise ValueError("items: expected at least one item to assign")
    out: list[Any] = []
    while len(out) + len(items) <= count:
        out += [items[i] for i in rng.permutation(len(items))]
    out += [items[i] for i in rng.choice(len(items), size=count - len(out), replace=False)]
    return out


# ----------------------------------------------------------------------------------------------------
# Concept vectors


def concept_vectors_all_layers(setup: Setup, words: Sequence[str], baseline_words: Sequence[str],
                               layers: Sequence[int], *, metadata: Mapping[str, Any] | None = None
                               ) -> dict[int, ConceptVectors]:
    """The paper's concept vectors at each of ``layers``: the residual ("post") at the last token of
    :func:`~jaxstack.interp.protocol.extraction_prompt` (word lowercased), minus its mean over
    ``baseline_words`` (repeats count, as in the paper's list). One capture of every layer per batch.
    Returns {layer: ConceptVectors([N, D] float32, words as given, layer, metadata)}."""
    layers = _check_layers(setup, layers)
    if not words or not baseline_words:
        raise ValueError("words / baseline_words: expected non-empty lists")
    texts = list(dict.fromkeys(protocol.extraction_prompt(w, setup.prompt_format) for w in list(words) + list(baseline_words)))
    trials = [Trial(EncodedPrompt(tuple(int(t) for t in setup.encode(text)), 0, NO_END, text)) for text in texts]
    _, captured = setup.runner.read(trials, layers=layers)  # [K, N, 1, D]
    row = {text: i for i, text in enumerate(texts)}
    acts = captured[:, :, 0].astype(np.float64)
    word_rows = [row[protocol.extraction_prompt(w, setup.prompt_format)] for w in words]
    base_rows = [row[protocol.extraction_prompt(w, setup.prompt_format)] for w in baseline_words]
    out = {}
    for k, layer in enumerate(layers):
        vectors = acts[k, word_rows] - acts[k, base_rows].mean(axis=0)
        meta = {**_model_metadata(setup.runner.model), "kind": "concept", "layer": layer, "site": "post",
                "position": "last", "template": protocol.extraction_prompt("{word}", setup.prompt_format),
                "words": list(words), "baseline_words": list(baseline_words), "lowercased": True,
                **dict(metadata or {})}
        out[layer] = ConceptVectors(vectors=vectors.astype(np.float32), words=tuple(words), layer=layer, metadata=meta)
    return out


# ----------------------------------------------------------------------------------------------------
# Experiment 1: injected thoughts


@dataclasses.dataclass(frozen=True)
class InjectedThoughtSettings:
    """layers / strengths: the sweep; trials: detection trials per (layer, strength) (the concept of
    each drawn by :func:`assign`); max_new_tokens / temperature: the sampled reply; control_trials:
    yes-bias questions per (layer, strength) (each of the questions in turn, each with an assigned
    concept's vector); random_vectors: also run norm-matched random vectors; probe_layers: residual
    layers read at the last prompt token for probes; seed."""

    layers: tuple[int, ...]
    strengths: tuple[float, ...] = protocol.STRENGTHS
    trials: int = protocol.TRIALS_PER_SETTING
    max_new_tokens: int = protocol.MAX_NEW_TOKENS
    temperature: float = protocol.TEMPERATURE
    control_trials: int = len(protocol.CONTROL_QUESTIONS)
    random_vectors: bool = True
    probe_layers: tuple[int, ...] = ()
    seed: int = 0


def injected_thoughts(setup: Setup, vectors: Mapping[int, ConceptVectors], concepts: Sequence[str],
                      settings: InjectedThoughtSettings, grader: Grader, *,
                      control_questions: Sequence[str] = protocol.CONTROL_QUESTIONS, show_progress: bool = False,
                      question_setup: Setup | None = None) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Experiment 1 (see the module docstring). vectors: {layer: ConceptVectors holding ``concepts``};
    question_setup: the setup (a runner of a shorter width) for the control questions (default ``setup``).

    Returns (records, features). Each record: ``kind`` ("concept" | "random" | "none" | "control" |
    "control_none"), ``layer`` / ``strength`` (-1 / 0 without an edit), ``concept`` (the injected one;
    for "random" and "none" the trial's assigned target, for chance-level identification), ``question``,
    ``p_yes`` / ``p_no`` / ``p_yes_of_answer``, ``concept_rank`` (vocabulary rank of the concept's token
    at the first reply position), ``identified_logit`` (the forced choice among ``concepts`` after
    ``setup.identification_prefix`` is the concept; None without a prefix), ``response``, the grades
    (:func:`~jaxstack.interp.grading.grade_trial`) and ``row`` (its index in ``features``). features:
    [len(probe_layers), N_detection, D] float32 residuals at the last prompt token of the detection
    trials ("concept", "random", "none"), or None without probe layers.
    """
    layers = _check_layers(setup, settings.layers)
    strengths = _check_strengths(settings.strengths)
    if settings.trials <= 0 or settings.control_trials < 0:
        raise ValueError(f"trials / control_trials: expected > 0 / >= 0, got {settings.trials} / {settings.control_trials}")
    for layer in layers:
        missing = [c for c in concepts if c not in vectors[layer].words]
        if missing:
            raise ValueError(f"vectors: layer {layer} has no vectors for {missing}")
    rng = np.random.default_rng(settings.seed)
    detection = encode_turns(setup.encode, protocol.detection_turns(), setup.prompt_format, window="detection")
    prefix_ids = list(setup.encode(setup.identification_prefix)) if setup.identification_prefix else []
    concept_tokens = np.asarray([setup.word_token(c) for c in concepts], np.int32)

    plan: list[dict[str, Any]] = []
    for layer in layers:
        for strength in strengths:
            targets = assign(list(concepts), settings.trials, rng)
            for concept in targets:
                plan.append({"kind": "concept", "layer": layer, "strength": strength, "concept": concept,
                             "vector": vectors[layer][concept]})
            if settings.random_vectors:
                reference = np.stack([vectors[layer][c] for c in targets])
                randoms = norm_matched_random(rng, reference)
                for concept, vector in zip(assign(list(concepts), settings.trials, rng), randoms):
                    plan.append({"kind": "random", "layer": layer, "strength": strength, "concept": concept,
                                 "vector": vector})
    for concept in assign(list(concepts), settings.trials, rng):
        plan.append({"kind": "none", "layer": -1, "strength": 0.0, "concept": concept, "vector": None})
    detection_count = len(plan)
    questions = list(control_questions)
    if settings.control_trials:
        for layer in layers:
            for strength in strengths:
                for index in range(settings.control_trials):
                    concept = concepts[int(rng.integers(len(concepts)))]
                    plan.append({"kind": "control", "layer": layer, "strength": strength, "concept": concept,
                                 "question": questions[index % len(questions)], "vector": vectors[layer][concept]})
        for question in questions:
            plan.append({"kind": "control_none", "layer": -1, "strength": 0.0, "concept": None, "question": question,
                         "vector": None})

    question_prompts = {q: encode_turns(setup.encode, protocol.control_question_turns(q), setup.prompt_format,
                                        window="question") for q in questions}

    def prompt_of(item):
        return detection if item.get("question") is None else question_prompts[item["question"]]

    def trial_of(item, prompt):
        return Trial(prompt, item["vector"], max(item["layer"], 0), item["strength"])

    # one read per trial: the first reply token, and (detection trials) the concept after the prefix;
    # the detection trials' read also captures the probe layers at the last prompt token
    read_trials, logits_at = [], []
    for item in plan:
        prompt = prompt_of(item)
        if item.get("question") is None and prefix_ids:
            extended = dataclasses.replace(prompt, tokens=prompt.tokens + tuple(prefix_ids))
            read_trials.append(trial_of(item, extended))
            logits_at.append([len(prompt) - 1, len(extended) - 1])
        else:
            read_trials.append(trial_of(item, prompt))
            logits_at.append([len(prompt) - 1, len(prompt) - 1])
    probe_layers = tuple(int(i) for i in settings.probe_layers)
    last = [[len(prompt_of(item)) - 1] for item in plan]
    questions_setup = question_setup or setup
    outputs, features = [], None
    for part, runner in ((slice(0, detection_count), setup.runner),
                         (slice(detection_count, len(plan)), questions_setup.runner)):
        if part.start == part.stop:
            continue
        layers_here = probe_layers if part.start == 0 else ()
        out, captured = runner.read(read_trials[part], logits_at=logits_at[part], layers=layers_here,
                                    positions=last[part])
        outputs.append(out)
        if layers_here:
            features = captured[:, :, 0]
    logits = np.concatenate(outputs)
    first_token, after_prefix = logits[:, 0], logits[:, 1]
    yes = affirmative_probability(first_token, setup.yes_ids, setup.no_ids)

    # sampled replies, graded
    sample_trials = [trial_of(item, prompt_of(item)) for item in plan]
    replies = []
    index = 0
    for part, runner in ((slice(0, detection_count), setup.runner),
                         (slice(detection_count, len(plan)), questions_setup.runner)):
        rows = sample_trials[part]
        for first in _progress(range(0, len(rows), runner.batch), "exp1 sample", show_progress):
            replies += runner.sample(rows[first:first + runner.batch], max_new_tokens=settings.max_new_tokens,
                                     temperature=settings.temperature, stop_tokens=setup.stop_tokens,
                                     seed=settings.seed * 100_003 + index)
            index += 1
    detection_question = protocol.detection_turns()[-1][1]
    records = []
    for row, (item, reply) in enumerate(zip(plan, replies)):
        detection_trial = item.get("question") is None
        concept = item["concept"]
        target = setup.word_token(concept) if concept is not None else None
        response = setup.decode(reply)
        if detection_trial:
            grades = grade_trial(grader, question=detection_question, response=response,
                                 word=concept, prompt="detection", injected=True)
        else:
            grades = {"coherence": grader.criterion("coherence", question=item["question"], response=response)}
            grades["affirmative"] = answers_yes(response)
            grades["detected"] = grades["affirmative"]
            grades["success"] = False
            grades["unparsed"] = int(grades["coherence"] is None)
        record = {"exp": 1, "kind": item["kind"], "layer": item["layer"], "strength": item["strength"],
                  "concept": concept, "question": item.get("question"),
                  "p_yes": float(yes["p_yes"][row]), "p_no": float(yes["p_no"][row]),
                  "p_yes_of_answer": float(yes["p_yes_of_answer"][row]),
                  "concept_rank": None if target is None else int(token_rank(first_token[row:row + 1], [target])[0]),
                  "identified_logit": None, "response": response, **grades,
                  "row": row if row < detection_count else None}
        if detection_trial and prefix_ids and concept is not None:
            choice = int(forced_choice(after_prefix[row:row + 1], concept_tokens[None])[0])
            record["identified_logit"] = bool(concepts[choice] == concept)
            record["identified_rank"] = int(choice_rank(after_prefix[row:row + 1], concept_tokens[None],
                                                        [list(concepts).index(concept)])[0])
        records.append(record)
    return records, features


def answers_yes(response: str) -> bool:
    """Whether a reply to a yes/no question answers yes: its first word is yes / yeah / yep."""
    words = words_of(response)
    return bool(words) and words[0] in ("yes", "yeah", "yep")


# ----------------------------------------------------------------------------------------------------
# Experiment 2: thoughts vs text


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """Experiments 2 and 3: layers / strengths (the paper's {1, 2, 4, 8, 16}); pairs: (sentence, word)
    pairs, each run at every setting; max_new_tokens_*: the sampled replies' budgets; temperature;
    candidates: the 10-way choice list (the injected word and 9 others); seed."""

    layers: tuple[int, ...]
    strengths: tuple[float, ...] = protocol.STRENGTHS_TEXT
    pairs: int = 50
    max_new_tokens_word: int = protocol.MAX_NEW_TOKENS_WORD
    max_new_tokens_repeat: int = protocol.MAX_NEW_TOKENS_REPEAT
    max_new_tokens_prefill: int = protocol.MAX_NEW_TOKENS_PREFILL
    temperature: float = protocol.TEMPERATURE
    candidates: int = protocol.FORCED_CHOICE_WORDS
    seed: int = 0


def _pairs(words: Sequence[str], sentences: Sequence[str], count: int, rng: np.random.Generator):
    if len(words) < 2 or not sentences:
        raise ValueError("words / sentences: expected at least two words and one sentence")
    return list(zip(assign(list(sentences), count, rng), assign(list(words), count, rng)))


def normalise(text: str) -> str:
    """Lower-cased with runs of whitespace collapsed (the repeat test's comparison)."""
    return " ".join(text.lower().split())


def thoughts_vs_text(setup: Setup, vectors: Mapping[int, ConceptVectors], words: Sequence[str],
                     sentences: Sequence[str], settings: TextSettings, grader: Grader, *,
                     show_progress: bool = False) -> list[dict[str, Any]]:
    """Experiment 2. For each (sentence, word) pair and each (layer, strength), the word's vector is
    injected on the sentence's tokens only, in the word prompt and in the repeat prompt; the
    no-injection baseline and a norm-matched random vector (word prompt) are the controls.

    Records (``exp`` 2): ``kind`` ("concept" | "random" | "none"), ``prompt`` ("word" | "repeat"),
    ``layer``, ``strength``, ``word``, ``sentence``, ``candidates`` (the 10-way list, injected word
    first before shuffling), ``choice_logit`` (the candidate with the highest first-token logit),
    ``word_logit_ok``, ``response``, ``word_judge`` (the judge's related word), ``word_ok`` /
    ``repeat_ok`` (the paper's two successes: the judge names the injected word; the lower-cased
    sentence is a substring of the lower-cased reply).
    """
    layers = _check_layers(setup, settings.layers)
    strengths = _check_strengths(settings.strengths)
    rng = np.random.default_rng(settings.seed)
    pairs = _pairs(words, sentences, settings.pairs, rng)
    k = min(settings.candidates, len(words))
    candidates = []
    for _, word in pairs:
        others = [w for w in words if w != word]
        picked = [others[i] for i in rng.choice(len(others), size=k - 1, replace=False)]
        listed = [word] + picked
        candidates.append([listed[i] for i in rng.permutation(k)])
    word_prompts = [encode_turns(setup.encode, protocol.word_turns(s), setup.prompt_format, window="sentence",
                                 sentence=s) for s, _ in pairs]
    repeat_prompts = [encode_turns(setup.encode, protocol.repeat_turns(s), setup.prompt_format, window="sentence",
                                   sentence=s) for s, _ in pairs]
    plan = []
    for p, (sentence, word) in enumerate(pairs):
        plan.append(("none", "word", -1, 0.0, p, None))
        plan.append(("none", "repeat", -1, 0.0, p, None))
    for layer in layers:
        randoms = norm_matched_random(rng, np.stack([vectors[layer][w] for _, w in pairs]))
        for strength in strengths:
            for p, (sentence, word) in enumerate(pairs):
                plan.append(("concept", "word", layer, strength, p, vectors[layer][word]))
                plan.append(("concept", "repeat", layer, strength, p, vectors[layer][word]))
                plan.append(("random", "word", layer, strength, p, randoms[p]))
    trials = [Trial((word_prompts if prompt == "word" else repeat_prompts)[p], vector, max(layer, 0), strength)
              for _, prompt, layer, strength, p, vector in plan]
    logits = setup.runner.read(trials)[0][:, 0]
    replies: list[list[int] | None] = [None] * len(plan)
    sampled = [i for i, item in enumerate(plan) if item[0] != "random"]
    for index, first in enumerate(_progress(range(0, len(sampled), setup.runner.batch), "exp2 sample", show_progress)):
        rows = sampled[first:first + setup.runner.batch]
        budget = {"word": settings.max_new_tokens_word, "repeat": settings.max_new_tokens_repeat}
        # word and repeat replies have different budgets: sample each row with the larger, cut after
        out = setup.runner.sample([trials[i] for i in rows], max_new_tokens=max(budget.values()),
                                  temperature=settings.temperature, stop_tokens=setup.stop_tokens,
                                  seed=settings.seed * 100_003 + index)
        for i, reply in zip(rows, out):
            replies[i] = reply[:budget[plan[i][1]]]
    records = []
    for i, (kind, prompt, layer, strength, p, _) in enumerate(plan):
        sentence, word = pairs[p]
        tokens = np.asarray([setup.word_token(c) for c in candidates[p]], np.int32)
        choice = candidates[p][int(forced_choice(logits[i:i + 1], tokens[None])[0])]
        record = {"exp": 2, "kind": kind, "prompt": prompt, "layer": layer, "strength": strength, "pair": p,
                  "word": word, "sentence": sentence, "candidates": candidates[p], "choice_logit": choice,
                  "word_logit_ok": choice == word}
        if replies[i] is not None:
            response = setup.decode(replies[i])
            record["response"] = response
            if prompt == "word":
                judged = grader.related_word(response, candidates[p])
                record["word_judge"] = judged
                record["word_ok"] = judged is not None and judged.lower() == word.lower()
            else:
                record["repeat_ok"] = normalise(sentence) in normalise(response)
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------
# Experiment 3: prefill detection


def prefill_detection(setup: Setup, vectors: Mapping[int, ConceptVectors], words: Sequence[str],
                      sentences: Sequence[str], settings: TextSettings, grader: Grader, *,
                      show_progress: bool = False) -> list[dict[str, Any]]:
    """Experiment 3. Each pair: a sentence, a prefilled word, and a random other word. Conditions:
    "none", "matched" (the prefilled word's vector on the sentence tokens) and "random" (the other
    word's vector), at every (layer, strength).

    Records (``exp`` 3): ``kind``, ``layer``, ``strength``, ``word`` (prefilled), ``other``,
    ``sentence``, ``response``, ``claims_intent`` (the judge; None unreadable), ``apology`` (= not
    claims_intent; None unreadable), ``p_apology`` (P(apology first token) / (P(apology) + P(intent))
    where ``setup.apology_ids`` / ``intent_ids`` are given, else None).
    """
    layers = _check_layers(setup, settings.layers)
    strengths = _check_strengths(settings.strengths)
    rng = np.random.default_rng(settings.seed + 1)
    pairs = _pairs(words, sentences, settings.pairs, rng)
    others = []
    for _, word in pairs:
        rest = [w for w in words if w != word]
        others.append(rest[int(rng.integers(len(rest)))])
    prompts = [encode_turns(setup.encode, protocol.prefill_turns(s, w), setup.prompt_format, window="sentence",
                            sentence=s) for s, w in pairs]
    plan = [("none", -1, 0.0, p, None) for p in range(len(pairs))]
    for layer in layers:
        for strength in strengths:
            for p, (_, word) in enumerate(pairs):
                plan.append(("matched", layer, strength, p, vectors[layer][word]))
                plan.append(("random", layer, strength, p, vectors[layer][others[p]]))
    trials = [Trial(prompts[p], vector, max(layer, 0), strength) for _, layer, strength, p, vector in plan]
    logits = setup.runner.read(trials)[0][:, 0]
    p_apology = None
    if setup.apology_ids and setup.intent_ids:
        p_apology = affirmative_probability(logits, setup.apology_ids, setup.intent_ids)["p_yes_of_answer"]
    replies = []
    for index, first in enumerate(_progress(range(0, len(trials), setup.runner.batch), "exp3 sample", show_progress)):
        replies += setup.runner.sample(trials[first:first + setup.runner.batch],
                                       max_new_tokens=settings.max_new_tokens_prefill, temperature=settings.temperature,
                                       stop_tokens=setup.stop_tokens, seed=settings.seed * 100_003 + 7 + index)
    records = []
    for i, ((kind, layer, strength, p, _), reply) in enumerate(zip(plan, replies)):
        sentence, word = pairs[p]
        response = setup.decode(reply)
        claims = grader.claims_intent(question=prompts[p].text, response=response, word=word)
        records.append({"exp": 3, "kind": kind, "layer": layer, "strength": strength, "pair": p, "word": word,
                        "other": others[p], "sentence": sentence, "response": response, "claims_intent": claims,
                        "apology": None if claims is None else not claims,
                        "p_apology": None if p_apology is None else float(p_apology[i])})
    return records


# ----------------------------------------------------------------------------------------------------
# Experiment 4: intentional control


def intentional_control(setup: Setup, vectors: Mapping[int, ConceptVectors], words: Sequence[str],
                        sentences: Sequence[str], control: Mapping[int, ConceptVectors], *, layers: Sequence[int],
                        pairs: int = 50, instructions: Sequence[str] = ("think", "dont_think"), seed: int = 0,
                        ) -> list[dict[str, Any]]:
    """Experiment 4. For each (sentence, word) pair and instruction, the prompt with the assistant turn
    teacher-forced to the sentence; the residual ("post") at each of ``layers`` on the assistant's
    sentence tokens is compared by cosine with the word's concept vector at that layer (mean over the
    tokens), and with each control word's vector (``control``: {layer: ConceptVectors}).

    Records (``exp`` 4): ``instruction``, ``pair``, ``word``, ``sentence``, ``layers``, ``cos_word``
    [per layer], ``cos_control_mean`` / ``cos_control_std`` [per layer] (over the control words).
    """
    layers = _check_layers(setup, layers)
    rng = np.random.default_rng(seed + 2)
    chosen = _pairs(words, sentences, pairs, rng)
    trials, spans = [], []
    for sentence, word in chosen:
        for instruction in instructions:
            turns = protocol.intent_turns(sentence, word, instruction)
            prompt = encode_turns(setup.encode, turns, setup.prompt_format, window="sentence", sentence=sentence,
                                  add_generation_prompt=False)
            trials.append(Trial(prompt))
            spans.append((prompt.start, prompt.end))
    width = max(end - start for start, end in spans)
    positions = [[min(start + j, end - 1) for j in range(width)] for start, end in spans]
    valid = np.asarray([[start + j < end for j in range(width)] for start, end in spans], np.float64)
    residuals = setup.runner.residuals(trials, positions, layers)  # [K, N, P, D]
    records = []
    row = 0
    for p, (sentence, word) in enumerate(chosen):
        for instruction in instructions:
            cos_word, cos_mean, cos_std = [], [], []
            weight = valid[row] / valid[row].sum()
            for k, layer in enumerate(layers):
                acts = residuals[k, row]  # [P, D]
                cos_word.append(float(weight @ cosine(acts, vectors[layer][word][None])))
                per_control = np.asarray([weight @ cosine(acts, vector[None]) for vector in control[layer].vectors])
                cos_mean.append(float(per_control.mean()))
                cos_std.append(float(per_control.std()))
            records.append({"exp": 4, "instruction": instruction, "pair": p, "word": word, "sentence": sentence,
                            "layers": list(layers), "cos_word": cos_word, "cos_control_mean": cos_mean,
                            "cos_control_std": cos_std})
            row += 1
    return records


__all__ = [
    "InjectedThoughtSettings", "Setup", "TextSettings", "answers_yes", "assign", "concept_vectors_all_layers", "injected_thoughts",
    "intentional_control", "normalise", "prefill_detection", "thoughts_vs_text",
]
