"""Evaluation: lm-eval-compatible log-likelihood multiple-choice scoring, task definitions, Global PIQA.

``MultipleChoiceItem``, ``loglikelihoods`` and ``evaluate_multiple_choice`` are the entry points; see
:mod:`jaxstack.evals.scoring` for the conventions (all lm-evaluation-harness's).
"""

from jaxstack.evals.global_piqa import (
    evaluate_global_piqa,
    load_global_piqa,
    write_report,
)
from jaxstack.evals.guard import EvalDataError, assert_not_eval_data
from jaxstack.evals.scoring import (
    LoglikelihoodScorer,
    MultipleChoiceItem,
    encode_pair,
    encode_pairs,
    evaluate_multiple_choice,
    loglikelihoods,
    mean_stderr,
    multiple_choice_metrics,
)
from jaxstack.evals.tasks import PIQA, MultipleChoiceTask

__all__ = [
    "PIQA",
    "EvalDataError",
    "LoglikelihoodScorer",
    "MultipleChoiceItem",
    "MultipleChoiceTask",
    "assert_not_eval_data",
    "encode_pair",
    "encode_pairs",
    "evaluate_global_piqa",
    "evaluate_multiple_choice",
    "load_global_piqa",
    "loglikelihoods",
    "mean_stderr",
    "multiple_choice_metrics",
    "write_report",
]
