"""GAP plan graphs: plan formats, validation, a parallel executor, and the EM reward.

* ``plan.py``: the intermediate representation :class:`PlanGraph` (a tuple of :class:`PlanNode`
  ``{id, tool, args, depends_on}``), ``$id`` / ``{id}`` placeholders, :func:`validate`,
  :func:`topological_levels`, :func:`critical_path`, :func:`llm_turns`;
* ``formats.py``: parsers into a :class:`PlanGraph` (GAP's ``<plan>`` text, GAP's ``|``-batched tool
  tags, LLMCompiler's numbered plan, the paper's ``<graph>`` XML) and renderers back;
* ``executor.py``: :func:`execute` / :func:`execute_async` under the ``"sequential"``, ``"level"`` and
  ``"eager"`` schedules, in virtual or real time, and :class:`GapCompatSession` (GAP's turn runtime);
* ``reward.py``: :func:`em_reward`, GAP's binary exact-match reward;
* ``loop.py``: :func:`run_episode`, the agent loop every regime goes through (LLM call, parse,
  execute, observe), counting LLM calls, tool calls, makespans and tokens; :class:`ModelTime`, the
  stated (simulated) model latency;
* ``policy.py``: :class:`NoisyPlanner`, a planning policy with a stated error model
  (:class:`PolicyErrors`: missed dependencies, wrong tool arguments, premature answers).
"""

from jaxstack.agents.gap.executor import (DUPLICATE_QUERY_RESPONSE, ExecutionReport, GapCompatSession,
                                          NodeResult, execute, execute_async)
from jaxstack.agents.gap.formats import (PlanParseError, parse_batched_calls, parse_gap_plan, parse_graph_xml,
                                         parse_llmcompiler_plan, render_gap_plan, render_llmcompiler_plan,
                                         stop_strings)
from jaxstack.agents.gap.loop import (SCHEDULES, Episode, ModelTime, TurnStats, parse_observations,
                                      render_observations, run_episode)
from jaxstack.agents.gap.plan import (LOCAL_TOOLS, PlanGraph, PlanNode, PlanValidationError, critical_path,
                                      llm_turns, placeholders, substitute, tool_nodes, topological_levels,
                                      validate)
from jaxstack.agents.gap.policy import NoisyPlanner, PolicyErrors
from jaxstack.agents.gap.reward import em_reward, normalize_answer

__all__ = [
    "PlanNode",
    "PlanGraph",
    "PlanValidationError",
    "PlanParseError",
    "LOCAL_TOOLS",
    "parse_gap_plan",
    "render_gap_plan",
    "parse_batched_calls",
    "parse_llmcompiler_plan",
    "render_llmcompiler_plan",
    "parse_graph_xml",
    "stop_strings",
    "placeholders",
    "substitute",
    "validate",
    "topological_levels",
    "critical_path",
    "NodeResult",
    "ExecutionReport",
    "execute",
    "execute_async",
    "GapCompatSession",
    "DUPLICATE_QUERY_RESPONSE",
    "normalize_answer",
    "em_reward",
    "llm_turns",
    "tool_nodes",
    "SCHEDULES",
    "ModelTime",
    "TurnStats",
    "Episode",
    "run_episode",
    "render_observations",
    "parse_observations",
    "PolicyErrors",
    "NoisyPlanner",
]
