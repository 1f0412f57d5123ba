"""Multi-Agent Evolve (Chen et al., arXiv 2510.23595): proposer, solver and judge from one policy,
co-trained with RL and no human labels (shared/refs/rl.md section 2).

* :mod:`.protocol`: tags, the format score (the paper's count), judge scores (1-10, (s - 1) / 9),
  the prompt templates (four proposer variants, three judge templates), the toy tag tokenizer;
* :mod:`.rewards`: proposer / solver / judge rewards with the 0.7 quality gate, Task-Relative
  REINFORCE++ advantages (token- or sequence-weighted), the per-role loss;
* :mod:`.buffer`: the evolving question dataset with reference sampling;
* :mod:`.domain`: the toy's verifiable domain (addition), its vocabulary, the seed file, noisy demos;
* :mod:`.selfplay`: the MAE step on the RL engines (mixed-length rollouts, one gradient per role
  batch, one update), the controls, GRPO on the true checker, SFT and ground-truth evaluation.
"""

from jaxstack.rl.mae.buffer import QuestionBuffer
from jaxstack.rl.mae.domain import (
    TOY_VOCAB,
    ArithmeticDomain,
    DemoNoise,
    default_seed_file,
    load_seed_questions,
    role_demos,
)
from jaxstack.rl.mae.protocol import (
    INSTRUCT_TEMPLATES,
    ROLES,
    TOY_TEMPLATES,
    TagTokenizer,
    Templates,
    TextTokenizer,
    count_tag_pairs,
    format_score,
    normalise_score,
    parse_score,
)
from jaxstack.rl.mae.rewards import (
    QUALITY_GATE,
    ProposerReward,
    judge_reward,
    proposer_reward,
    role_loss,
    solver_reward,
    task_relative_advantages,
)
from jaxstack.rl.mae.selfplay import (
    MAEConfig,
    MAEState,
    RoleSetup,
    grpo_step,
    init_state,
    judge_agreement,
    judge_probes,
    mae_step,
    sft_roles,
    solver_accuracy,
    step,
)

__all__ = [
    "INSTRUCT_TEMPLATES", "QUALITY_GATE", "ROLES", "TOY_TEMPLATES", "TOY_VOCAB", "ArithmeticDomain", "DemoNoise",
    "MAEConfig", "MAEState", "ProposerReward", "QuestionBuffer", "RoleSetup", "TagTokenizer", "Templates",
    "TextTokenizer", "count_tag_pairs", "default_seed_file", "format_score", "grpo_step", "init_state",
    "judge_agreement", "judge_probes", "judge_reward", "load_seed_questions", "mae_step", "normalise_score",
    "parse_score", "proposer_reward", "role_demos", "role_loss", "sft_roles", "solver_accuracy", "solver_reward",
    "step", "task_relative_advantages",
]
