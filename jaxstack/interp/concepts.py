"""Concept vectors from captured residuals, and their safetensors files.

* :func:`concept_vectors`: the introspection paper's recipe (refs/evals_style.md section 1.3). For each
  word, the residual stream (site "post" of ``layer``: the output of block ``layer``) at the last token
  of ``Human: Tell me about {word}\\n\\nAssistant:`` (the final ``:``, the token just before the
  assistant's reply; word lowercased), minus the mean of the same activation over the baseline words.
  With a chat template (:func:`chat_template`) the last prompt token is the end of the assistant
  header, the template's equivalent.
* :func:`contrastive_vector`: repeng-style, from paired positive / negative prompts: the mean of the
  paired differences, or their first principal component.
* :func:`save_concepts` / :func:`load_concepts`: one safetensors file (``vectors`` [N, D] float32) with
  the words, layer, site, position rule, template, word lists and the model's name and config hash as
  JSON in the file's metadata.

The activations are read with :class:`~jaxstack.layers.interventions.Capture` in one jitted forward
per batch: prompts are right-padded (causal attention and the KDA recurrence never look right, so
padding cannot change a real token's residual) and each row is read at its own last real token.
Injecting a vector back at the same ``layer`` with ``site="post"`` (:meth:`ConceptVectors.intervention`)
adds it where it was read.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.layers.interventions import NO_END, SITES, Capture, Intervention

#: The paper's extraction prompt; ``{word}`` is replaced by the lowercased word.
DEFAULT_TEMPLATE = "Human: Tell me about {word}\n\nAssistant:"
FORMAT = "jaxstack.concepts/1"


class ConceptFileError(ValueError):
    """A concept-vector file that cannot be read (not safetensors, missing or malformed metadata)."""


@dataclasses.dataclass(frozen=True)
class ConceptVectors:
    """vectors: [N, D] float32, one per word (raw, unnormalised: strength multiplies these); words: N
    names; layer: the block whose output ("post") they were read from (and where to inject them);
    metadata: JSON-serialisable provenance (model, config_hash, num_layers, site, position, template,
    baseline words or prompts, method, ...)."""

    vectors: np.ndarray
    words: tuple[str, ...]
    layer: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.words):
            raise ValueError(f"vectors: expected [N={len(self.words)}, D] (one row per word), "
                             f"got {list(vectors.shape)}")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "words", tuple(self.words))

    def index(self, word: str) -> int:
        """The row of ``word`` (ValueError naming the known words if absent)."""
        try:
            return self.words.index(word)
        except ValueError:
            raise ValueError(f"word: {word!r} is not among the concept words {list(self.words)}") from None

    def __getitem__(self, word: str) -> np.ndarray:
        """The vector [D] of ``word``."""
        return self.vectors[self.index(word)]

    def intervention(self, words: str | Sequence[str], *, strength=1.0, start=0, end=NO_END,
                     num_layers: int | None = None, site: str | None = None) -> Intervention:
        """An "add" :class:`Intervention` of these words' vectors at ``self.layer``: one word for every
        row, or a list of words, one per row. ``num_layers`` defaults to the recorded model's."""
        num_layers = num_layers or self.metadata.get("num_layers")
        if num_layers is None:
            raise ValueError("num_layers: not recorded in the metadata; pass the model's number of layers")
        rows = [words] if isinstance(words, str) else list(words)
        vector = np.stack([self[word] for word in rows])
        return Intervention.add(vector if len(rows) > 1 else vector[0], layers=self.layer, num_layers=int(num_layers),
                                strength=strength, start=start, end=end,
                                site=site or self.metadata.get("site", "post"))


# ----------------------------------------------------------------------------------------------------
# Reading residuals


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "site"))
def _read_residuals(graphdef, state, tokens, read_at, *, layer: int, site: str):
    """[B, D] residuals at ``read_at`` [B] of ``tokens`` [B, T] (only the capture is returned, so XLA
    drops the LM head and, in the layer loop, the blocks after ``layer``)."""
    model = nnx.merge(graphdef, state)
    capture = Capture(positions=read_at[:, None], layers=(layer,), site=site)
    return model(tokens, capture=capture).captured["residual"][0, :, 0]


def _encode_all(tokenizer, prompts: Sequence[str | Sequence[int]], name: str) -> list[list[int]]:
    """Token ids per prompt: strings through ``tokenizer.encode``, token-id lists as they are."""
    out = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ValueError(f"{name}[{index}]: a string prompt needs a tokenizer")
            ids = list(tokenizer.encode(prompt))
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"{name}[{index}]: the prompt encodes to no tokens")
        out.append(ids)
    return out


def _normalise_layer(model, layer: int) -> int:
    num_layers = model.config.num_layers
    if not isinstance(layer, (int, np.integer)) or not -num_layers <= layer < num_layers:
        raise ValueError(f"layer: expected an index in [-{num_layers}, {num_layers}), got {layer!r}")
    return int(layer) % num_layers


