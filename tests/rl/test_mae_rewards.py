"""Multi-Agent Evolve: the reward table (exact values), tags and scores, templates, the evolving
dataset, the toy domain and its seed file."""

import json

import numpy as np
import pytest

from jaxstack.rl.mae import (
    INSTRUCT_TEMPLATES,
    QUALITY_GATE,
    TOY_TEMPLATES,
    TOY_VOCAB,
    ArithmeticDomain,
    DemoNoise,
    QuestionBuffer,
    TagTokenizer,
    count_tag_pairs,
    default_seed_file,
    format_score,
    judge_reward,
    load_seed_questions,
    normalise_score,
    parse_score,
    proposer_reward,
    role_demos,
    solver_reward,
)

Q = "<question>12+07</question>"


def n(s):
    """A judge score s as normalised by the paper: (s - 1) / 9."""
    return (s - 1) / 9


# (case, generated proposer text, quality scores, solver scores, reward, quality, difficulty, format, keep)
PROPOSER_TABLE = [
    ("missing <question> tag -> 0", "<answer>3</answer>", [10, 10], [1, 1], 0.0, 0.0, None, 0.0, False),
    ("unclosed tag counts as missing", "<question>12+07", [10], [1], 0.0, 0.0, None, 0.0, False),
    ("gate passed, N=2 difficulty", Q, [10, 8], [1, 10], (1 + n(8)) / 2 / 3 + (1 - 0.5) / 3 + 1 / 3,
     (1 + n(8)) / 2, 0.5, 1.0, True),
    ("gate passed, N=3 difficulty", Q, [10], [1, 10, 4], 1 / 3 + (1 - (0 + 1 + n(4)) / 3) / 3 + 1 / 3,
     1.0, 1 - (0 + 1 + n(4)) / 3, 1.0, True),
    ("N=5 difficulty, all solved", Q, [9, 9, 9], [10] * 5, n(9) / 3 + 0.0 + 1 / 3, n(9), 0.0, 1.0, True),
    ("below the 0.7 gate: difficulty dropped, not kept", Q, [7, 7], [1, 1], n(7) / 3 + 1 / 3, n(7), None, 1.0,
     False),
    ("just below the gate (q = 25/36)", Q, [10, 10, 4, 5], [1], 25 / 36 / 3 + 1 / 3, 25 / 36, None, 1.0, False),
    ("two <question> pairs: format 0.5, first question used", Q + "<question>1+1</question>", [10], [1],
     1 / 3 + 1 / 3 + 0.5 / 3, 1.0, 1.0, 0.5, True),
    ("a judgment without a score counts 0", Q, [10, None], [1], 0.5 / 3 + 1 / 3, 0.5, None, 1.0, False),
    ("scores outside 1-10 are clipped", Q, [12], [0, -3], 1 / 3 + 1 / 3 + 1 / 3, 1.0, 1.0, 1.0, True),
]


@pytest.mark.parametrize("case", PROPOSER_TABLE, ids=[c[0] for c in PROPOSER_TABLE])
def test_proposer_reward_table(case):
    _, text, quality, solver, reward, q, difficulty, form, keep = case
    result = proposer_reward(text, quality, solver)
    assert result.reward == pytest.approx(reward, abs=1e-12)
    assert result.quality == pytest.approx(q, abs=1e-12)
    assert (result.difficulty is None) == (difficulty is None)
    if difficulty is not None:
        assert result.difficulty == pytest.approx(difficulty, abs=1e-12)
    assert result.format == form and result.keep == keep
    assert QUALITY_GATE == 0.7


def test_gate_is_inclusive_and_configurable():
    # q == gate passes (the rule drops the difficulty term only when q < gate)
    assert proposer_reward(Q, [7], [1], gate=n(7)).keep
    assert not proposer_reward(Q, [7], [1], gate=n(7) + 1e-9).keep
    with pytest.raises(ValueError, match="quality_scores"):
        proposer_reward(Q, [], [1])
    with pytest.raises(ValueError, match="solver_scores"):
        proposer_reward(Q, [10], [])


@pytest.mark.parametrize("text, judge, expected", [
    ("<answer>0731</answer>", 10, 1.0),
    ("<answer>0731</answer>", 1, 0.5),
    ("<answer>0731</answer>", 4, 0.5 * n(4) + 0.5),
    ("no tag at all", 10, 0.5),
    ("<answer>1</answer><answer>2</answer>", 10, 0.5 + 0.25),
    ("<answer>1</answer>", None, 0.5),
])
def test_solver_reward(text, judge, expected):
    assert solver_reward(text, judge) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text, expected_scores, expected", [
    ("<think>42</think><score>9</score>", 1, 1.0),
    ("<score>9</score><score>3</score>", 1, 0.5),
    ("<think>42</think>", 1, 0.0),
    ("<score>9", 1, 0.0),
    ("<score>9</score><score>3</score>", 2, 1.0),  # judge_together: two score tags
    ("<score>9</score>", 2, 0.0),
])
def test_judge_reward_is_format_only(text, expected_scores, expected):
    assert judge_reward(text, expected_scores) == expected


def test_format_counts_generated_pairs_only():
    # 1 / 0.5 / 0 for exactly one / more / none; the prompt is not part of the count (the released
    # code's prompt-inclusive count would call 3 pairs correct)
    assert format_score("<question>1+1</question>", "question") == 1.0
    assert format_score("<question>1+1</question><question>2+2</question>", "question") == 0.5
    assert format_score("</question>1+1<question>", "question") == 0.0
    assert count_tag_pairs("<question>a</question> x <question>b</question>", "question") == 2
    with pytest.raises(ValueError, match="tag"):
        format_score("x", "query")


