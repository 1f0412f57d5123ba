"""Chat SFT in JAX: tokenizer, packed Grain batches, the foundation trainer, and the parse rate of
sampled actions.

:func:`train_chat_sft` is shared by the ADP experiment (exported chat JSONL, actions parsed back
into ADP) and the AgentFold experiment (oracle ``(context, response)`` examples, responses parsed
by the AgentFold parser). It

1. trains a byte-level BPE on the training records' rendered text (or takes a given tokenizer,
   e.g. the one of the pretrained model in ``train.init_from``) and checks that the ChatML markers
   are single tokens;
2. tokenises with the assistant-only loss mask, packs into rows of ``train.seq_len + 1`` tokens
   with segment ids and positions (:mod:`jaxstack.data.adp.sft`) and feeds the trainer a Grain
   iterator over them (:func:`~jaxstack.data.adp.sft.sft_dataset`);
3. measures the held-out masked loss (assistant tokens only) of the initial and the trained model
   over *all* held-out rows;
4. samples one reply per assistant turn of held-out (and, for comparison, training) records with
   the caller's sampling client (``make_client``, e.g. :class:`jaxstack.agents.llm.JaxstackModelClient`:
   agents sit a floor above train, so the experiment passes it in) -- before and after training --
   and reports the share that ends with ``<|im_end|>``, parses, has the reference's action kind,
   and equals the reference exactly.

The model-free half (chat template, loss mask, packing, held-out split) is :mod:`jaxstack.data.adp.sft`.
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxstack.data.adp.sft import (
    chat_text,
    pack_examples,
    sft_dataset,
    tokenize_example,
)
from jaxstack.data.tokenizer import cached_bpe
from jaxstack.precision import get_policy
from jaxstack.runs import RunRecord
from jaxstack.train.step import make_batch, token_cross_entropy
from jaxstack.train.trainer import initial_model, train

#: ``classify(text, record, turn_index) -> kind``; raises ValueError when ``text`` does not parse.
Classifier = Callable[[str, dict, int], str]

#: ``make_client(model, tokenizer, *, max_new_tokens, max_prompt_tokens) -> client`` where
#: ``client.complete_batch(list_of_messages, max_tokens=N)`` returns one completion per prompt with
#: ``.text``, ``.finish_reason`` (``"stop"`` or ``"length"``) and ``.completion_tokens``
#: (:class:`jaxstack.agents.llm.JaxstackModelClient` is one).
ClientFactory = Callable[..., Any]

REQUIRED_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def masked_loss(model, rows: dict[str, np.ndarray], batch_size: int = 8) -> tuple[float, int]:
    """(mean next-token cross-entropy over loss-masked targets, number of such targets) of ``model``
    on packed rows ``[R, seq_len + 1]`` -- the trainer's loss, over every row (a ragged last batch
    included)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def batch_loss(state, tokens, loss_mask, segment_ids, positions):
        model = nnx.merge(graphdef, state)
        batch = make_batch(tokens, loss_mask, segment_ids=segment_ids, positions=positions)
        logits = model(batch["inputs"], batch["positions"], segment_ids=batch["segment_ids"]).logits
        return token_cross_entropy(logits, batch["targets"], batch["loss_mask"])

    total, count = 0.0, 0.0
    for start in range(0, rows["tokens"].shape[0], batch_size):
        part = [np.asarray(rows[k][start:start + batch_size], np.int32)
                for k in ("tokens", "loss_mask", "segment_ids", "positions")]
        loss, n = batch_loss(state, *part)
        total, count = total + float(loss) * float(n), count + float(n)
    return (total / count if count else float("nan")), int(count)


