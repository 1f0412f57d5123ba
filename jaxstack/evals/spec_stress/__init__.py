"""Stress-testing model specs (Zhang et al., arXiv 2510.07686): value-tradeoff scenarios, a model panel,
0-6 value spectra, disagreement, compliance.

Stages, each resumable where it calls a model: :mod:`~jaxstack.evals.spec_stress.scenarios` (taxonomy,
value pairs, prompts B.1 / B.2, filtering, k-center de-duplication on embeddings),
:mod:`~jaxstack.evals.spec_stress.panel` (N models answer every scenario: local jaxstack models,
steered variants, OpenAI-compatible endpoints; answers appended to JSONL),
:mod:`~jaxstack.evals.spec_stress.classify` (B.3 rubric, B.4 classifier and B.6 compliance through a
judge with strict JSON; a deterministic log-likelihood classifier), :mod:`~jaxstack.evals.spec_stress.metrics`
(D, bins, outliers, weighted k-center, fingerprints, majority vote, Fleiss' kappa) and
:mod:`~jaxstack.evals.spec_stress.dataset` (the released dataset from a local Parquet copy, the
paper's numbers). :mod:`~jaxstack.evals.spec_stress.toy` is the toy spec world of
``jaxstack run spec-stress --preset tiny``.
"""

from jaxstack.evals.spec_stress import metrics
from jaxstack.evals.spec_stress.dataset import MODEL_KEYS, PAPER, DatasetError, load_dataset, paper_table, recompute
from jaxstack.evals.spec_stress.metrics import disagreement, fleiss_kappa, kcenter_select, outliers

__all__ = ["MODEL_KEYS", "PAPER", "DatasetError", "disagreement", "fleiss_kappa", "kcenter_select", "load_dataset",
           "metrics", "outliers", "paper_table", "recompute"]
