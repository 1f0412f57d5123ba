"""A mistyped override names the flag exactly as typed (``--train.steps``, not ``--steps``), whether
its value does not parse, its field does not exist, or the config's own checks reject the value."""

from __future__ import annotations

import pytest

from jaxstack.cli import main
from jaxstack.config import apply_overrides
from jaxstack.train.trainer import TrainConfig


@pytest.mark.parametrize("flag, message", [
    ("--train.steps=many", "--train.steps: expected an integer, got 'many'"),
    ("--train.stepz=3", "--train.stepz: unknown field 'stepz'"),
    ("--train.steps=0", "--train.steps: expected a positive integer, got 0"),
    ("--train.mesh=2,x,1", "--train.mesh: expected an integer, got 'x'"),
    ("--optimizer.learning_rate=fast", "--optimizer.learning_rate: expected a number, got 'fast'"),
    ("--model.num_layers=two", "--model.num_layers: expected an integer, got 'two'"),
])
def test_train_flag_errors_name_the_flag_as_typed(capsys, flag, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "llama-test", "--out", "/nonexistent/never-written", flag])
    assert exit_info.value.code == 2
    assert f"jaxstack train: error: {message}" in capsys.readouterr().err


def test_space_separated_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "llama-test", "--out", "/nonexistent/never-written", "--train.seed", "x"])
    assert "--train.seed: expected an integer, got 'x'" in capsys.readouterr().err


def test_apply_overrides_prefix():
    with pytest.raises(ValueError, match=r"^--train\.batch_size: expected an integer, got 'b'$"):
        apply_overrides(TrainConfig(), {"batch_size": "b"}, prefix="train.")
    assert apply_overrides(TrainConfig(), {"batch_size": "8"}, prefix="train.").batch_size == 8
