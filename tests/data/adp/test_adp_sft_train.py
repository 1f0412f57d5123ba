"""SFT in JAX on ADP chat exports: held-out split, the Grain pipeline over packed rows, starting the
trainer from a pretrained HF directory (``train.init_from``), action classification, and a short
end-to-end fine-tuning run (loss falls, the replies are scored)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from jaxstack.data.adp import to_chat
from jaxstack.data.adp.sft import (
    pack_examples,
    sft_dataset,
    split_records,
    tokenize_example,
)
from jaxstack.models.checkpoint import save_pretrained
from jaxstack.models.configs import get_config
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.precision import get_policy
from jaxstack.runs import read_metrics
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig, initial_model, train


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_split_records_keeps_copies_together_and_is_stable():
    records = [{"id": f"r{i % 7}", "n": i} for i in range(20)]  # copies of 7 ids, as a w > 1 mixture makes
    train, held = split_records(records, 0.3, seed=0)
    train_ids, held_ids = {r["id"] for r in train}, {r["id"] for r in held}
    assert not train_ids & held_ids and train_ids | held_ids == {f"r{i}" for i in range(7)}
    assert len(held_ids) == 2 and len(train) + len(held) == 20
    again = split_records(list(reversed(records)), 0.3, seed=0)[1]
    assert {r["id"] for r in again} == held_ids  # order does not matter
    other_seeds = {frozenset(r["id"] for r in split_records(records, 0.3, seed=s)[1]) for s in range(8)}
    assert len(other_seeds) > 1  # the seed does matter
    by_group = split_records([{"g": i % 3, "id": i} for i in range(9)], 0.34, key="g")[1]
    assert len({r["g"] for r in by_group}) == 1 and len(by_group) == 3
    with pytest.raises(ValueError, match="eval_fraction"):
        split_records(records, 1.0)
    with pytest.raises(ValueError, match=r"records\[1\]: no 'id'"):
        split_records([{"id": 1}, {}], 0.5)
    with pytest.raises(ValueError, match="at least two distinct"):
        split_records([{"id": 1}, {"id": 1}], 0.5)


def test_sft_dataset_batches_every_row_once_per_epoch(converted):
    examples = [tokenize_example(to_chat(t), _bytes) for name in ("synatra", "swe_gym") for t in converted[name]]
    rows = pack_examples(examples, 257)
    n = rows["tokens"].shape[0]
    assert n >= 3
    iterator = iter(sft_dataset(rows, 1, seed=3))
    first_epoch = [next(iterator) for _ in range(n)]
    assert all(set(b) == {"tokens", "loss_mask", "segment_ids", "positions"} for b in first_epoch)
    assert all(b["tokens"].shape == (1, 257) and b["tokens"].dtype == np.int32 for b in first_epoch)
    seen = sorted(b["tokens"][0].tobytes() for b in first_epoch)
    assert seen == sorted(rows["tokens"][i].astype(np.int32).tobytes() for i in range(n))
    for batch in first_epoch:  # the four arrays of a row stay aligned
        i = next(i for i in range(n) if np.array_equal(rows["tokens"][i], batch["tokens"][0]))
        assert np.array_equal(batch["loss_mask"][0], rows["loss_mask"][i])
        assert np.array_equal(batch["segment_ids"][0], rows["segment_ids"][i])
    # checkpointable: restoring the state replays the same batches
    state = iterator.get_state()
    upcoming = [next(iterator)["tokens"] for _ in range(3)]
    resumed = iter(sft_dataset(rows, 1, seed=3))
    resumed.set_state(state)
    assert all(np.array_equal(a, next(resumed)["tokens"]) for a in upcoming)
    one_pass = list(sft_dataset(rows, 2, seed=0, shuffle=False, repeat=False))
    assert len(one_pass) == n // 2 and np.array_equal(one_pass[0]["tokens"], rows["tokens"][:2].astype(np.int32))
    with pytest.raises(ValueError, match=r"missing arrays \['positions'\]"):
        sft_dataset({k: v for k, v in rows.items() if k != "positions"}, 1, seed=0)
    with pytest.raises(ValueError, match=r"rows\['loss_mask'\]: expected shape"):
        sft_dataset({**rows, "loss_mask": rows["loss_mask"][:, 1:]}, 1, seed=0)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        sft_dataset(rows, n + 1, seed=0, repeat=False)


CFG = get_config("llama-test", vocab_size=96, max_position_embeddings=64)


def _pretrained(tmp_path):
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(7))
    save_pretrained(model, tmp_path / "pre")
    return model, str(tmp_path / "pre")


def test_initial_model_loads_init_from_and_checks_the_config(tmp_path):
    model, path = _pretrained(tmp_path)
    policy = get_policy("fp32")
    loaded = initial_model(CFG, TrainConfig(init_from=path, seed=1), policy)
    scratch = initial_model(CFG, TrainConfig(seed=1), policy)
    flat = lambda m: {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    want, got, other = flat(model), flat(loaded), flat(scratch)
    assert want.keys() == got.keys()
    assert all(np.array_equal(want[p], got[p]) for p in want)
    assert not all(np.array_equal(want[p], other[p]) for p in want)  # the seed-1 random init differs
    # execution-only fields may differ (scan_layers stacks the same parameters)
    assert initial_model(CFG.replace(scan_layers=True), TrainConfig(init_from=path), policy).config.scan_layers
    with pytest.raises(ValueError, match=r"model\.hidden_size: 64 in .*config\.json, 32 in the model config") as err:
        initial_model(CFG.replace(hidden_size=32, head_dim=None), TrainConfig(init_from=path), policy)
    assert "model.vocab_size" not in str(err.value)
    with pytest.raises(ValueError, match=r"model\.vocab_size: 96 .* 128 in the model config"):
        initial_model(CFG.replace(vocab_size=128), TrainConfig(init_from=path), policy)
    with pytest.raises(ValueError, match="train.init_from: .* has no config.json"):
        initial_model(CFG, TrainConfig(init_from=str(tmp_path / "missing")), policy)


@pytest.mark.slow  # a full SFT run from an exported model (~13-47 s); init_from's errors stay tested fast
def test_train_starts_from_init_from(tmp_path):
    """The step-1 loss (computed on the parameters before the first update) is the pretrained
    model's loss on that batch, so train() really started from init_from."""
    from jaxstack.train.step import make_batch, token_cross_entropy

    model, path = _pretrained(tmp_path)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, CFG.vocab_size, (8, 17)).astype(np.int32)  # 8: one row per test device
    mask = np.zeros_like(tokens, bool)
    mask[:, 9:] = True
    batch = {"tokens": tokens, "loss_mask": mask, "segment_ids": np.ones_like(tokens),
             "positions": np.tile(np.arange(17, dtype=np.int32), (8, 1))}
    step = make_batch(tokens, mask, segment_ids=batch["segment_ids"], positions=batch["positions"])
    expected, _ = token_cross_entropy(model(step["inputs"], step["positions"]).logits, step["targets"], step["loss_mask"])

    def data():  # a checkpointable Grain iterator that always yields this batch
        return iter(sft_dataset(batch, 8, seed=0, shuffle=False))

    config = TrainConfig(steps=1, batch_size=8, seq_len=16, log_every=1, checkpoint_every=1, init_from=path)
    train(CFG, config, OptimizerConfig(warmup_steps=0), data(), tmp_path / "run", show_progress=False)
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["loss"]
    assert logged == pytest.approx(float(expected), rel=1e-5)
    # without init_from the run would start from the seed-0 random init, whose loss differs
    scratch = initial_model(CFG, TrainConfig(), get_policy("fp32"))
    other, _ = token_cross_entropy(scratch(step["inputs"], step["positions"]).logits, step["targets"], step["loss_mask"])
    assert float(other) != pytest.approx(logged, rel=1e-3)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["init_from"] == path


