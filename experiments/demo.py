"""The main job: train a tiny SmolLM2-shaped model on the embedded default corpus, then sample from it.

What it shows: the whole stack working end to end on a CPU in a few minutes -- tokenizer trained on
local text, Grain batches, the jitted train step with AdamW + WSD, Orbax checkpoints, held-out loss,
KV-cache sampling -- and leaves a record (config.json, metrics.jsonl, summary.json, loss.png,
samples.txt). What it cannot show: anything about model quality at scale; the corpus is ~120k tokens
of Python documentation, so the model memorises its style within minutes.
"""

from __future__ import annotations

import dataclasses
import pathlib

from jaxstack.config import to_dict
from jaxstack.data.lm import text_data
from jaxstack.inference import SamplingConfig, generate
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.runs import RunRecord
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
    out_dir: str = "runs"  # the record goes to out_dir/demo/<run_name or a timestamp>
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
    record = RunRecord.create(config.out_dir, "demo", config, stamp=config.run_name)
    run_dir = record.dir
    text = text_data(vocab_size=config.model.vocab_size, seq_len=config.train.seq_len,
                     batch_size=config.train.batch_size, seed=config.train.seed, tokenizer_name="pydoc")
    tokenizer = text.tokenizer
    print(f"demo: {len(text.train_windows) * config.train.seq_len:,} training tokens, "
          f"{config.model.num_params():,} parameters -> {run_dir}")
    model, summary = train(
        config.model, config.train, config.optimizer, iter(text.dataset), run_dir, eval_data=text.eval_data,
        extra_config={**{k: v for k, v in to_dict(config).items() if k not in ("model", "train", "optimizer")},
                      "tokenizer_vocab": tokenizer.vocab_size, "corpus": "pydoc_data.topics (PSF licence)"},
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
    summary = record.write_summary({"samples": samples})  # merged into the trainer's summary
    print(text)
    final = summary["final"]
    print(f"\nfinal train loss {final.get('loss', float('nan')):.3f}, held-out loss "
          f"{final.get('eval_loss', float('nan')):.3f}; loss plot: {run_dir / 'loss.png'}")
    return run_dir
