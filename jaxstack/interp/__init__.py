"""Interpretability: interventions and capture as data (DESIGN principle 5), concept vectors.

``Intervention`` / ``Capture`` (and the edit math) live in :mod:`jaxstack.layers.interventions`, below
the models that take them as arguments (``model(tokens, positions, *, cache=None, intervention=None,
capture=None)``); they are re-exported here. :mod:`jaxstack.interp.concepts` builds concept vectors
(the introspection paper's recipe and repeng-style contrastive vectors) from captured residuals and
saves / loads them as safetensors.

The introspection paper's experiments (``jaxstack run introspection``): :mod:`~jaxstack.interp.protocol`
(its prompts, word lists and settings as constants; injection windows), :mod:`~jaxstack.interp.trials`
(batched trials with per-row edits), :mod:`~jaxstack.interp.introspection` (the four experiments as
procedures on any model), :mod:`~jaxstack.interp.grading` (the four criteria: an LLM judge or rules),
:mod:`~jaxstack.interp.metrics` (judge-free logit metrics, probes, SEM), :mod:`~jaxstack.interp.analysis`
(records -> rates per layer and strength) and :mod:`~jaxstack.interp.concept_world` (the toy world).
"""

from jaxstack.interp import (
    analysis,
    concept_world,
    grading,
    introspection,
    metrics,
    protocol,
    trials,
)
from jaxstack.interp.concepts import (
    DEFAULT_TEMPLATE,
    ConceptFileError,
    ConceptVectors,
    chat_template,
    concept_vectors,
    contrastive_vector,
    last_token_residuals,
    load_concepts,
    save_concepts,
)
from jaxstack.interp.grading import LLMGrader, RuleGrader, make_grader
from jaxstack.interp.introspection import (
    concept_vectors_all_layers,
    injected_thoughts,
    intentional_control,
    prefill_detection,
    thoughts_vs_text,
)
from jaxstack.interp.trials import TrialRunner
from jaxstack.layers.interventions import (
    NO_END,
    Capture,
    Intervention,
    LayerIntervention,
    edit_residual,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "NO_END",
    "Capture",
    "ConceptFileError",
    "ConceptVectors",
    "Intervention",
    "LLMGrader",
    "LayerIntervention",
    "RuleGrader",
    "TrialRunner",
    "analysis",
    "chat_template",
    "concept_vectors",
    "concept_vectors_all_layers",
    "concept_world",
    "contrastive_vector",
    "edit_residual",
    "grading",
    "injected_thoughts",
    "intentional_control",
    "introspection",
    "last_token_residuals",
    "load_concepts",
    "make_grader",
    "metrics",
    "prefill_detection",
    "protocol",
    "save_concepts",
    "thoughts_vs_text",
    "trials",
]
