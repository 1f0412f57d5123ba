"""Concept vectors (introspection paper recipe), contrastive vectors, and their safetensors files.

The reference recomputes every vector in numpy from residuals captured by the shared test forward
(conftest ``run``: all layers and positions), with the prompts laid out differently (two per call,
padded with another token id) from ``concept_vectors``' batches of 4: the same numbers to 1e-6 show
both the recipe and that padding / batching do not leak into a row.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxstack.interp import (
    DEFAULT_TEMPLATE,
    ConceptFileError,
    ConceptVectors,
    Intervention,
    chat_template,
    concept_vectors,
    contrastive_vector,
    load_concepts,
    save_concepts,
)

LAYER = 2
WORDS = ["Dust", "Trees", "Milk"]
BASELINE = ["Desks", "Rice", "Time", "Rice"]  # a repeated word counts twice, as in the paper's list
TEMPLATE = "{word}:"  # short prompts (<= 9 byte tokens) so the reference reuses the (2, 9) programs


class ByteTokenizer:
    """One token per UTF-8 byte (vocab 256)."""

    def encode(self, text):
        return list(text.encode())


def _reference_residuals(run, model, prompts, layer, site="post", pad=7, width=9):
    """[N, D] float64: each prompt's residual at its last token, two prompts per (2, width) call."""
    out = []
    for first in range(0, len(prompts), 2):
        pair = [list(p.encode()) for p in prompts[first:first + 2]]
        pair += [[1]] * (2 - len(pair))
        tokens = np.full((2, width), pad, np.int32)
        for row, ids in enumerate(pair):
            tokens[row, :len(ids)] = ids
        captured = np.asarray(run(model, jnp.asarray(tokens), site=site).captured["residual"], np.float64)
        out += [captured[layer, row, len(ids) - 1] for row, ids in enumerate(pair)]
    return np.stack(out[:len(prompts)])


def test_concept_vectors_equal_a_numpy_recomputation(llama, run):
    cv = concept_vectors(llama, ByteTokenizer(), WORDS, BASELINE, layer=LAYER, template=TEMPLATE, batch_size=2)
    assert cv.vectors.shape == (3, 64) and cv.vectors.dtype == np.float32
    assert cv.words == tuple(WORDS) and cv.layer == LAYER
    # the reference runs the library's program shape (2 rows, padded with 0 to the longest prompt), so what is
    # compared is the capture and the arithmetic, not XLA's rounding at another shape (a few f32 ulps at |x| ~ 2)
    prompts = {w: TEMPLATE.replace("{word}", w.lower()) for w in WORDS + BASELINE}
    width = max(len(p.encode()) for p in prompts.values())
    words = _reference_residuals(run, llama, [prompts[w] for w in WORDS], LAYER, pad=0, width=width)
    baseline = _reference_residuals(run, llama, [prompts[w] for w in BASELINE], LAYER, pad=0, width=width)
    expected = words - baseline.mean(axis=0)
    np.testing.assert_allclose(cv.vectors, expected, atol=1e-6, rtol=0)
    assert np.linalg.norm(cv.vectors, axis=1).min() > 1e-2
    np.testing.assert_array_equal(cv["Milk"], cv.vectors[2])
    meta = cv.metadata
    assert meta["layer"] == LAYER and meta["site"] == "post" and meta["position"] == "last"
    assert meta["template"] == TEMPLATE and meta["baseline_words"] == BASELINE and meta["words"] == WORDS
    assert meta["model"] == "LlamaForCausalLM" and meta["num_layers"] == 4 and len(meta["config_hash"]) == 16
    # negative layer indices resolve; the vector injects where it was read
    again = concept_vectors(llama, ByteTokenizer(), WORDS[:1], BASELINE, layer=LAYER - 4, template=TEMPLATE,
                            batch_size=4)
    np.testing.assert_array_equal(again.vectors[0], cv.vectors[0])
    edit = cv.intervention(["Dust", "Milk"], strength=2.0, start=3)
    assert isinstance(edit, Intervention) and edit.vectors.shape == (4, 2, 64)
    np.testing.assert_array_equal(np.asarray(edit.scales[:, 1]), [0.0, 0.0, 2.0, 0.0])
    np.testing.assert_array_equal(np.asarray(edit.vectors[LAYER, 1]), cv["Milk"])


