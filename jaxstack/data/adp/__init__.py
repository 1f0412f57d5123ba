"""Agent Data Protocol (ADP; neulab, arXiv 2510.24702) for jaxstack.

Raw agent datasets -> validated ADP trajectories -> SFT data for a harness, with statistics,
quality checks and the paper's mixture rule. Nothing is downloaded; everything streams JSONL.

* :mod:`~jaxstack.data.adp.schema`: the pydantic schema (release 1.0 exactly; 1.2 behind
  ``version="1.2"``), JSON Schema export, error formatting.
* :mod:`~jaxstack.data.adp.datasets`: raw schemas, converters and API stubs per dataset
  (:data:`DATASETS`).
* :mod:`~jaxstack.data.adp.exporters`: ``openhands``, ``sweagent`` and ``chat`` SFT exporters,
  and the parser of chat actions back into ADP.
* :mod:`~jaxstack.data.adp.quality`, :mod:`~jaxstack.data.adp.stats`,
  :mod:`~jaxstack.data.adp.mixture`: SFT checks, Table-2 statistics, ``ceil(w * n)`` mixtures.
* :mod:`~jaxstack.data.adp.sft`: chat template, loss mask and packing (model-free).
* :mod:`~jaxstack.data.adp.cli`: ``jaxstack adp convert|validate|export|qc|stats|mix|schema``.
"""

from jaxstack.data.adp.api import ApiBindingError, ApiStubs
from jaxstack.data.adp.datasets import DATASETS, DatasetSpec, get_dataset
from jaxstack.data.adp.exporters import (
    EXPORTERS,
    ActionParseError,
    ExportError,
    action_parse_rate,
    export_trajectory,
    parse_action,
    render_action,
    to_chat,
    to_openhands,
    to_sweagent,
)
from jaxstack.data.adp.languages import CODE_LANGUAGES
from jaxstack.data.adp.mixture import (
    PAPER_WEIGHTS,
    mixture_count,
    mixture_plan,
    sample_indices,
)
from jaxstack.data.adp.quality import QualityReport, check_conversations
from jaxstack.data.adp.schema import (
    SCHEMA_VERSIONS,
    ApiAction,
    ApiActionV12,
    BoundingBox,
    CodeAction,
    CodeActionV12,
    ImageAnnotation,
    ImageObservation,
    ImageObservationV12,
    MessageAction,
    MessageActionV12,
    TextObservation,
    TextObservationV12,
    Trajectory,
    TrajectoryV12,
    WebObservation,
    WebObservationV12,
    downgrade,
    finish_content,
    finish_message,
    format_validation_error,
    json_schema,
    trajectory_model,
    upgrade,
    validate_trajectory,
)
from jaxstack.data.adp.stats import DatasetStats, dataset_stats, overall, stats_table
from jaxstack.data.adp.stream import (
    ConversionError,
    RowProblem,
    SkipRow,
    StreamReport,
    convert_stream,
    map_stream,
    validate_stream,
)

__all__ = [
    "CODE_LANGUAGES",
    "DATASETS",
    "EXPORTERS",
    "PAPER_WEIGHTS",
    "SCHEMA_VERSIONS",
    "ActionParseError",
    "ApiAction",
    "ApiActionV12",
    "ApiBindingError",
    "ApiStubs",
    "BoundingBox",
    "CodeAction",
    "CodeActionV12",
    "ConversionError",
    "DatasetSpec",
    "DatasetStats",
    "ExportError",
    "ImageAnnotation",
    "ImageObservation",
    "ImageObservationV12",
    "MessageAction",
    "MessageActionV12",
    "QualityReport",
    "RowProblem",
    "SkipRow",
    "StreamReport",
    "TextObservation",
    "TextObservationV12",
    "Trajectory",
    "TrajectoryV12",
    "WebObservation",
    "WebObservationV12",
    "action_parse_rate",
    "check_conversations",
    "convert_stream",
    "dataset_stats",
    "downgrade",
    "export_trajectory",
    "finish_content",
    "finish_message",
    "format_validation_error",
    "get_dataset",
    "json_schema",
    "map_stream",
    "mixture_count",
    "mixture_plan",
    "overall",
    "parse_action",
    "render_action",
    "sample_indices",
    "stats_table",
    "to_chat",
    "to_openhands",
    "to_sweagent",
    "trajectory_model",
    "upgrade",
    "validate_stream",
    "validate_trajectory",
]
