"""Running introspection trials in batches: encoded prompts with their injection windows, per-row
interventions, and a :class:`TrialRunner` whose jitted programs are reused across every setting.

A *trial* is one prompt (:class:`EncodedPrompt`: token ids, the token window ``[start, end)`` to inject
on, where the reply begins) plus one row of an :class:`~jaxstack.layers.interventions.Intervention`
(vector, layer, strength). :func:`row_intervention` builds the per-row edit ``[L, B, D]`` / ``[L, B]``
directly, so a batch may mix layers, strengths, vectors and windows, and a sweep over them is traced
data: every call with the same batch size and width reuses one compiled program.

:class:`TrialRunner` pads every batch to ``batch`` rows (dummy rows: zero strength) and ``width``
tokens, and offers the three reads the experiments need:

* :meth:`~TrialRunner.next_token_logits`: [B, V] logits at each prompt's last token (the first reply
  token's distribution), with the last layer pruned to that position;
* :meth:`~TrialRunner.residuals`: captured residuals [K, B, P, D] at chosen layers and positions;
* :meth:`~TrialRunner.sample`: sampled replies (``jaxstack.inference.sampler.generate``: the edit is
  applied in the prefill and every decode step; its window is in absolute positions, so
  ``end = NO_END`` runs through the sampled tokens).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.interp import protocol
from jaxstack.layers.interventions import NO_END, Capture, Intervention


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """tokens: the prompt's ids (the reply follows the last); start / end: the injection window in
    token indices (``end = NO_END``: through every generated token); text: the rendered prompt;
    info: labels carried along (concept, sentence, ...)."""

    tokens: tuple[int, ...]
    start: int
    end: int
    text: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.tokens:
            raise ValueError("tokens: the prompt encodes to no tokens")
        if not (0 <= self.start < len(self.tokens) and self.start < self.end):
            raise ValueError(f"start / end: expected 0 <= start < end, start inside the prompt, got "
                             f"[{self.start}, {self.end}) for {len(self.tokens)} tokens")

    def __len__(self) -> int:
        return len(self.tokens)


def encode_turns(encode: Callable[[str], Sequence[int]], turns, prompt_format: protocol.PromptFormat, *,
                 window: str, sentence: str | None = None, add_generation_prompt: bool = True,
                 **info) -> EncodedPrompt:
    """Renders ``turns`` and finds the injection window.

    window: "detection" (from the ``\\n\\n`` before "Trial 1" through the reply: Experiment 1),
    "sentence" (the tokens of ``sentence`` only: Experiments 2 and 3), "question" (from the first
    token of the last user turn's text through the reply: the yes-bias control questions), "all"
    (every token and the reply: the open prompts).
    """
    text = prompt_format(turns, add_generation_prompt=add_generation_prompt)
    tokens = tuple(int(t) for t in encode(text))
    if window == "detection":
        start, end = protocol.injection_start(encode, text), NO_END
    elif window == "sentence":
        if sentence is None:
            raise ValueError("sentence: window='sentence' needs the sentence")
        start, end = protocol.sentence_span(encode, text, sentence)
    elif window == "question":
        question = [t for r, t in turns if r == "user"][-1]
        at = text.rfind(question)
        if at < 0:
            raise ValueError("turns: the last user turn's text is not in the rendered prompt")
        start, end = protocol.prefix_token_count(encode, text, at), NO_END
    elif window == "all":
        start, end = 0, NO_END
    else:
        raise ValueError(f"window: expected 'detection', 'sentence', 'question' or 'all', got {window!r}")
    return EncodedPrompt(tokens=tokens, start=start, end=end, text=text, info=dict(info))


def row_intervention(num_layers: int, hidden: int, *, vectors, layers, strengths, starts, ends,
                     kind: str = "add") -> Intervention:
    """An intervention with one edit per row, at site "post".

    vectors: [B, D] (row b adds ``strengths[b] * vectors[b]`` at block ``layers[b]``'s output);
    layers: [B] int (or one int); strengths: [B] float (0 = no edit on that row); starts, ends: [B]
    int token windows (absolute positions; ``NO_END`` for "through the reply"). Built as
    vectors [L, B, D] (the row's vector at every layer) and scales [L, B] (a per-row one-hot times
    the strength), so mixed layers in one batch are data, not structure.
    """
    vectors = np.asarray(vectors, np.float32)
    strengths = np.asarray(strengths, np.float32).reshape(-1)
    batch = strengths.shape[0]
    layers = np.broadcast_to(np.asarray(layers, np.int64), (batch,))
    chex.assert_shape(vectors, (batch, hidden))
    if layers.min() < 0 or layers.max() >= num_layers:
        raise ValueError(f"layers: expected indices in [0, {num_layers}), got {sorted(set(layers.tolist()))}")
    scales = np.zeros((num_layers, batch), np.float32)
    scales[layers, np.arange(batch)] = strengths
    starts = np.broadcast_to(np.asarray(starts, np.int64), (batch,)).astype(np.int32)
    ends = np.broadcast_to(np.asarray(ends, np.int64), (batch,)).clip(max=NO_END).astype(np.int32)
    return Intervention(vectors=jnp.broadcast_to(jnp.asarray(vectors), (num_layers, batch, hidden)),
                        scales=jnp.asarray(scales), start=jnp.asarray(starts), end=jnp.asarray(ends), kind=kind,
                        site="post")


def norm_matched_random(rng: np.random.Generator, reference) -> np.ndarray:
    """Gaussian random directions with the norms of ``reference`` [N, D] rows (the paper's random-vector
    control): [N, D] float32."""
    reference = np.asarray(reference, np.float64)
    draws = rng.standard_normal(reference.shape)
    draws /= np.linalg.norm(draws, axis=-1, keepdims=True)
    return (draws * np.linalg.norm(reference, axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Jitted reads


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _read(graphdef, state, tokens, logits_at, positions, intervention, *, layers):
    """Logits [B, Q, V] at ``logits_at`` [B, Q] and, with ``layers``, residuals [K, B, P, D] at
    ``positions`` [B, P]."""
    model = nnx.merge(graphdef, state)
    capture = Capture(positions=positions, layers=layers, site="post") if layers else None
    out = model(tokens, intervention=intervention, capture=capture, logits_indices=logits_at)
    return out.logits.astype(jnp.float32), None if capture is None else out.captured["residual"]


@dataclasses.dataclass
class Trial:
    """One row of a batch: a prompt and its edit (``vector`` None or ``strength`` 0: no edit)."""

    prompt: EncodedPrompt
    vector: np.ndarray | None = None
    layer: int = 0
    strength: float = 0.0


class TrialRunner:
    """Batched reads of one model (see the module docstring). width: the padded prompt length
    (every prompt must fit); batch: rows per call (trials are chunked and the last chunk padded)."""

    def __init__(self, model, *, width: int, batch: int, pad_id: int = 0):
        if width <= 0 or batch <= 0:
            raise ValueError(f"width / batch: expected positive integers, got {width} / {batch}")
        self.model = model
        self.width, self.batch, self.pad_id = int(width), int(batch), int(pad_id)
        self.num_layers = model.config.num_layers
        self.hidden = model.config.hidden_size
        self.graphdef, self.state = nnx.split(model)

    def refresh(self) -> None:
        """Re-reads the model's parameters (after training it further)."""
        self.graphdef, self.state = nnx.split(self.model)

    def _chunks(self, trials: Sequence[Trial]):
        for first in range(0, len(trials), self.batch):
            chunk = list(trials[first:first + self.batch])
            yield chunk + [Trial(prompt=chunk[0].prompt)] * (self.batch - len(chunk)), len(chunk)

    def _arrays(self, chunk: Sequence[Trial]):
        tokens = np.full((self.batch, self.width), self.pad_id, np.int32)
        for row, trial in enumerate(chunk):
            ids = trial.prompt.tokens
            if len(ids) > self.width:
                raise ValueError(f"width: a prompt has {len(ids)} tokens, more than the runner's width {self.width}")
            tokens[row, :len(ids)] = ids
        vectors = np.stack([np.zeros(self.hidden, np.float32) if t.vector is None else np.asarray(t.vector, np.float32)
                            for t in chunk])
        strengths = [0.0 if t.vector is None else float(t.strength) for t in chunk]
        edit = row_intervention(self.num_layers, self.hidden, vectors=vectors, layers=[t.layer for t in chunk],
                                strengths=strengths, starts=[t.prompt.start for t in chunk],
                                ends=[t.prompt.end for t in chunk])
        return jnp.asarray(tokens), edit

    def read(self, trials: Sequence[Trial], *, logits_at: Sequence[Sequence[int]] | None = None,
             layers: Sequence[int] = (), positions: Sequence[Sequence[int]] | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward per chunk, under each trial's edit. Returns (logits [N, Q, V] float32 predicting
        the token after each of ``logits_at`` [N, Q] token indices (default: each prompt's last token,
        Q = 1); residuals [K, N, P, D] float32 at ``layers`` ("post") and ``positions`` [N, P] (default:
        the last token), or None without ``layers``)."""
        layers = tuple(int(i) for i in layers)
        last = [[len(t.prompt) - 1] for t in trials]
        logits_at = np.asarray(last if logits_at is None else logits_at, np.int32)
        positions = np.asarray(last if positions is None else positions, np.int32)
        for name, value in (("logits_at", logits_at), ("positions", positions)):
            if value.ndim != 2 or value.shape[0] != len(trials):
                raise ValueError(f"{name}: expected [N={len(trials)}, Q], got {list(value.shape)}")
        logits, residuals = [], []
        for first, (chunk, n) in zip(range(0, len(trials), self.batch), self._chunks(trials)):
            tokens, edit = self._arrays(chunk)
            at = np.zeros((self.batch, logits_at.shape[1]), np.int32)
            at[:n] = logits_at[first:first + n]
            rows = np.zeros((self.batch, positions.shape[1]), np.int32)
            rows[:n] = positions[first:first + n]
            out, captured = _read(self.graphdef, self.state, tokens, jnp.asarray(at), jnp.asarray(rows), edit,
                                  layers=layers)
            logits.append(np.asarray(out)[:n])
            if layers:
                residuals.append(np.asarray(captured, np.float32)[:, :n])
        return np.concatenate(logits), (np.concatenate(residuals, axis=1) if layers else None)

    def next_token_logits(self, trials: Sequence[Trial]) -> np.ndarray:
        """[N, V] float32: the next-token logits after each trial's prompt, under its edit."""
        return self.read(trials)[0][:, 0]

    def residuals(self, trials: Sequence[Trial], positions: Sequence[Sequence[int]], layers: Sequence[int]) -> np.ndarray:
        """[K, N, P, D] float32: residuals ("post" of each of ``layers``) at ``positions[i]`` (P token
        indices per trial, the same P for all) of each trial's prompt, under its edit."""
        if not layers:
            raise ValueError("layers: expected at least one layer")
        return self.read(trials, layers=layers, positions=positions)[1]

    def sample(self, trials: Sequence[Trial], *, max_new_tokens: int, temperature: float = 1.0,
               stop_tokens: Sequence[int] = (), seed: int = 0) -> list[list[int]]:
        """Sampled replies (token ids, up to and without the stop token) for each trial, under its edit.
        Chunk c uses ``jax.random.fold_in(key(seed), c)``, so a trial's sample depends on its chunk and
        row only: the same trials in the same order give the same samples with any edit that is zero."""
        from jaxstack.inference.sampler import SamplingConfig, generate

        config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=tuple(stop_tokens))
        replies = []
        stops = {int(t) for t in stop_tokens}
        for index, (chunk, n) in enumerate(self._chunks(trials)):
            _, edit = self._arrays(chunk)
            key = jax.random.fold_in(jax.random.key(seed), index)
            out = generate(self.model, [list(t.prompt.tokens) for t in chunk], config, seed=key,
                           pad_length=self.width, intervention=edit)
            tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            for row in range(n):
                ids = [int(t) for t in tokens[row, :lengths[row]]]
                replies.append([t for t in ids if t not in stops])
        return replies


__all__ = ["EncodedPrompt", "Trial", "TrialRunner", "encode_turns", "norm_matched_random", "row_intervention"]
