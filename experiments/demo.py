"""The main job: train a tiny SmolLM2-shaped model on the embedded default corpus, then sample from it.

What it shows: the whole stack working end to end on a CPU in a few minutes -- tokenizer trained on
local text, Grain batches, the jitted train step with AdamW + WSD, Orbax checkpoints, held-out loss,
KV-cache sampling -- and leaves a record (config.json, metrics.jsonl, summary.json, loss.png,
samples.txt). What it cannot show: anything about model quality at scale; the corpus is ~120k tokens
of Python documentation, so the model memorises its style within minutes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

from jaxstack.data import corpus, lm, tokenizer as tokenizer_lib
from jaxstack.inference import SamplingConfig, generate
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class Config:
    model: LlamaConfig = get_config("smollm2-tiny")
    train: TrainConfig = TrainConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    prompts: tuple[str, ...] = ("The for statement", "A class definition", "Exceptions are")
    sample_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    out_dir: str = "runs/demo"
    run_name: str | None = None


PRESETS = {
    # a few minutes on 2 CPU cores: ~2M parameters, 300 steps x 16 x 128 tokens (~610k tokens).
    "tiny": Config(
        model=get_config("smollm2-tiny", vocab_size=2048, hidden_size=192, intermediate_size=512, num_layers=4,
                         num_heads=6, num_kv_heads=2, max_position_embeddings=512),
        train=TrainConfig(steps=300, batch_size=16, seq_len=128, log_every=10, eval_every=50,
                          checkpoint_every=150),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=30, decay_fraction=0.2),
    ),
    # The SmolLM2-135M shape on the same pipeline, for an accelerator.
    "paper": Config(
        model=get_config("smollm2-135m", vocab_size=8192, rope_theta=10000.0, max_position_embeddings=2048,
                         scan_layers=True),
        train=TrainConfig(steps=2000, batch_size=64, seq_len=1024, log_every=20, eval_every=250,
                          checkpoint_every=500, policy="bf16-mixed"),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=200, decay_fraction=0.2),
    ),
}


def run(config: Config) -> pathlib.Path:
    name = config.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = pathlib.Path(config.out_dir) / name
    train_docs = corpus.default_corpus("train")
    valid_docs = corpus.default_corpus("validation")
    tokenizer = tokenizer_lib.cached_bpe(train_docs, config.model.vocab_size, "pydoc")
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={config.model.vocab_size} but the trained tokenizer has {tokenizer.vocab_size} tokens"
        )
    seq_len, batch_size = config.train.seq_len, config.train.batch_size
    train_windows = lm.pack_documents(tokenizer.encode_batch(train_docs), seq_len, tokenizer.eos_id)
    valid_windows = lm.pack_documents(tokenizer.encode_batch(valid_docs), seq_len, tokenizer.eos_id)
    data = iter(lm.lm_dataset(train_windows, batch_size, seed=config.train.seed))
    eval_batch = min(batch_size, len(valid_windows))

    def eval_data():
        return iter(lm.lm_dataset(valid_windows, eval_batch, seed=0, shuffle=False, repeat=False))

    print(f"demo: {len(train_windows) * seq_len:,} training tokens, {config.model.num_params():,} parameters "
          f"-> {run_dir}")
    model, summary = train(
        config.model, config.train, config.optimizer, data, run_dir, eval_data=eval_data,
        extra_config={"prompts": list(config.prompts), "tokenizer_vocab": tokenizer.vocab_size,
                      "corpus": "pydoc_data.topics (PSF licence)"},
    )
    tokenizer.save(run_dir / "tokenizer.json")

    sampling = SamplingConfig(max_new_tokens=config.sample_tokens, temperature=config.temperature,
                              top_p=config.top_p, stop_tokens=(tokenizer.eos_id,))
    result = generate(model, [tokenizer.encode(p) for p in config.prompts], sampling, seed=config.train.seed)
    samples = []
    for row, prompt in enumerate(config.prompts):
        n = int(result.lengths[row])
        samples.append(prompt + tokenizer.decode(result.tokens[row, :n].tolist()))
    text = "\n\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))
    (run_dir / "samples.txt").write_text(text + "\n")
    summary["samples"] = samples
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    final = summary["final"]
    print(f"\nfinal train loss {final.get('loss', float('nan')):.3f}, held-out loss "
          f"{final.get('eval_loss', float('nan')):.3f}; loss plot: {run_dir / 'loss.png'}")
    return run_dir
