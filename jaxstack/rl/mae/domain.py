"""The toy's verifiable domain (integer addition), its tag vocabulary, the seed set and noisy role demos.

Questions are ``a+b`` with operands of 1 to ``max_digits`` digits; the answer is the decimal sum,
written least significant digit first (``reversed_answers``).
Ground truth (:meth:`ArithmeticDomain.truth`) exists for every question but is used only to
*measure* (accuracy, judge agreement, true difficulty) and by the GRPO upper-bound arm: the MAE
learner never sees it. In-distribution (ID) questions have operands of 1-2 digits, out-of-
distribution (OOD) ones of 3. A fixed share of the ID operand pairs (:meth:`ArithmeticDomain.is_held_out`)
is held out for evaluation: no seed question and no demonstration uses them.

The policy first learns to play the three roles from *noisy* demonstrations (:func:`role_demos`):
malformed questions, wrong solver answers, judges whose own arithmetic is wrong and whose score
follows it. The judge's ``<think>`` is a digit-by-digit check (:func:`check_digits`: its own digit,
then ``=`` or ``!`` against the candidate's), then a high score (8-10) when nothing mismatched and a
low one (1-3) otherwise. The error rates are :class:`DemoNoise` fields.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence
from importlib import resources

import numpy as np

from jaxstack.data.jsonl import jsonl_objects
from jaxstack.rl.mae.protocol import TOY_TEMPLATES, Templates, first_tag

#: The toy vocabulary: specials, digits, '+', role and template tokens, the four tag pairs.
TOY_VOCAB = (
    "<pad>", "<bos>", "<eos>",
    *"0123456789", "+", "=", "!",
    "<proposer>", "<solver>", "<judge>", "<with_answer>", "<ref>", "</ref>",
    "<judge_question>", "<judge_answer>", "<judge_together>",
    "<question>", "</question>", "<answer>", "</answer>", "<think>", "</think>", "<score>", "</score>",
)

SEED_FILE = "seed_questions.jsonl"


def default_seed_file() -> pathlib.Path:
    """The seed questions shipped with the package (96 ID additions, none held out)."""
    return pathlib.Path(str(resources.files("jaxstack.rl.mae") / SEED_FILE))


def load_seed_questions(path: str | pathlib.Path) -> list[str]:
    """Seed questions from a local JSONL file, one ``{"question": "<text>"}`` object per line (other
    keys are ignored: an answer, if present, is never read). Raises ValueError naming the file and
    line of a bad record."""
    questions = []
    for number, record in jsonl_objects(path, "seed_file"):
        if not isinstance(record.get("question"), str) or not record["question"].strip():
            raise ValueError(f"seed_file: {path}:{number}: expected an object with a non-empty string 'question'")
        questions.append(record["question"].strip())
    if not questions:
        raise ValueError(f"seed_file: {path} holds no questions")
    return questions


@dataclasses.dataclass(frozen=True)
class ArithmeticDomain:
    """Addition questions ``a+b`` with both operands zero-padded to one width w (``07+35``).

    Well-formed: two operands of the same width w in 1..``max_width``. The answer is the sum as w + 1
    digits, least significant first (``07+35`` -> 42 -> ``042`` -> ``240``): the fixed-width reversed
    format small transformers learn quickly (Lee et al. 2023, "Teaching arithmetic to small
    transformers"). ID: widths ``id_widths``; OOD: width ``ood_width`` (longer operands).
    """

    max_width: int = 3
    id_widths: tuple[int, ...] = (1, 2)
    ood_width: int = 3
    held_out_modulus: int = 8

    def __post_init__(self):
        if self.max_width < 1:
            raise ValueError(f"domain.max_width: expected >= 1, got {self.max_width}")
        if not self.id_widths or any(not 1 <= w <= self.max_width for w in self.id_widths):
            raise ValueError(f"domain.id_widths: expected widths in [1, {self.max_width}], got {self.id_widths}")
        if not 1 <= self.ood_width <= self.max_width:
            raise ValueError(f"domain.ood_width: expected a width in [1, {self.max_width}], got {self.ood_width}")
        if self.held_out_modulus < 2:
            raise ValueError(f"domain.held_out_modulus: expected >= 2, got {self.held_out_modulus}")

    def question(self, a: int, b: int, width: int) -> str:
        return f"{a:0{width}d}+{b:0{width}d}"

    def parse(self, question: str | None) -> tuple[int, int, int] | None:
        """(a, b, width) of a well-formed question, else None."""
        if question is None:
            return None
        match = re.fullmatch(rf"(\d{{1,{self.max_width}}})\+(\d{{1,{self.max_width}}})", question.strip())
        if not match or len(match.group(1)) != len(match.group(2)):
            return None
        return int(match.group(1)), int(match.group(2)), len(match.group(1))

    def is_well_formed(self, question: str | None) -> bool:
        return self.parse(question) is not None

    def format_answer(self, value: int, width: int) -> str:
        """The answer text of a sum of two width-w operands: w + 1 digits, least significant first
        (a value with more digits is cut to the lowest w + 1)."""
        return f"{int(value) % 10 ** (width + 1):0{width + 1}d}"[::-1]

    def truth(self, question: str | None) -> str | None:
        """The ground-truth answer text of a well-formed question, else None."""
        parsed = self.parse(question)
        return None if parsed is None else self.format_answer(parsed[0] + parsed[1], parsed[2])

    def is_correct(self, question: str | None, answer: str | None) -> bool:
        """The answer text is exactly the ground truth."""
        truth = self.truth(question)
        return truth is not None and answer is not None and answer.strip() == truth

    def difficulty(self, question: str | None) -> dict[str, float] | None:
        """Ground-truth difficulty features of a well-formed question: operand width, carries."""
        parsed = self.parse(question)
        if parsed is None:
            return None
        a, b, width = parsed
        carries, carry = 0, 0
        for _ in range(width):
            carry = int(a % 10 + b % 10 + carry >= 10)
            carries += carry
            a, b = a // 10, b // 10
        return {"digits": float(width), "carries": float(carries)}

    def is_held_out(self, a: int, b: int, width: int) -> bool:
        """The ID evaluation split: a fixed 1/``held_out_modulus`` share of the operand pairs of each
        ID width (width 1 has 100 pairs: its held-out share is small and a few pairs)."""
        return (a * 7919 + b * 104729 + width * 31) % self.held_out_modulus == 0

    def sample_operands(self, rng: np.random.Generator, n: int, widths: Sequence[int] | None = None, *,
                        held_out: bool | None = False) -> list[tuple[int, int, int]]:
        """n (a, b, width) draws: width uniform over ``widths`` (default ``id_widths``), operands
        uniform in [0, 10^w). held_out: False = training pairs only, True = evaluation pairs only,
        None = either (widths outside ``id_widths`` are never split)."""
        widths = tuple(self.id_widths if widths is None else widths)
        if not widths or any(not 1 <= w <= self.max_width for w in widths):
            raise ValueError(f"widths: expected widths in [1, {self.max_width}], got {widths}")
        out = []
        while len(out) < n:
            width = int(widths[int(rng.integers(len(widths)))])
            a, b = (int(x) for x in rng.integers(0, 10 ** width, size=2))
            if held_out is not None and width in self.id_widths and self.is_held_out(a, b, width) != held_out:
                continue
            out.append((a, b, width))
        return out

    def questions(self, rng: np.random.Generator, n: int, widths: Sequence[int] | None = None, *,
                  held_out: bool | None = False) -> list[str]:
        return [self.question(a, b, w) for a, b, w in self.sample_operands(rng, n, widths, held_out=held_out)]

    def wrong_answer(self, rng: np.random.Generator, truth: str) -> str:
        """A plausible wrong answer text of the same length: the sum off by a small amount, or one digit changed."""
        width = len(truth) - 1
        value = int(truth[::-1])
        while True:
            if rng.random() < 0.5:
                candidate = (value + int(rng.choice([-10, -2, -1, 1, 2, 10]))) % 10 ** (width + 1)
            else:
                digits = list(truth)
                digits[int(rng.integers(len(digits)))] = str(int(rng.integers(10)))
                candidate = int("".join(digits)[::-1])
            if candidate != value:
                return self.format_answer(candidate, width)

    def malformed_question(self, rng: np.random.Generator) -> str:
        """A question that is not well-formed (a missing or extra operand, unequal widths, too wide)."""
        a, b, c = (str(int(rng.integers(0, 100))).zfill(2) for _ in range(3))
        kind = int(rng.integers(6))
        return [f"{a}+", f"+{b}", f"{a}{b}", f"{a}+{b}+{c}", f"{a}+{b[0]}", f"{a}{b}+{c}{a}"][kind]

    def harder_variant(self, rng: np.random.Generator, reference: str) -> str:
        """A harder controlled variation of a reference question: both operands one digit wider (up
        to ``max_width``: a new leading digit each), else one digit pair changed to force a carry."""
        parsed = self.parse(reference)
        a, b, width = parsed if parsed is not None else self.sample_operands(rng, 1)[0]
        if width < self.max_width:
            lead_a, lead_b = (int(x) for x in rng.integers(1, 10, size=2))
            return self.question(lead_a * 10 ** width + a, lead_b * 10 ** width + b, width + 1)
        position = 10 ** int(rng.integers(width))
        digit_a, digit_b = (int(x) for x in rng.integers(5, 10, size=2))
        a = a - (a // position % 10) * position + digit_a * position
        b = b - (b // position % 10) * position + digit_b * position
        return self.question(a, b, width)


@dataclasses.dataclass(frozen=True)
class DemoNoise:
    """Error rates of the role demonstrations. proposer_malformed: a malformed question;
    solver_wrong: a wrong answer; judge_arithmetic: the judge's own sum (``<think>``) is wrong and
    its score follows it; judge_flip: the score band is flipped; question_flip: the question-quality
    score band is flipped."""

    proposer_malformed: float = 0.15
    solver_wrong: float = 0.3
    judge_arithmetic: float = 0.2
    judge_flip: float = 0.05
    question_flip: float = 0.1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise.{field.name}: expected a probability in [0, 1], got {value}")


#: Shares of the role demonstrations in an SFT batch.
DEMO_SHARES = {"proposer": 0.12, "proposer_reference": 0.08, "proposer_answer": 0.05, "solver": 0.35,
               "judge_answer": 0.28, "judge_question": 0.12}


def check_digits(own: str, candidate: str) -> str:
    """The judge's digit-by-digit check (its ``<think>``): for each digit of its own answer, the digit
    then ``=`` if the candidate has the same digit there, else ``!``; one more ``!`` if the candidate
    is longer. ``check_digits("240", "241") == "2=4=0!"``."""
    marks = [d + ("=" if i < len(candidate) and candidate[i] == d else "!") for i, d in enumerate(own)]
    return "".join(marks) + ("!" if len(candidate) > len(own) else "")


def _high(rng) -> int:
    return int(rng.integers(8, 11))


def _low(rng) -> int:
    return int(rng.integers(1, 4))


def role_demo(kind: str, domain: ArithmeticDomain, rng: np.random.Generator, noise: DemoNoise,
              templates: Templates = TOY_TEMPLATES) -> tuple[str, str]:
    """One (prompt, response) demonstration text of role ``kind`` (a :data:`DEMO_SHARES` key)."""
    question = domain.questions(rng, 1)[0]
    if kind in ("proposer", "proposer_reference", "proposer_answer"):
        reference = question if kind == "proposer_reference" else None
        prompt = templates.proposer_prompt(reference, with_answer=kind == "proposer_answer")
        new = domain.harder_variant(rng, reference) if reference else domain.questions(rng, 1)[0]
        if rng.random() < noise.proposer_malformed:
            new = domain.malformed_question(rng)
        response = f"<question>{new}</question>"
        if kind == "proposer_answer":
            truth = domain.truth(new) or "0"
            response += f"<answer>{domain.wrong_answer(rng, truth) if rng.random() < noise.solver_wrong else truth}</answer>"
        return prompt, response
    if kind == "solver":
        truth = domain.truth(question)
        answer = domain.wrong_answer(rng, truth) if rng.random() < noise.solver_wrong else truth
        return templates.solver_prompt(question), f"<answer>{answer}</answer>"
    if kind == "judge_answer":
        truth = domain.truth(question)
        answer = truth if rng.random() < 0.5 else domain.wrong_answer(rng, truth)
        own = domain.wrong_answer(rng, truth) if rng.random() < noise.judge_arithmetic else truth
        accept = (answer == own) != (rng.random() < noise.judge_flip)
        score = _high(rng) if accept else _low(rng)
        return (templates.judge_answer_prompt(question, answer),
                f"<think>{check_digits(own, answer)}</think><score>{score}</score>")
    if kind == "judge_question":
        if rng.random() < 0.7:
            shown = question if rng.random() < 0.7 else domain.questions(rng, 1, (domain.ood_width,), held_out=None)[0]
        else:
            shown = domain.malformed_question(rng)
        accept = domain.is_well_formed(shown) != (rng.random() < noise.question_flip)
        return templates.judge_question_prompt(shown), f"<score>{_high(rng) if accept else _low(rng)}</score>"
    raise ValueError(f"kind: unknown demonstration kind {kind!r}; expected one of {list(DEMO_SHARES)}")


def role_demos(domain: ArithmeticDomain, rng: np.random.Generator, n: int, noise: DemoNoise,
               templates: Templates = TOY_TEMPLATES, shares: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """n demonstrations, kinds drawn with probabilities ``shares`` (default :data:`DEMO_SHARES`)."""
    shares = DEMO_SHARES if shares is None else shares
    kinds = list(shares)
    p = np.array([shares[k] for k in kinds], np.float64)
    draws = rng.choice(len(kinds), size=n, p=p / p.sum())
    return [role_demo(kinds[i], domain, rng, noise, templates) for i in draws]


def answer_of(generated: str) -> str:
    """The solver's answer text (the first ``<answer>`` content, "" when there is none)."""
    return first_tag(generated, "answer") or ""


def write_seed_file(path: str | pathlib.Path, questions: Sequence[str]) -> None:
    """Writes questions as a seed JSONL file (``scripts``/tests regenerate the shipped one with it)."""
    pathlib.Path(path).write_text("".join(json.dumps({"question": q}) + "\n" for q in questions), encoding="utf-8")