def test_contrastive_vector_mean_and_pca(llama, run):
    positive = ["good", "great", "nice"]
    negative = ["bad", "awful", "mean"]
    mean = contrastive_vector(llama, ByteTokenizer(), positive, negative, layer=1, batch_size=4)
    pca = contrastive_vector(llama, ByteTokenizer(), positive, negative, layer=1, method="pca", batch_size=4)
    differences = _reference_residuals(run, llama, positive, 1) - _reference_residuals(run, llama, negative, 1)
    np.testing.assert_allclose(mean.vectors[0], differences.mean(axis=0), atol=1e-6, rtol=0)
    direction = np.linalg.svd(differences)[2][0]
    direction *= np.sign(direction @ differences.mean(axis=0))
    np.testing.assert_allclose(pca.vectors[0], direction, atol=1e-5, rtol=0)
    assert abs(np.linalg.norm(pca.vectors[0]) - 1) < 1e-5 and pca.vectors[0] @ mean.vectors[0] > 0
    assert pca.metadata["mean_projection"] == pytest.approx(float(direction @ differences.mean(axis=0)), rel=1e-5)
    assert mean.words == ("contrastive",) and pca.metadata["method"] == "pca"
    with pytest.raises(ValueError, match="equal length"):
        contrastive_vector(llama, ByteTokenizer(), positive, negative[:2], layer=1)
    with pytest.raises(ValueError, match="method"):
        contrastive_vector(llama, ByteTokenizer(), positive, negative, layer=1, method="umap")


def test_save_load_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    cv = ConceptVectors(vectors=rng.standard_normal((3, 64)).astype(np.float32), words=("dust", "trees", "milk"),
                        layer=2, metadata={"template": DEFAULT_TEMPLATE, "baseline_words": ["Desks", "Rice"],
                                           "site": "post", "position": "last", "config_hash": "abc", "num_layers": 4})
    path = tmp_path / "concepts.safetensors"
    save_concepts(path, cv)
    loaded = load_concepts(path)
    np.testing.assert_array_equal(loaded.vectors, cv.vectors)
    assert loaded.words == cv.words and loaded.layer == cv.layer and loaded.metadata == cv.metadata
    assert loaded.metadata["template"] == "Human: Tell me about {word}\n\nAssistant:"

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ConceptFileError, match=r"corrupt\.safetensors: not a readable safetensors file"):
        load_concepts(corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ConceptFileError, match="not a readable safetensors file"):
        load_concepts(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"vectors": cv.vectors}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ConceptFileError, match=r"metadata 'format' is 'pt'"):
        load_concepts(foreign)
    mismatched = tmp_path / "mismatched.safetensors"
    save_file({"vectors": cv.vectors[:2]}, str(mismatched),
              metadata={"format": "jaxstack.concepts/1", "words": json.dumps(list(cv.words)), "layer": "2",
                        "metadata": "{}"})
    with pytest.raises(ConceptFileError, match=r"'vectors' has shape \[2, 64\], expected \[N=3, D\]"):
        load_concepts(mismatched)
    broken_json = tmp_path / "broken.safetensors"
    save_file({"vectors": cv.vectors}, str(broken_json),
              metadata={"format": "jaxstack.concepts/1", "words": "[oops", "layer": "2", "metadata": "{}"})
    with pytest.raises(ConceptFileError, match="malformed metadata"):
        load_concepts(broken_json)
    with pytest.raises(FileNotFoundError):
        load_concepts(tmp_path / "missing.safetensors")


def test_prompt_rules_and_errors(llama):
    assert chat_template() == "<|im_start|>user\nTell me about {word}<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="template"):
        concept_vectors(llama, tokenizer, WORDS, BASELINE, layer=1, template="Tell me about it")
    with pytest.raises(ValueError, match=r"layer: expected an index in \[-4, 4\)"):
        concept_vectors(llama, tokenizer, WORDS, BASELINE, layer=4, template=TEMPLATE)
    with pytest.raises(ValueError, match="baseline_words"):
        concept_vectors(llama, tokenizer, WORDS, [], layer=1, template=TEMPLATE)
    with pytest.raises(ValueError, match="position"):
        concept_vectors(llama, tokenizer, WORDS, BASELINE, layer=1, template=TEMPLATE, position=40)
