"""Interpretability: interventions and capture as data (DESIGN principle 5), concept vectors.

``Intervention`` / ``Capture`` (and the edit math) live in :mod:`jaxstack.layers.interventions`, below
the models that take them as arguments (``model(tokens, positions, *, cache=None, intervention=None,
capture=None)``); they are re-exported here. :mod:`jaxstack.interp.concepts` builds concept vectors
(the introspection paper's recipe and repeng-style contrastive vectors) from captured residuals and
saves / loads them as safetensors.
"""

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
    "LayerIntervention",
    "chat_template",
    "concept_vectors",
    "contrastive_vector",
    "edit_residual",
    "last_token_residuals",
    "load_concepts",
    "save_concepts",
]