@pytest.mark.parametrize("score, expected", [(1, 0.0), (10, 1.0), (7, 6 / 9), (5, 4 / 9), (0, 0.0), (11, 1.0),
                                             (None, 0.0)])
def test_judge_score_normalisation(score, expected):
    assert normalise_score(score) == pytest.approx(expected, abs=1e-15)


def test_parse_score():
    assert parse_score("<think>0731</think><score>7</score>") == 7
    assert parse_score("<score> 10 </score>") == 10
    assert parse_score("<score>seven</score>") is None
    assert parse_score("<think>x</think>") is None
    together = "<think>t</think><score>8</score><score>3</score>"
    assert parse_score(together, 0) == 8 and parse_score(together, 1) == 3 and parse_score(together, 2) is None


def test_templates_have_four_proposer_variants_and_three_judges():
    for templates in (TOY_TEMPLATES, INSTRUCT_TEMPLATES):
        variants = {templates.proposer_prompt(ref, with_answer=answer) for ref in (None, "1+2") for answer in (False, True)}
        assert len(variants) == 4
        assert "1+2" in templates.proposer_prompt("1+2") and "1+2" in templates.proposer_prompt("1+2", with_answer=True)
        judges = {templates.judge_question_prompt("q"), templates.judge_answer_prompt("q", "a"),
                  templates.judge_together_prompt("q", "a")}
        assert len(judges) == 3
    assert TOY_TEMPLATES.solver_prompt("12+07") == "<bos><solver><question>12+07</question>"
    assert "<question>" in INSTRUCT_TEMPLATES.proposer and "<answer>" in INSTRUCT_TEMPLATES.proposer_answer


def test_tag_tokenizer_round_trip_and_errors():
    tok = TagTokenizer(TOY_VOCAB)
    text = TOY_TEMPLATES.judge_answer_prompt("12+07", "910")
    ids = tok.encode(text)
    assert len(ids) == 3 + 1 + 5 + 1 + 1 + 3 + 1 and tok.decode(ids) == text.replace("<bos>", "")
    with pytest.raises(ValueError, match="unknown token"):
        tok.encode("<question>1*2</question>")
    with pytest.raises(ValueError, match="<eos>"):
        TagTokenizer(("<pad>", "<bos>", "a"))


def test_buffer_references_and_gating():
    buffer = QuestionBuffer(["1+1", "2+2"], max_evolved=2)
    rng = np.random.default_rng(0)
    for share, expected in ((0.0, 0), (0.5, 8), (1.0, 16)):
        refs = buffer.references(rng, 16, share)
        assert sum(r is not None for r in refs) == expected
        assert all(r in buffer.questions for r in refs if r is not None)
    assert sum(r is not None for r in buffer.references(rng, 5, 0.5)) == 2  # round(2.5) = 2
    # a question that passes the gate enters once; one that does not is never added by the loop
    passed, failed = proposer_reward(Q, [10], [1]), proposer_reward("<question>9+9</question>", [2], [1])
    for result in (passed, failed, passed):
        if result.keep:
            buffer.add(result.question, step=1)
    assert buffer.evolved == ["12+07"] and len(buffer) == 3
    buffer.add("3+3", 2)
    buffer.add("4+4", 3)
    assert buffer.evolved == ["3+3", "4+4"]  # the oldest evolved question dropped at max_evolved
    with pytest.raises(ValueError, match="include_references"):
        buffer.references(rng, 4, 1.5)
    with pytest.raises(ValueError, match="seeds"):
        QuestionBuffer([])


def test_domain_truth_split_and_demos():
    domain = ArithmeticDomain()
    assert domain.truth("07+35") == "240" and domain.truth("5+8") == "31" and domain.truth("999+001") == "0001"
    assert domain.is_correct("07+35", "240") and not domain.is_correct("07+35", "42")
    for bad in ("7+35", "1234+0001", "1+2+3", "+1", None):
        assert not domain.is_well_formed(bad) and domain.truth(bad) is None
    assert domain.difficulty("95+17") == {"digits": 2.0, "carries": 2.0}
    rng = np.random.default_rng(0)
    held = domain.sample_operands(rng, 200, held_out=True)
    train = domain.sample_operands(rng, 200, held_out=False)
    assert all(domain.is_held_out(*p) for p in held) and not any(domain.is_held_out(*p) for p in train)
    assert {len(q.split("+")[0]) for q in domain.questions(rng, 50, (domain.ood_width,), held_out=None)} == {3}
    for _ in range(50):
        truth = domain.truth(domain.questions(rng, 1)[0])
        wrong = domain.wrong_answer(rng, truth)
        assert wrong != truth and len(wrong) == len(truth)
        assert not domain.is_well_formed(domain.malformed_question(rng))
    demos = role_demos(domain, rng, 40, DemoNoise())
    assert all(isinstance(p, str) and isinstance(r, str) for p, r in demos)
    with pytest.raises(ValueError, match="noise.solver_wrong"):
        DemoNoise(solver_wrong=1.5)


def test_seed_file_is_local_and_never_held_out(tmp_path):
    seeds = load_seed_questions(default_seed_file())
    domain = ArithmeticDomain()
    assert len(seeds) == 96 and len(set(seeds)) == 96
    assert all(domain.is_well_formed(q) and not domain.is_held_out(*domain.parse(q)) for q in seeds)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"question": "1+1"}) + "\n" + json.dumps({"answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"seeds.jsonl:2"):
        load_seed_questions(bad)
    with pytest.raises(ValueError, match="seed_file"):
        load_seed_questions(tmp_path / "missing.jsonl")