def pad_rows(rows: dict[str, np.ndarray], multiple: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """``rows`` with empty rows (``pad_id`` tokens, no loss, segment 0) appended up to a multiple of
    ``multiple`` rows."""
    extra = -rows["tokens"].shape[0] % multiple
    if not extra:
        return rows
    width = rows["tokens"].shape[1]
    fill = {"tokens": pad_id, "loss_mask": 0, "segment_ids": 0, "positions": 0}
    return {k: np.concatenate([v, np.full((extra, width), fill[k], v.dtype)]) for k, v in rows.items()}


def assistant_prompts(records: Sequence[dict], limit: int) -> list[tuple[dict, int]]:
    """``(record, k)`` pairs, one per assistant message ``k`` of each record (duplicate ids once),
    evenly thinned to at most ``limit`` pairs (deterministic)."""
    seen, pairs = set(), []
    for record in records:
        key = record.get("id")
        if key in seen:
            continue
        seen.add(key)
        pairs += [(record, k) for k, m in enumerate(record["messages"]) if m["role"] == "assistant" and k > 0]
    if len(pairs) > limit:
        pairs = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    return pairs


def sample_and_score(client, pairs: Sequence[tuple[dict, int]], classify: Classifier,
                     max_new_tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy replies for each ``(record, k)`` (prompt = ``messages[:k]``) and their scores:
    ``closed`` (ended with a stop token), ``parsed`` (``classify`` accepted it), ``valid`` (both),
    ``kind_match`` (parsed, with the reference reply's kind) and ``exact`` (equal to the reference)."""
    if not pairs:
        return {"n": 0}, []
    completions = client.complete_batch([r["messages"][:k] for r, k in pairs], max_tokens=max_new_tokens)
    rows = []
    for (record, k), completion in zip(pairs, completions):
        reference = record["messages"][k]["content"]
        try:
            kind, error = classify(completion.text, record, k), None
        except ValueError as exc:
            kind, error = None, str(exc)[:200]
        try:
            ref_kind = classify(reference, record, k)
        except ValueError:
            ref_kind = None
        rows.append({"id": record.get("id"), "turn": k, "closed": completion.finish_reason == "stop",
                     "parsed": kind is not None, "kind": kind, "reference_kind": ref_kind,
                     "valid": completion.finish_reason == "stop" and kind is not None,
                     "kind_match": kind is not None and kind == ref_kind, "exact": completion.text == reference,
                     "error": error, "completion_tokens": completion.completion_tokens,
                     "text": completion.text, "reference": reference})
    n = len(rows)
    rates = {key: sum(r[key] for r in rows) / n for key in ("closed", "parsed", "valid", "kind_match", "exact")}
    return {"n": n, **rates}, rows


def _check_tokenizer(tokenizer, vocab_size: int) -> None:
    missing = [t for t in REQUIRED_TOKENS if tokenizer.backend.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer: the chat template needs single tokens {missing}; add them as special tokens")
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer: {tokenizer.vocab_size} tokens do not fit model.vocab_size={vocab_size}")


def train_chat_sft(
    train_records: Sequence[dict],
    eval_records: Sequence[dict],
    *,
    model_config,
    train_config,
    optimizer_config,
    run_dir: str | pathlib.Path,
    classify: Classifier,
    make_client: ClientFactory,
    tokenizer=None,
    tokenizer_name: str = "chat-sft",
    overlong: str = "truncate",
    max_new_tokens: int = 128,
    max_prompts: int = 24,
    baseline_samples: bool = True,
    extra_config: dict | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fine-tunes a jaxstack model on chat records and returns (and merges into ``summary.json`` under ``sft``) the
    record: losses, held-out loss before/after (``heldout_loss_final`` is the returned model's: the last
    step's, or with ``train.early_stopping_patience`` the best evaluation's, at ``heldout_loss_final_step``),
    the minimum over the run's evaluations and its step, parse rates before/after, sizes, durations.

    Args:
      train_records, eval_records: ``{"id", "messages"}`` chat records (held-out ids disjoint).
      model_config, train_config, optimizer_config: for :func:`jaxstack.train.trainer.train`;
        ``train_config.seq_len`` is the packed row length (rows hold ``seq_len + 1`` tokens).
      run_dir: the trainer's run directory (metrics.jsonl, loss.png, hf/, tokenizer.json, samples).
      classify: parses a reply into an action kind (ValueError when it does not parse).
      make_client: builds the greedy sampling client of a model (see :data:`ClientFactory`); called
        with ``max_new_tokens`` and ``max_prompt_tokens = max(16, train.seq_len - max_new_tokens)``.
      tokenizer: a jaxstack ``Tokenizer``; None trains a byte-level BPE of ``model_config.vocab_size``
        tokens on the training text (the model's vocab is shrunk to the BPE's size if the corpus
        is too small to fill it).
      overlong: ``"truncate"`` (keep the first ``seq_len + 1`` tokens of a longer record) or
        ``"drop"`` (skip it: for examples whose trained reply comes last).
      max_new_tokens, max_prompts: sampling budget per reply and number of sampled replies per split.
      baseline_samples: also sample from the initial model (the "before" numbers).

    Raises:
      ValueError: no training or held-out examples fit, a tokenizer without the ChatML markers or
        larger than the model's vocabulary, an unknown ``overlong``.
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong: expected 'truncate' or 'drop', got {overlong!r}")
    if not train_records or not eval_records:
        raise ValueError(f"need training and held-out records, got {len(train_records)} and {len(eval_records)}")
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    if tokenizer is None:
        texts = sorted({chat_text(r) for r in train_records})
        tokenizer = cached_bpe(texts, model_config.vocab_size, tokenizer_name)
        if tokenizer.vocab_size < model_config.vocab_size:
            model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
    _check_tokenizer(tokenizer, model_config.vocab_size)
    tokenizer.save(run_dir / "tokenizer.json")

    width = train_config.seq_len + 1

    def examples_of(records):
        examples = [tokenize_example(r, tokenizer.encode) for r in records]
        long = sum(len(e) > width for e in examples)
        if overlong == "drop":
            examples = [e for e in examples if len(e) <= width]
        return examples, long

    train_examples, train_long = examples_of(train_records)
    eval_examples, eval_long = examples_of(eval_records)
    if not train_examples or not eval_examples:
        raise ValueError(f"no examples fit train.seq_len={train_config.seq_len} with overlong='drop' "
                         f"(train {len(train_examples)}, held-out {len(eval_examples)})")
    train_rows = pack_examples(train_examples, width, pad_id=tokenizer.eos_id)
    eval_rows = pack_examples(eval_examples, width, pad_id=tokenizer.eos_id)
    data = iter(sft_dataset(train_rows, train_config.batch_size, seed=train_config.seed))
    # held-out batches have the training batch size (it divides over the data-parallel devices):
    # pad with empty rows (no loss tokens), which change neither the loss nor its token count
    eval_padded = pad_rows(eval_rows, train_config.batch_size, tokenizer.eos_id)

    def eval_data():
        return iter(sft_dataset(eval_padded, train_config.batch_size, seed=0, shuffle=False, repeat=False))

    # held-out prompts evaluate generalisation, training prompts memorisation (toy data is tiny)
    prompts = {"heldout": assistant_prompts(eval_records, max_prompts),
               "train": assistant_prompts(train_records, max_prompts)}
    max_prompt = max(16, train_config.seq_len - max_new_tokens)

    def score(model, tag):
        client = make_client(model, tokenizer, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt)
        out, samples = {}, []
        for split, pairs in prompts.items():
            out[split], rows = sample_and_score(client, pairs, classify, max_new_tokens)
            samples += [{"model": tag, "split": split, **r} for r in rows]
        return out, samples

    policy = get_policy(train_config.policy)
    start_model = initial_model(model_config, train_config, policy)
    init_loss, eval_tokens = masked_loss(start_model, eval_rows)
    t_base = time.perf_counter()
    before, samples = score(start_model, "initial") if baseline_samples else ({}, [])
    base_s = time.perf_counter() - t_base
    del start_model

    data_record = {
        "train_records": len(train_records), "heldout_records": len(eval_records),
        "train_ids": len({r.get("id") for r in train_records}), "heldout_ids": len({r.get("id") for r in eval_records}),
        "train_rows": int(train_rows["tokens"].shape[0]), "heldout_rows": int(eval_rows["tokens"].shape[0]),
        "row_tokens": width, "train_tokens": int((train_rows["segment_ids"] > 0).sum()),
        "train_loss_tokens": int(train_rows["loss_mask"].sum()), "heldout_loss_tokens": eval_tokens,
        "overlong": overlong, "overlong_train": int(train_long), "overlong_heldout": int(eval_long),
        "tokenizer_vocab": tokenizer.vocab_size,
    }
    t_train = time.perf_counter()
    model, train_summary = train(model_config, train_config, optimizer_config, data, run_dir, eval_data=eval_data,
                                 extra_config={**(extra_config or {}), "sft_data": data_record},
                                 show_progress=show_progress)
    train_s = time.perf_counter() - t_train
    final_loss, _ = masked_loss(model, eval_rows)
    t_sample = time.perf_counter()
    after, trained_samples = score(model, "trained")
    sample_s = time.perf_counter() - t_sample
    samples += trained_samples
    record = RunRecord.open(run_dir)
    record.write_jsonl("samples.jsonl", samples)
    metrics = record.read_metrics()
    losses = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    # The returned model is the last step's, or with early stopping the best evaluation's.
    stopping = train_summary.get("early_stopping")
    exported_step = stopping["best_step"] if stopping and stopping["best_step"] is not None else train_summary["steps_done"]
    # The minimum held-out loss over the run's evaluations (and the exported model's): a final loss above
    # the minimum is overfitting, which the final number alone would hide.
    heldout = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m] + [(exported_step, final_loss)]
    min_step, min_loss = min(heldout, key=lambda pair: pair[1])
    summary = {
        "model": {"num_params": model_config.num_params(), "vocab_size": model_config.vocab_size,
                  "init_from": train_config.init_from},
        "data": data_record,
        "steps": train_summary["steps_done"],
        "train_loss_first": losses[0][1] if losses else math.nan,
        "train_loss_last": losses[-1][1] if losses else math.nan,
        "train_loss_curve": losses,
        "heldout_loss_initial": init_loss,
        "heldout_loss_final": final_loss,
        "heldout_loss_final_step": exported_step,
        "heldout_loss_min": min_loss,
        "heldout_loss_min_step": min_step,
        "early_stopping": stopping,
        "parse_before": before,
        "parse_after": after,
        "max_new_tokens": max_new_tokens,
        "durations_s": {"baseline_sampling": base_s, "train": train_s, "sampling": sample_s,
                        "total": time.perf_counter() - t0},
        "files": {"loss_plot": str(run_dir / "loss.png"), "metrics": str(run_dir / "metrics.jsonl"),
                  "samples": str(run_dir / "samples.jsonl"), "model": str(run_dir / "hf")},
    }
    record.write_summary({"sft": summary})
    return summary
