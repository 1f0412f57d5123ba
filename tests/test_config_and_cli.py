"""Dotted overrides, the CLI surface, precision presets, schedules, tokenizer and packing."""

import dataclasses
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.cli import main
from jaxstack.config import apply_overrides, parse_overrides, to_dict
from jaxstack.data import lm
from jaxstack.data.tokenizer import train_bpe
from jaxstack.models.configs import get_config
from jaxstack.precision import POLICIES, DtypePolicy, get_policy
from jaxstack.train.optimizers import OptimizerConfig, make_schedule
from jaxstack.train.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class _Bundle:
    model: object = get_config("llama-test")
    train: TrainConfig = TrainConfig()


def test_dotted_overrides_parse_by_type():
    bundle = apply_overrides(_Bundle(), parse_overrides(
        ["--model.num_layers=4", "--model.sliding_window", "null", "--train.mesh=2,2,2", "--train.policy=bf16"]))
    assert bundle.model.num_layers == 4 and bundle.model.sliding_window is None
    assert bundle.train.mesh == (2, 2, 2) and bundle.train.policy == "bf16"
    assert to_dict(bundle)["model"]["num_layers"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--model.num_layer=4"], "unknown field 'num_layer'"),
    (["--model.num_layers=four"], "expected an integer"),
    (["--train.policy=fp8"], "policy"),
    (["positional"], "expected --field=value"),
])
def test_bad_overrides_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(_Bundle(), parse_overrides(argv))


def test_cli_help_lists_presets_and_experiments():
    out = subprocess.run([sys.executable, "-m", "jaxstack.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "smollm2-135m" in out.stdout and "qwen2.5-0.5b" in out.stdout and "demo" in out.stdout


def test_cli_reports_bad_experiment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "no-such-experiment"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-experiment" in err and "'demo'" in err and "'smollm2-mixture'" in err  # the known names


def test_cli_finds_experiments_without_importing_them():
    code = ("import json, sys; from jaxstack.cli import _experiments, _load_experiment; names = sorted(_experiments()); "
            "assert 'experiments' not in sys.modules, 'imported at discovery'; "
            "assert _load_experiment('gap').__name__ == 'experiments.gap'; print(json.dumps(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == ["adp", "agentfold", "demo", "gap", "introspection", "kimi-linear", "mae",
                                      "precision-rl", "smollm2-mixture", "spec-stress"]


def test_policy_presets():
    assert set(POLICIES) == {"fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"}
    mixed = get_policy("bf16-mixed")
    assert mixed.param_dtype == jnp.float32 and mixed.compute_dtype == jnp.bfloat16
    assert mixed.accum_dtype == jnp.float32 and mixed.name == "bf16-mixed"
    assert hash(mixed) == hash(DtypePolicy("float32", "bf16", "float32"))
    with pytest.raises(ValueError, match="compute_dtype"):
        DtypePolicy(compute_dtype="int8")


def test_wsd_schedule_shape():
    schedule = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay_fraction=0.2), 100)
    values = np.asarray([float(schedule(i)) for i in range(101)])
    assert values[0] == 0.0 and values[10] == pytest.approx(1.0)
    assert np.all(values[10:80] == pytest.approx(1.0))  # stable
    assert values[90] == pytest.approx(0.5) and values[100] == pytest.approx(0.0)  # linear decay, last 20%
    cosine = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=0, schedule="cosine", min_lr=0.1), 100)
    assert float(cosine(0)) == pytest.approx(1.0) and float(cosine(100)) == pytest.approx(0.1)


def test_bpe_round_trip_and_special_ids():
    texts = ["def f(x):\n    return x + 1\n", "Ещё раз: 数学 and émigré text", "hello world " * 20]
    tokenizer = train_bpe(texts, 300)
    assert [tokenizer.backend.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    for text in texts + ["unseen: ☃ עברית 🙂"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_pack_documents_concatenates_with_eos():
    windows = lm.pack_documents([[5, 6, 7], [8, 9], [10, 11, 12, 13]], seq_len=3, eos_id=0)
    # stream 5 6 7 0 8 9 0 10 11 12 13 0 -> windows of 4, full ones only
    np.testing.assert_array_equal(windows, [[5, 6, 7, 0], [8, 9, 0, 10], [11, 12, 13, 0]])
    with pytest.raises(ValueError, match="window"):
        lm.pack_documents([[1]], seq_len=8, eos_id=0)