def test_classify_action():
    from experiments.adp import classify_action

    assert classify_action('<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>') == "api_action"
    assert classify_action('<think>\nlook\n</think>\n\n<execute language="python">\nprint(1)\n</execute>') == "code_action"
    assert classify_action("<finish> 42 </finish>") == "finish"
    assert classify_action("Could you say which file?") == "message"
    for bad in ('<tool_call>\n{"name": 3}\n</tool_call>', "<think>\nunclosed", "<finish> 42", "",
                '<execute language="klingon">\nx\n</execute>'):
        with pytest.raises(ValueError):
            classify_action(bad)


@pytest.mark.slow
def test_experiment_tiny_preset_trains_and_reports(tmp_path):
    import dataclasses

    from experiments.adp import PRESETS, SFT_CLAIMS, run

    config = PRESETS["tiny"]
    config = dataclasses.replace(config, out_dir=str(tmp_path), show_progress=False, max_prompts=4, max_new_tokens=16,
                                 seeds=(0, 1), trainer=dataclasses.replace(config.trainer, steps=10, batch_size=8,
                                                                           eval_every=5))
    run_dir = run(config)
    sft = json.loads((run_dir / "summary.json").read_text())["sft"]
    assert sft["seeds"] == [0, 1] and set(sft["per_seed"]) == {"0", "1"}
    for seed in sft["per_seed"].values():
        assert seed["train_loss_last"] < seed["train_loss_first"] and seed["parse_after"]["heldout"]["n"] >= 1
        assert seed["heldout_loss_min"] <= seed["heldout_loss_final"]
        assert seed["heldout_loss_min_step"] in (0, 5, 10) and seed["early_stopping"]["patience"] == 2
    assert sft["per_seed"]["0"]["train_loss_first"] != sft["per_seed"]["1"]["train_loss_first"]  # seeds differ
    assert sft["data"]["heldout_ids"] >= 1
    assert sft["mean"]["heldout_loss_min"]["per_seed"] == [s["heldout_loss_min"] for s in sft["per_seed"].values()]
    assert sft["verdict"] in ("reproduced", "partially", "not reproduced") and set(sft["claims"]) == set(SFT_CLAIMS)
    assert (run_dir / "sft_train" / "seed1" / "loss.png").exists() and (run_dir / "sft.png").exists()


