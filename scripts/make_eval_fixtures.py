"""Regenerates the lm-evaluation-harness golden fixtures in ``tests/fixtures/evals/``.

    .venv/bin/pip install lm-eval          # (also in the `test` extra)
    .venv/bin/python scripts/make_eval_fixtures.py

Writes (< 1 MB in all):

* ``tests/fixtures/evals/model/``: a tiny randomly initialised ``transformers`` LlamaForCausalLM
  (``save_pretrained``, float32) and a byte-level BPE trained by ``jaxstack.data.tokenizer`` wrapped as
  a ``PreTrainedTokenizerFast`` (``tokenizer.json`` + ``tokenizer_config.json`` with a ChatML template);
* ``tests/fixtures/evals/lm_eval_results.json``: lm-eval's HF backend (``HFLM``) run on a local JSON task
  per variety of ``tests/fixtures/global_piqa/`` (the ``global_piqa_nonparallel_cloze`` template with
  ``dataset_path: json``): per-item, per-choice log-likelihoods and is_greedy, per-item acc /
  acc_norm / acc_bytes, and the aggregate metrics -- once at the model's full context and once with
  ``max_length=80`` so that contexts are truncated from the left.

The functions here are also imported by the live oracle test (``tests/evals/test_oracle.py``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "global_piqa"
OUT = ROOT / "tests" / "fixtures" / "evals"
TRUNCATED_MAX_LENGTH = 80
# Larger than HF's 0.02 so that log-likelihoods differ by O(1) between choices (a random model at
# 0.02 is nearly uniform, and metric agreement would then hinge on near-ties).
INIT_RANGE = 0.1
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TASK_TEMPLATE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
output_type: multiple_choice
test_split: test
doc_to_text: prompt
doc_to_target: label
doc_to_choice: "{{{{[solution0, solution1]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_bytes
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def tokenizer_texts() -> list[str]:
    """Training text for the fixture tokenizer: the fixture's own strings plus some English prose."""
    texts = []
    for file in sorted(FIXTURE_DATA.glob("*/test.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [record["prompt"], record["solution0"], record["solution1"]]
    texts += ["The quick brown fox jumps over the lazy dog. To keep food fresh, store it in a cool dry place."] * 4
    return texts


def make_model(out_dir: pathlib.Path) -> pathlib.Path:
    """Tiny random HF Llama + jaxstack-trained tokenizer, saved with save_pretrained into out_dir."""
    import torch
    import transformers

    from jaxstack.data.tokenizer import train_bpe

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe(tokenizer_texts(), 384)
    raw = out_dir / "_raw_tokenizer.json"
    tokenizer.save(raw)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(raw), eos_token="<|endoftext|>",
                                                        pad_token="<|endoftext|>")
    hf_tokenizer.chat_template = CHATML
    hf_tokenizer.save_pretrained(out_dir)
    raw.unlink()
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=INIT_RANGE, bos_token_id=None, eos_token_id=0, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def run_lm_eval(model_dir: pathlib.Path, data_dir: pathlib.Path = FIXTURE_DATA, *, max_length: int | None = None,
                batch_size: int = 8) -> dict:
    """lm-eval's HFLM on one local JSON task per variety. Returns {variety: {...per-item and aggregate...}}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    varieties = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        tasks = []
        for variety in varieties:
            task = f"jaxstack_fixture_gpiqa_{variety}"
            (pathlib.Path(tmp) / f"{task}.yaml").write_text(
                TASK_TEMPLATE.format(task=task, data_file=str(data_dir / variety / "test.jsonl")))
            tasks.append(task)
        model = HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), device="cpu", dtype="float32",
                     batch_size=batch_size, max_length=max_length)
        results = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=TaskManager(include_path=tmp),
                                          log_samples=True, num_fewshot=0, random_seed=0, bootstrap_iters=100)
    out = {}
    for variety, task in zip(varieties, tasks):
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        metrics = results["results"][task]
        out[variety] = {
            "loglikelihoods": [[float(r[0][0]) for r in s["resps"]] for s in samples],
            "is_greedy": [[bool(r[0][1]) for r in s["resps"]] for s in samples],
            "requests": [[list(r) for r in (a["arguments"] for a in s["arguments"].values())]
                         if isinstance(s["arguments"], dict) else s["arguments"] for s in samples],
            "acc": [float(s["acc"]) for s in samples],
            "acc_norm": [float(s["acc_norm"]) for s in samples],
            "acc_bytes": [float(s["acc_bytes"]) for s in samples],
            "metrics": {k.split(",")[0]: v for k, v in metrics.items() if k.split(",")[0] in
                        ("acc", "acc_norm", "acc_bytes", "acc_stderr", "acc_norm_stderr", "acc_bytes_stderr")},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    import lm_eval

    out = pathlib.Path(args.out)
    model_dir = make_model(out / "model")
    full = run_lm_eval(model_dir)
    truncated = run_lm_eval(model_dir, max_length=TRUNCATED_MAX_LENGTH)
    record = {"lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "data": "tests/fixtures/global_piqa",
              "full": {"max_length": None, "varieties": full},
              "truncated": {"max_length": TRUNCATED_MAX_LENGTH, "varieties": truncated}}
    (out / "lm_eval_results.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
