"""Agents: SimWeb (offline simulated web), LLM clients, AgentFold folding context, GAP plan graphs.

Submodules: :mod:`~jaxstack.agents.simweb`, :mod:`~jaxstack.agents.llm`,
:mod:`~jaxstack.agents.tokens`, :mod:`~jaxstack.agents.fold`, :mod:`~jaxstack.agents.gap`,
:mod:`~jaxstack.agents.oracle`.
"""

from jaxstack.agents.fold import (
    AgentFoldResponse,
    Block,
    FoldContext,
    FoldDirective,
    FoldError,
    Step,
    parse_response,
    render_response,
    run_agentfold,
)
from jaxstack.agents.gap import (
    GapCompatSession,
    PlanGraph,
    PlanNode,
    PlanValidationError,
    em_reward,
    execute,
    parse_batched_calls,
    parse_gap_plan,
    parse_graph_xml,
    parse_llmcompiler_plan,
    topological_levels,
    validate,
)
from jaxstack.agents.llm import JaxstackModelClient, LLMClient, OpenAICompatibleClient, ScriptedPolicy
from jaxstack.agents.simweb import LatencyModel, Question, SimWeb, VirtualClock, WorldConfig
from jaxstack.agents.tokens import BPETokenCounter, ProxyTokenCounter, simweb_bpe_counter

__all__ = [
    "AgentFoldResponse", "Block", "FoldContext", "FoldDirective", "FoldError", "Step", "parse_response",
    "render_response", "run_agentfold", "GapCompatSession", "PlanGraph", "PlanNode", "PlanValidationError",
    "em_reward", "execute", "parse_batched_calls", "parse_gap_plan", "parse_graph_xml", "parse_llmcompiler_plan",
    "topological_levels", "validate", "JaxstackModelClient", "LLMClient", "OpenAICompatibleClient",
    "ScriptedPolicy", "LatencyModel", "Question", "SimWeb", "VirtualClock", "WorldConfig", "BPETokenCounter",
    "ProxyTokenCounter", "simweb_bpe_counter",
]
