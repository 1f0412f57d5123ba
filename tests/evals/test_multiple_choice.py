"""Multiple-choice metrics on hand-computed cases, item validation, and the records of an evaluation
(whose log-likelihoods are the scorer's)."""

import math

import pytest

from jaxstack.evals import multiple_choice
from jaxstack.evals.multiple_choice import MultipleChoiceItem, evaluate_multiple_choice, multiple_choice_metrics
from jaxstack.inference.scoring import loglikelihoods


def test_metrics_hand_computed():
    items = [
        MultipleChoiceItem("q1", ("ab", "日本"), 1),  # chars 2, 2; bytes 2, 6
        MultipleChoiceItem("q2", ("a", "bbbb"), 1),  # chars 1, 4; bytes 1, 4
    ]
    result = multiple_choice_metrics([[-4.0, -5.0], [-2.0, -4.0]], items)
    # item 1: acc argmax(-4,-5)=0 wrong; norm (-2,-2.5)=0 wrong; bytes (-2,-0.83)=1 right
    # item 2: acc 0 wrong; norm (-2,-1)=1 right; bytes (-2,-1)=1 right
    assert [r["acc"] for r in result["records"]] == [0.0, 0.0]
    assert [r["acc_norm"] for r in result["records"]] == [0.0, 1.0]
    assert [r["acc_bytes"] for r in result["records"]] == [1.0, 1.0]
    assert (result["acc"], result["acc_norm"], result["acc_bytes"]) == (0.0, 0.5, 1.0)
    # sample std (ddof=1) of [0, 1] is 1/sqrt(2); / sqrt(2) -> 0.5 exactly
    assert result["acc_norm_stderr"] == pytest.approx(0.5, abs=1e-12)
    assert result["acc_stderr"] == 0.0 and result["acc_bytes_stderr"] == 0.0
    assert math.isnan(multiple_choice.mean_stderr([1.0]))


def test_item_validation():
    with pytest.raises(ValueError, match="label: expected an integer in \\[0, 2\\)"):
        MultipleChoiceItem("c", ("a", "b"), 2)
    with pytest.raises(ValueError, match="choices: expected a tuple of at least 2"):
        MultipleChoiceItem("c", ("a",), 0)
    with pytest.raises(ValueError, match="items\\[0\\]: expected a MultipleChoiceItem"):
        evaluate_multiple_choice(None, None, [("c", ("a", "b"), 0)])


def test_evaluate_multiple_choice_records(random_model, tokenizer):
    items = [MultipleChoiceItem("The cat sat on the", ("mat.", "moon, far away."), 0, {"id": "x"}),
             MultipleChoiceItem("Water boils at", ("100 degrees.", "minus five."), 0)]
    result = evaluate_multiple_choice(random_model, tokenizer, items, progress=False)
    direct = loglikelihoods(random_model, tokenizer, multiple_choice.multiple_choice_requests(items), progress=False)
    assert [ll for r in result["records"] for ll in r["loglikelihoods"]] == [ll for ll, _ in direct]
    assert result["records"][0]["meta"] == {"id": "x"} and result["n"] == 2
    for key in ("acc", "acc_norm", "acc_bytes", "acc_stderr", "acc_norm_stderr", "acc_bytes_stderr", "n_truncated"):
        assert key in result
