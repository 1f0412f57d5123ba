"""Named toy training set-ups (model, optimizer and trainer settings together) shared by experiments.

``CHAT_SFT_TINY`` is the chat-SFT toy of the ADP and AgentFold experiments: a model trained from scratch
on a few thousand tokens of chat records in CPU minutes, to show a fine-tuning pipeline runs and the
loss falls, not to measure anything about the model.
"""

from __future__ import annotations

import dataclasses

from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainingPreset:
    """A model config with the optimizer and trainer settings it is meant to be trained with."""

    model: LlamaConfig
    optimizer: OptimizerConfig
    train: TrainConfig


CHAT_SFT_TINY = TrainingPreset(
    # ~0.7M parameters: SmolLM2-shaped (GQA 2:1, tied embeddings), vocab filled by the BPE.
    model=get_config("smollm2-tiny", vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=3,
                     num_heads=4, num_kv_heads=2, max_position_embeddings=1024),
    optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=20, decay_fraction=0.2),
    # 60 steps x 2 rows x 1024 tokens (~25 passes over ADP's ~5k training tokens): ~2-4 minutes on 2 CPU cores.
    train=TrainConfig(steps=60, batch_size=2, seq_len=1024, log_every=2, eval_every=10, eval_batches=4,
                      checkpoint_every=60, keep_checkpoints=1),
)