def _seed_summary(loss_initial, loss_final, kind_before, kind_after):
    return {"heldout_loss_initial": loss_initial, "heldout_loss_final": loss_final,
            "parse_before": {"heldout": {"kind_match": kind_before}}, "parse_after": {"heldout": {"kind_match": kind_after}}}


def test_sft_verdicts_can_fail():
    """The headline verdict says 'not reproduced' when SFT changes nothing, 'partially' when only the
    loss falls, and needs more than one seed (no standard error otherwise)."""
    from experiments.adp import sft_verdicts

    unchanged = sft_verdicts([_seed_summary(5.0 + d, 5.0 + d, 0.25, 0.25) for d in (0.0, 0.1, -0.1)])
    assert unchanged["verdict"] == "not reproduced" and not any(c["holds"] for c in unchanged["claims"].values())
    loss_only = sft_verdicts([_seed_summary(5.0, 3.0 + d, 0.25, 0.25 + d) for d in (0.0, 0.1, -0.1)])
    assert loss_only["claims"]["sft_lowers_heldout_loss"]["holds"]
    assert loss_only["verdict"] == "partially"  # kind match +0.0 +- 0.06
    both = sft_verdicts([_seed_summary(5.0, 3.0 + d, 0.25, 0.75 + d) for d in (0.0, 0.1, -0.1)])
    assert both["verdict"] == "reproduced"
    assert sft_verdicts([_seed_summary(5.0, 1.0, 0.0, 1.0)])["verdict"] == "not reproduced"  # one seed: no SE


def test_paper_preset_needs_a_pretrained_directory(tmp_path):
    import dataclasses

    from experiments.adp import PRESETS, run

    with pytest.raises(ValueError, match="init_from: .* needs a local Hugging Face model directory"):
        run(dataclasses.replace(PRESETS["paper"], out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        run(dataclasses.replace(PRESETS["paper"], out_dir=str(tmp_path), init_from=str(tmp_path)))
    assert not list(tmp_path.iterdir())  # checked before any work
