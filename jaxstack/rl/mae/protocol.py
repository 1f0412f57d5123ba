"""The text protocol of Multi-Agent Evolve's three roles: tags, format scores, judge scores, prompts.

One policy plays three roles (Chen et al., arXiv 2510.23595; shared/refs/rl.md section 2.2):

* **proposer**: writes one task in ``<question>...</question>``; four prompt variants, {without,
  with} a reference question x {without, with} answer generation (the answer variants also write
  ``<answer>...</answer>``);
* **solver**: answers a question in ``<answer>...</answer>``;
* **judge**: reasons in ``<think>...</think>`` and scores with an integer 1-10 in
  ``<score>...</score>``; templates ``judge_question`` (the quality of a question), ``judge_answer``
  (an answer to a question) and ``judge_together`` (both: two score tags, the question's first).
  Scores are normalised as (s - 1) / 9, clipped to [0, 1].

Everything here works on *generated text* (the decoded response, never the prompt), so the same
parsing serves the toy tag tokenizer (:class:`TagTokenizer`: each tag one token) and a Hugging Face
tokenizer (the paper preset). The templates are ours: compact token templates for the toy
(:data:`TOY_TEMPLATES`) and paraphrased natural-language ones for an instruction-tuned model
(:data:`INSTRUCT_TEMPLATES`, rendered in the model's chat template by the caller).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

ROLES = ("proposer", "solver", "judge")
ROLE_ID = {role: index for index, role in enumerate(ROLES)}
TAGS = ("question", "answer", "think", "score")
SCORE_MIN, SCORE_MAX = 1, 10

_PAIR = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in TAGS}


def _pattern(tag: str) -> re.Pattern:
    if tag not in _PAIR:
        raise ValueError(f"tag: unknown tag {tag!r}; expected one of {list(TAGS)}")
    return _PAIR[tag]


def tag_contents(text: str, tag: str) -> list[str]:
    """The contents of the complete ``<tag>...</tag>`` pairs in ``text``, left to right (non-nested,
    non-overlapping: each pair closes at the first ``</tag>`` after its opening)."""
    return _pattern(tag).findall(text)


def count_tag_pairs(text: str, tag: str) -> int:
    """The number of complete ``<tag>...</tag>`` pairs in ``text``."""
    return len(tag_contents(text, tag))


def format_score(generated: str, tag: str, expected: int = 1) -> float:
    """The format reward of a *generated* response: 1.0 for exactly ``expected`` complete tag pairs
    (one, except ``judge_together``'s two ``<score>`` pairs), 0.5 for more, 0.0 for fewer.

    This is the paper's count, on the generated text alone. The released code
    (``calc_format_reward`` in ulab-uiuc/Multi-agent-evolve) counts tags on a string that includes the
    prompt template, so its "correct" count is 3 for ``<question>`` / ``<score>``; we do not.
    """
    if expected < 1:
        raise ValueError(f"expected: a positive number of tag pairs, got {expected}")
    count = count_tag_pairs(generated, tag)
    if count == expected:
        return 1.0
    return 0.5 if count > expected else 0.0


def first_tag(text: str, tag: str) -> str | None:
    """The content of the first complete ``<tag>`` pair, stripped, or None if there is none."""
    contents = tag_contents(text, tag)
    return contents[0].strip() if contents else None


def parse_score(generated: str, index: int = 0) -> int | None:
    """The judge's integer score in the ``index``-th ``<score>`` pair of its generated text (0 = the
    first; ``judge_together``: 0 = the question's score, 1 = the answer's), or None when that pair is
    missing or its content is not an integer."""
    contents = tag_contents(generated, "score")
    if len(contents) <= index:
        return None
    content = contents[index].strip()
    if not re.fullmatch(r"[+-]?\d+", content):
        return None
    return int(content)


def normalise_score(score: float | None) -> float:
    """A judge score s in 1-10 as (s - 1) / 9, clipped to [0, 1]; a missing score (None) is 0.0 (a
    judgment that gives no score approves nothing)."""
    if score is None:
        return 0.0
    return min(max((float(score) - SCORE_MIN) / (SCORE_MAX - SCORE_MIN), 0.0), 1.0)


# ----------------------------------------------------------------------------------------------------
# Prompt templates


@dataclasses.dataclass(frozen=True)
class Templates:
    """Prompt templates of the three roles (``str.format`` fields ``{reference}``, ``{question}``,
    ``{answer}``). The four proposer variants are {``proposer``, ``proposer_reference``} x {without,
    ``_answer``}; ``judge_together`` asks for two ``<score>`` pairs, the question's first."""

    proposer: str
    proposer_answer: str
    proposer_reference: str
    proposer_reference_answer: str
    solver: str
    judge_question: str
    judge_answer: str
    judge_together: str

    def proposer_prompt(self, reference: str | None = None, *, with_answer: bool = False) -> str:
        """The proposer's prompt: with a reference question (a harder controlled variation of it is
        asked for) or without; with answer generation or without."""
        if reference is None:
            return self.proposer_answer if with_answer else self.proposer
        template = self.proposer_reference_answer if with_answer else self.proposer_reference
        return template.format(reference=reference)

    def solver_prompt(self, question: str) -> str:
        return self.solver.format(question=question)

    def judge_question_prompt(self, question: str) -> str:
        return self.judge_question.format(question=question)

    def judge_answer_prompt(self, question: str, answer: str) -> str:
        return self.judge_answer.format(question=question, answer=answer)

    def judge_together_prompt(self, question: str, answer: str) -> str:
        return self.judge_together.format(question=question, answer=answer)


