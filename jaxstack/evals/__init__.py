"""Evaluation: lm-eval-compatible multiple-choice tasks, metrics and reports, Global PIQA.

``MultipleChoiceItem`` and ``evaluate_multiple_choice`` are the entry points (see
:mod:`jaxstack.evals.multiple_choice` for lm-evaluation-harness's metric conventions); the requests are
scored by :mod:`jaxstack.inference.scoring`.
"""

from jaxstack.evals.global_piqa import (
    evaluate_global_piqa,
    load_global_piqa,
    write_report,
)
from jaxstack.evals.multiple_choice import (
    MultipleChoiceItem,
    evaluate_multiple_choice,
    mean_stderr,
    multiple_choice_metrics,
)
from jaxstack.evals.tasks import PIQA, MultipleChoiceTask

__all__ = [
    "PIQA",
    "MultipleChoiceItem",
    "MultipleChoiceTask",
    "evaluate_global_piqa",
    "evaluate_multiple_choice",
    "load_global_piqa",
    "mean_stderr",
    "multiple_choice_metrics",
    "write_report",
]