def _position_rule(position: str | int) -> str | int:
    """``position`` as stored in the metadata (JSON: a str or a Python int)."""
    return position if isinstance(position, str) else int(position)


def _read_index(length: int, position: str | int, index: int, name: str) -> int:
    if position == "last":
        return length - 1
    if isinstance(position, (int, np.integer)) and not isinstance(position, bool):
        read = int(position) if position >= 0 else length + int(position)
        if not 0 <= read < length:
            raise ValueError(f"position: {position} is outside {name}[{index}] ({length} tokens)")
        return read
    raise ValueError(f"position: expected 'last' or a token index, got {position!r}")


def last_token_residuals(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, layer: int,
                         site: str = "post", position: str | int = "last", batch_size: int = 16,
                         pad_id: int = 0) -> np.ndarray:
    """The residual of each prompt at one token: [N, D] float32.

    prompts: strings (encoded with ``tokenizer.encode``) or token-id lists. layer / site: where to read
    (see :class:`~jaxstack.layers.interventions.Capture`). position: ``"last"`` (each prompt's last
    token) or a token index (negative: from the end). Batches of ``batch_size`` rows (the last one
    padded with dummy rows), all right-padded with ``pad_id`` to the longest prompt: one compile.
    """
    if site not in SITES:
        raise ValueError(f"site: expected one of {SITES}, got {site!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    layer = _normalise_layer(model, layer)
    ids = _encode_all(tokenizer, prompts, "prompts")
    if not ids:
        raise ValueError("prompts: expected at least one prompt")
    width = max(len(row) for row in ids)
    graphdef, state = nnx.split(model)
    out = []
    for first in range(0, len(ids), batch_size):
        chunk = ids[first:first + batch_size]
        tokens = np.full((batch_size, width), pad_id, np.int32)
        read_at = np.zeros((batch_size,), np.int32)
        for row, prompt in enumerate(chunk):
            tokens[row, :len(prompt)] = prompt
            read_at[row] = _read_index(len(prompt), position, first + row, "prompts")
        values = _read_residuals(graphdef, state, jnp.asarray(tokens), jnp.asarray(read_at), layer=layer, site=site)
        out.append(np.asarray(values, np.float32)[:len(chunk)])
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------------------------------
# Concept vectors


def config_hash(config) -> str:
    """sha256 (hex, first 16 characters) of a model config dataclass as sorted JSON."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _model_metadata(model) -> dict[str, Any]:
    config = model.config
    return {"model": type(model).__name__, "config_hash": config_hash(config), "num_layers": config.num_layers,
            "hidden_size": config.hidden_size}


def chat_template(user_text: str = "Tell me about {word}", template=None) -> str:
    """The extraction prompt rendered with a chat template (default ChatML), ending with the assistant
    header: its last token is the one just before the assistant's reply. Pass it as ``template=``."""
    from jaxstack.data.chat import CHATML, render_chat

    return render_chat([{"role": "user", "content": user_text}], template or CHATML, add_generation_prompt=True)


def concept_vectors(model, tokenizer, words: Sequence[str], baseline_words: Sequence[str], *, layer: int,
                    template: str = DEFAULT_TEMPLATE, position: str | int = "last", site: str = "post",
                    batch_size: int = 16) -> ConceptVectors:
    """One concept vector per word: the residual at ``layer`` ("post") on the last token of
    ``template`` (``{word}`` replaced by the lowercased word) minus the mean over ``baseline_words``
    (the list as given: a repeated word counts twice, as in the paper's list). Returns
    ConceptVectors(vectors [N, D] float32, words as given, layer, metadata)."""
    if "{word}" not in template:
        raise ValueError(f"template: expected a '{{word}}' placeholder, got {template!r}")
    words, baseline_words = list(words), list(baseline_words)
    if not words:
        raise ValueError("words: expected at least one word")
    if not baseline_words:
        raise ValueError("baseline_words: expected at least one word")
    layer = _normalise_layer(model, layer)
    prompts = {template.replace("{word}", word.lower()): None for word in words + baseline_words}
    texts = list(prompts)
    residuals = last_token_residuals(model, tokenizer, texts, layer=layer, site=site, position=position,
                                     batch_size=batch_size)
    row = {text: index for index, text in enumerate(texts)}
    acts = residuals.astype(np.float64)
    baseline = np.mean([acts[row[template.replace("{word}", w.lower())]] for w in baseline_words], axis=0)
    vectors = np.stack([acts[row[template.replace("{word}", w.lower())]] - baseline for w in words])
    metadata = {**_model_metadata(model), "kind": "concept", "layer": layer, "site": site,
                "position": _position_rule(position), "template": template, "words": words,
                "baseline_words": baseline_words, "lowercased": True}
    return ConceptVectors(vectors=vectors.astype(np.float32), words=tuple(words), layer=layer, metadata=metadata)


def contrastive_vector(model, tokenizer, positive_prompts: Sequence[str | Sequence[int]],
                       negative_prompts: Sequence[str | Sequence[int]], *, layer: int, method: str = "mean",
                       site: str = "post", position: str | int = "last", batch_size: int = 16,
                       name: str = "contrastive") -> ConceptVectors:
    """A steering vector from paired prompts (positive_prompts[i] pairs with negative_prompts[i]).

    With d_i = h(positive_i) - h(negative_i) (residuals at ``layer`` / ``site``, last token):
    ``method="mean"``: mean_i d_i. ``method="pca"``: the first principal direction of the d_i
    (uncentred: the top right-singular vector of the [N, D] matrix, so a consistent shift counts),
    unit norm, sign chosen so that it points along mean_i d_i; ``metadata["mean_projection"]`` is
    (mean_i d_i) . u, the scale at which it matches the mean difference along u.
    Returns ConceptVectors with one vector named ``name``.
    """
    if method not in ("mean", "pca"):
        raise ValueError(f"method: expected 'mean' or 'pca', got {method!r}")
    positive_prompts, negative_prompts = list(positive_prompts), list(negative_prompts)
    if not positive_prompts or len(positive_prompts) != len(negative_prompts):
        raise ValueError(f"positive_prompts / negative_prompts: expected two non-empty lists of equal length "
                         f"(pairs), got {len(positive_prompts)} and {len(negative_prompts)}")
    layer = _normalise_layer(model, layer)
    residuals = last_token_residuals(model, tokenizer, positive_prompts + negative_prompts, layer=layer, site=site,
                                     position=position, batch_size=batch_size).astype(np.float64)
    count = len(positive_prompts)
    differences = residuals[:count] - residuals[count:]
    mean = differences.mean(axis=0)
    metadata = {**_model_metadata(model), "kind": "contrastive", "method": method, "layer": layer, "site": site,
                "position": _position_rule(position), "pairs": count,
                "positive_prompts": [p if isinstance(p, str) else [int(t) for t in p] for p in positive_prompts],
                "negative_prompts": [p if isinstance(p, str) else [int(t) for t in p] for p in negative_prompts]}
    if method == "mean":
        vector = mean
    else:
        _, _, vt = np.linalg.svd(differences, full_matrices=False)
        vector = vt[0]
        if float(vector @ mean) < 0:
            vector = -vector
        metadata["mean_projection"] = float(vector @ mean)
    return ConceptVectors(vectors=vector[None].astype(np.float32), words=(name,), layer=layer, metadata=metadata)


# ----------------------------------------------------------------------------------------------------
# Files


def save_concepts(path: str | os.PathLike, cv: ConceptVectors) -> None:
    """Writes ``cv`` as safetensors: tensor ``vectors`` [N, D] float32; metadata ``format``, ``words``,
    ``layer`` and ``metadata`` (JSON strings)."""
    from safetensors.numpy import save_file

    try:
        metadata = {"format": FORMAT, "words": json.dumps(list(cv.words)), "layer": str(int(cv.layer)),
                    "metadata": json.dumps(cv.metadata)}
    except TypeError as error:
        raise ValueError(f"metadata: must be JSON-serialisable to be saved ({error})") from None
    save_file({"vectors": np.ascontiguousarray(cv.vectors, np.float32)}, os.fspath(path), metadata=metadata)


def load_concepts(path: str | os.PathLike) -> ConceptVectors:
    """Reads a file written by :func:`save_concepts`. Raises FileNotFoundError for a missing path and
    :class:`ConceptFileError` (a ValueError) for a file that is not one."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"concepts file {path}: does not exist")
    try:
        with safe_open(path, framework="numpy") as handle:
            header = handle.metadata() or {}
            keys = set(handle.keys())
            vectors = handle.get_tensor("vectors") if "vectors" in keys else None
    except Exception as error:  # safetensors raises SafetensorError / OSError on a malformed file
        raise ConceptFileError(f"concepts file {path}: not a readable safetensors file ({error})") from None
    if header.get("format") != FORMAT:
        raise ConceptFileError(f"concepts file {path}: metadata 'format' is {header.get('format')!r}, "
                               f"expected {FORMAT!r} (written by jaxstack.interp.save_concepts)")
    if vectors is None:
        raise ConceptFileError(f"concepts file {path}: no 'vectors' tensor (found {sorted(keys)})")
    try:
        words = json.loads(header["words"])
        layer = int(header["layer"])
        metadata = json.loads(header["metadata"])
    except (KeyError, ValueError, TypeError) as error:
        raise ConceptFileError(f"concepts file {path}: malformed metadata ({type(error).__name__}: {error})") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ConceptFileError(f"concepts file {path}: 'vectors' has shape {list(vectors.shape)}, expected "
                               f"[N={len(words)}, D] for {len(words)} words")
    return ConceptVectors(vectors=vectors, words=tuple(words), layer=layer, metadata=metadata)


__all__ = [
    "ConceptFileError",
    "ConceptVectors",
    "DEFAULT_TEMPLATE",
    "chat_template",
    "concept_vectors",
    "config_hash",
    "contrastive_vector",
    "last_token_residuals",
    "load_concepts",
    "save_concepts",
]