#: The toy's templates: a role token, a template token, the fields in their tags (one token each).
TOY_TEMPLATES = Templates(
    proposer="<bos><proposer>",
    proposer_answer="<bos><proposer><with_answer>",
    proposer_reference="<bos><proposer><ref>{reference}</ref>",
    proposer_reference_answer="<bos><proposer><with_answer><ref>{reference}</ref>",
    solver="<bos><solver><question>{question}</question>",
    judge_question="<bos><judge><judge_question><question>{question}</question>",
    judge_answer="<bos><judge><judge_answer><question>{question}</question><answer>{answer}</answer>",
    judge_together="<bos><judge><judge_together><question>{question}</question><answer>{answer}</answer>",
)

_TASK_KINDS = ("logic, reading comprehension, common knowledge, symbolic mathematics, planning or "
               "instruction following")
_RUBRIC = ("Score 1-3 for any factual, logical or arithmetic error, a hallucination, heavy repetition, or a "
           "question that cannot be solved or is unsafe; 4-7 for an on-topic but incomplete or ambiguous "
           "response; 8-10 for a flawless, concise one.")

#: Natural-language templates for an instruction-tuned model (our paraphrase of the roles; each is
#: the user turn of a chat, rendered by the caller in the model's chat template).
INSTRUCT_TEMPLATES = Templates(
    proposer=("Design one new task for a capable student: self-contained, with a single deterministic answer, "
              f"and not trivial ({_TASK_KINDS}). Write the task, and nothing else, inside "
              "<question></question>."),
    proposer_answer=("Design one new task for a capable student: self-contained, with a single deterministic "
                     f"answer, and not trivial ({_TASK_KINDS}). Write the task inside <question></question>, "
                     "then its answer inside <answer></answer>; you may revise the pair up to three times, "
                     "the last pair counts."),
    proposer_reference=("Here is a reference task:\n{reference}\nDesign one new task that is a harder, controlled "
                        "variation of it: self-contained, with a single deterministic answer. Write the new task, "
                        "and nothing else, inside <question></question>."),
    proposer_reference_answer=("Here is a reference task:\n{reference}\nDesign one new task that is a harder, "
                               "controlled variation of it: self-contained, with a single deterministic answer. "
                               "Write the new task inside <question></question>, then its answer inside "
                               "<answer></answer>; you may revise the pair up to three times, the last pair "
                               "counts."),
    solver=("Solve the following task. Reason step by step, then give your final response inside "
            "<answer></answer>.\n\n{question}"),
    judge_question=("You judge the quality of a task written for a student. " + _RUBRIC + " Think inside "
                    "<think></think>, then give one integer score from 1 to 10 inside <score></score>."
                    "\n\nTask:\n{question}"),
    judge_answer=("You judge a student's answer to a task. " + _RUBRIC + " Think inside <think></think>, then "
                  "give one integer score from 1 to 10 inside <score></score>.\n\nTask:\n{question}\n\n"
                  "Answer:\n{answer}"),
    judge_together=("You judge a task and a student's answer to it. " + _RUBRIC + " Think inside "
                    "<think></think>, then give two integer scores from 1 to 10, the task's first, each inside "
                    "<score></score>.\n\nTask:\n{question}\n\nAnswer:\n{answer}"),
)


# ----------------------------------------------------------------------------------------------------
# Tokenizers: text <-> ids


class TagTokenizer:
    """The toy tokenizer: every ``<...>`` tag in ``vocab`` is one token, every other character one token.

    vocab: the token strings (``<pad>``, ``<bos>``, ``<eos>`` among them). ``decode`` drops
    ``<pad>`` / ``<bos>`` / ``<eos>`` (as ``skip_special_tokens``) and keeps role and tag tokens.
    """

    _SPLIT = re.compile(r"<[^<>\s]+>|.", re.DOTALL)

    def __init__(self, vocab: Sequence[str]):
        vocab = tuple(vocab)
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab: tokens must be unique")
        for special in ("<pad>", "<bos>", "<eos>"):
            if special not in vocab:
                raise ValueError(f"vocab: must contain {special}")
        self.vocab = vocab
        self.token_id = {token: index for index, token in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id = (self.token_id[t] for t in ("<pad>", "<bos>", "<eos>"))
        self._skip = {self.pad_id, self.bos_id, self.eos_id}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        pieces = self._SPLIT.findall(text)
        if "".join(pieces) != text:
            raise ValueError(f"encode: cannot split {text!r} into tokens")
        try:
            return [self.token_id[piece] for piece in pieces]
        except KeyError as error:
            raise ValueError(f"encode: unknown token {error.args[0]!r} in {text!r}; the vocabulary is "
                             f"{list(self.vocab)}") from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in self._skip:
                continue
            out.append(self.vocab[i] if 0 <= i < len(self.vocab) else f"<unk{i}>")
        return "".join(out)


class TextTokenizer:
    """A Hugging Face tokenizer (``jaxstack.data.tokenizer.Tokenizer`` or anything with
    ``encode(text) -> ids`` / ``decode(ids) -> text``) with the ids the roles need: ``eos_id`` (the
    end of a response, e.g. ``<|im_end|>`` for a chat model) and ``pad_id``."""

    def __init__(self, tokenizer, *, eos_id: int, pad_id: int = 0):
        self.tokenizer, self.eos_id, self.pad_id = tokenizer, int(eos_id), int(pad_id)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in (self.eos_id, self.pad_id)])
