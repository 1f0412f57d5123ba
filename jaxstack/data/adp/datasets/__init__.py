"""Raw converters for the agent datasets, by registry name.

=====================  =========================================  ====================
name                   source                                     API stubs
=====================  =========================================  ====================
``agenttuning_os``     THUDM/AgentInstruct (OS subset)            none (bash code)
``agenttuning_db``     THUDM/AgentInstruct (DB subset)            none (sql code)
``code_feedback``      m-a-p/Code-Feedback                        none (fenced code)
``codeactinstruct``    xingyaoww/code-act                         none (python code)
``orca_agentinstruct`` microsoft/orca-agentinstruct-1M-v1         none (fenced code)
``synatra``            oottyy/Synatra                             browser actions
``swe_gym``            SWE-Gym/SWE-Gym                            str_replace_editor, think
``swe_smith``          SWE-bench/SWE-smith-trajectories           str_replace_editor, submit
``nebius_swe_agent``   nebius/SWE-agent-trajectories              SWE-agent commands
=====================  =========================================  ====================

Nothing is downloaded: converters read local JSONL in each dataset's raw shape.
"""

from __future__ import annotations

from jaxstack.data.adp.datasets.agenttuning import DB_SPEC, OS_SPEC
from jaxstack.data.adp.datasets.base import DatasetSpec
from jaxstack.data.adp.datasets.chat_code import (
    CODE_FEEDBACK_SPEC,
    CODEACTINSTRUCT_SPEC,
    ORCA_SPEC,
)
from jaxstack.data.adp.datasets.swe import NEBIUS_SPEC, SWE_GYM_SPEC, SWE_SMITH_SPEC
from jaxstack.data.adp.datasets.synatra import SPEC as SYNATRA_SPEC

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        OS_SPEC,
        DB_SPEC,
        CODE_FEEDBACK_SPEC,
        CODEACTINSTRUCT_SPEC,
        ORCA_SPEC,
        SYNATRA_SPEC,
        SWE_GYM_SPEC,
        SWE_SMITH_SPEC,
        NEBIUS_SPEC,
    )
}
"""Every raw converter, keyed by dataset name."""


def get_dataset(name: str) -> DatasetSpec:
    """The converter of dataset ``name``; a ``KeyError`` lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown ADP dataset {name!r}; expected one of {sorted(DATASETS)}") from None


__all__ = ["DATASETS", "DatasetSpec", "get_dataset"]
