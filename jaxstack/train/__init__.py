"""Training: optimizers and schedules, the pure train step, checkpoints, sharding, the loop."""

from jaxstack.train.optimizers import OptimizerConfig, make_optimizer, make_schedule
from jaxstack.train.step import TrainState, init_train_state, make_batch, make_train_step, split_model, train_step
from jaxstack.train.trainer import TrainConfig, train

__all__ = [
    "OptimizerConfig",
    "TrainConfig",
    "TrainState",
    "init_train_state",
    "make_batch",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "split_model",
    "train",
    "train_step",
]
