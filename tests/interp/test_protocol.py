"""The introspection protocol as data (jaxstack.interp.protocol) and the batched trial runner
(jaxstack.interp.trials): word lists, exact prompts, injection windows on word-level and merging
tokenizers, per-row interventions, and concept vectors read at every layer at once."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.interp import Intervention, concept_vectors, protocol
from jaxstack.interp.introspection import Setup, assign, concept_vectors_all_layers
from jaxstack.interp.trials import (
    EncodedPrompt,
    Trial,
    TrialRunner,
    encode_turns,
    norm_matched_random,
    row_intervention,
)
from jaxstack.layers.interventions import NO_END

L, D = 4, 64


class ByteTokenizer:
    """One token per UTF-8 byte (vocab 256)."""

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode(errors="replace")


class MergingTokenizer(ByteTokenizer):
    """Bytes, except that ".\\n\\n" and " Trial" are single tokens (a BPE-like merge across the boundary)."""

    MERGES: ClassVar[dict[str, int]] = {".\n\n": 250, " Trial": 251}

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            for piece, token in self.MERGES.items():
                if text.startswith(piece, i):
                    out.append(token)
                    i += len(piece)
                    break
            else:
                out += list(text[i].encode())
                i += 1
        return out

    def decode(self, ids):
        back = {token: piece for piece, token in self.MERGES.items()}
        return "".join(back[int(i)] if int(i) in back else chr(int(i)) for i in ids)


def test_word_lists_are_the_papers():
    assert len(protocol.CONCEPT_WORDS) == 50 and len(set(protocol.CONCEPT_WORDS)) == 50
    assert "Information" in protocol.CONCEPT_WORDS and "Happiness" not in protocol.CONCEPT_WORDS
    assert len(protocol.BASELINE_WORDS) == 100 and len(set(protocol.BASELINE_WORDS)) == 99
    assert protocol.BASELINE_WORDS.count("Butterflies") == 2
    assert protocol.BASELINE_WORDS[:3] == ("Desks", "Jackets", "Gondolas") and protocol.BASELINE_WORDS[-1] == "Enigmas"
    assert len(protocol.CONTROL_QUESTIONS) == 20 and all(q.endswith("?") for q in protocol.CONTROL_QUESTIONS)
    assert protocol.CONTROL_QUESTIONS[-1] == "Do you have a special interest in fruits?"
    assert {k: len(v) for k, v in protocol.CATEGORY_WORDS.items()} == dict.fromkeys(protocol.CATEGORY_WORDS, 50)
    assert len(protocol.SENTENCES) == 50
    assert protocol.SENTENCES[0] == "The old clock on the wall ticked loudly."
    assert protocol.SENTENCES[-1] == "Snowflakes drifted lazily from the gray sky."
    assert "SUBSTITUTE" in protocol.SOURCES["sentences"] and "SUBSTITUTE" in protocol.SOURCES["control_words"]
    assert protocol.STRENGTHS == (1.0, 2.0, 4.0, 8.0) and protocol.TRIALS_PER_SETTING == 50
    assert protocol.MAX_NEW_TOKENS == 100 and protocol.TEMPERATURE == 1.0


def test_detection_prompt_is_exact():
    text = protocol.render_human_assistant(protocol.detection_turns())
    assert text.startswith("Human: I am an interpretability researcher studying transformer-based language models "
                           "like you.")
    assert '-- "thoughts" -- into your mind.' in text
    assert text.endswith("and the other 50% will be control trials.\n\nAssistant: Ok.\n\nHuman: Ok, let's get started."
                         "\n\nTrial 1: Do you detect an injected thought? If so, what is the injected thought about?"
                         "\n\nAssistant:")
    assert protocol.extraction_prompt("Dust") == "Human: Tell me about dust\n\nAssistant:"
    assert protocol.render_human_assistant(protocol.word_turns("A b.")) == (
        "Human: Tell me what word you think about when you read the line below. Answer immediately.\n\nA b.\n\n"
        "Assistant:")
    prefill = protocol.render_human_assistant(protocol.prefill_turns("A b.", "dust"))
    assert prefill.endswith("A b.\n\nAssistant: dust\n\nHuman: Did you mean to say that, or was it an accident?"
                            "\n\nAssistant:")
    forced = protocol.render_human_assistant(protocol.intent_turns("A b.", "dust", "dont_think"),
                                             add_generation_prompt=False)
    assert forced == ('Human: Write "A b." Don\'t think about dust while you write the sentence. Don\'t write '
                      'anything else.\n\nAssistant: A b.')
    with pytest.raises(ValueError, match="instruction"):
        protocol.intent_turns("A b.", "dust", "ponder")
    with pytest.raises(ValueError, match="turns"):
        protocol.render_human_assistant([("system", "x")])
    with pytest.raises(ValueError, match="prompt_format"):
        protocol.PromptFormat("chat")


def test_chat_rendering_keeps_the_teacher_forced_reply_last():
    def chatml(messages, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    fmt = protocol.PromptFormat("chat", chatml)
    assert fmt([("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert fmt([("user", "hi"), ("assistant", "A b.")], add_generation_prompt=False).endswith(
        "<|im_start|>assistant\nA b.")


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), MergingTokenizer()], ids=["bytes", "merging"])
def test_injection_start_and_sentence_span(tokenizer):
    text = protocol.render_human_assistant(protocol.detection_turns())
    ids = tokenizer.encode(text)
    start = protocol.injection_start(tokenizer.encode, text)
    at = text.find("\n\nTrial 1")
    # every token before the start lies before the "\n\n"; the start token holds its first character
    assert tokenizer.decode(ids[:start]) == text[:at] or isinstance(tokenizer, MergingTokenizer)
    if isinstance(tokenizer, MergingTokenizer):
        assert ids[start] == 250 and tokenizer.decode(ids[:start]) == text[:at - 1]  # ".\n\n" merged
    else:
        assert ids[start] == ord("\n") and ids[start + 1] == ord("\n")
    sentence = "The old clock on the wall ticked loudly."
    word = protocol.render_human_assistant(protocol.word_turns(sentence))
    first, last = protocol.sentence_span(tokenizer.encode, word, sentence)
    covered = tokenizer.decode(tokenizer.encode(word)[first:last])
    assert sentence[:-1] in covered  # a merged ".\n\n" token is included whole
    with pytest.raises(ValueError, match="marker"):
        protocol.injection_start(tokenizer.encode, "no trial here")
    with pytest.raises(ValueError, match="sentence"):
        protocol.sentence_span(tokenizer.encode, word, "absent")


def test_encode_turns_windows():
    tok = ByteTokenizer()
    fmt = protocol.PromptFormat()
    detection = encode_turns(tok.encode, protocol.detection_turns(), fmt, window="detection")
    assert detection.end == NO_END and detection.text[detection.start:].startswith("\n\nTrial 1")
    question = encode_turns(tok.encode, protocol.control_question_turns("Are you a human?"), fmt, window="question")
    assert question.text[question.start:].startswith("Are you a human?") and question.end == NO_END
    sentence = encode_turns(tok.encode, protocol.repeat_turns("A b."), fmt, window="sentence", sentence="A b.")
    assert tok.decode(sentence.tokens[sentence.start:sentence.end]) == "A b."
    with pytest.raises(ValueError, match="window"):
        encode_turns(tok.encode, protocol.repeat_turns("A b."), fmt, window="everywhere")
    with pytest.raises(ValueError, match="start / end"):
        EncodedPrompt(tokens=(1, 2), start=2, end=NO_END, text="")


def test_assign_is_balanced():
    rng = np.random.default_rng(0)
    out = assign(list("abcd"), 10, rng)
    assert len(out) == 10 and all(out.count(c) >= 2 for c in "abcd")
    with pytest.raises(ValueError, match="items"):
        assign([], 3, rng)


def test_row_intervention_equals_per_layer_add(llama, forward):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, D)).astype(np.float32)
    edit = row_intervention(L, D, vectors=vectors, layers=[1, 2], strengths=[3.0, 0.5], starts=[2, 0], ends=[NO_END, 4])
    assert edit.vectors.shape == (L, 2, D) and edit.scales.shape == (L, 2)
    np.testing.assert_array_equal(np.asarray(edit.scales), [[0, 0], [3.0, 0], [0, 0.5], [0, 0]])
    tokens = jnp.asarray(rng.integers(0, 256, (2, 9)), jnp.int32)
    capture = None
    out = forward(llama, tokens, edit, capture)
    # the same edits, one row at a time, through the public constructor
    for row in range(2):
        single = Intervention.add(vectors[row], layers=[1, 2][row], num_layers=L, strength=[3.0, 0.5][row],
                                  start=[2, 0][row], end=[NO_END, 4][row])
        ref = forward(llama, tokens[row:row + 1], single, capture)
        np.testing.assert_allclose(np.asarray(out.logits[row]), np.asarray(ref.logits[0]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layers"):
        row_intervention(L, D, vectors=vectors, layers=[0, 4], strengths=[1, 1], starts=0, ends=NO_END)


def test_norm_matched_random():
    reference = np.random.default_rng(1).standard_normal((5, 16)) * 3
    out = norm_matched_random(np.random.default_rng(2), reference)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-5)
    assert abs(np.mean(np.sum(out * reference, axis=1) / np.linalg.norm(reference, axis=1) ** 2)) < 0.5


def _setup(model, batch=4, width=48):
    tok = ByteTokenizer()
    return Setup(runner=TrialRunner(model, width=width, batch=batch), encode=tok.encode, decode=tok.decode,
                 prompt_format=protocol.PromptFormat(), stop_tokens=(), yes_ids=(ord("Y"),), no_ids=(ord("N"),),
                 word_token=lambda w: ord(w[0].lower()))


def test_concept_vectors_all_layers_equal_the_per_layer_recipe(llama):
    setup = _setup(llama)
    words, baseline = ["Dust", "Milk", "Trees"], ["Desks", "Rice", "Rice", "Time"]
    every = concept_vectors_all_layers(setup, words, baseline, [0, 2, 3])
    for layer in (0, 2, 3):
        reference = concept_vectors(llama, ByteTokenizer(), words, baseline, layer=layer, batch_size=4)
        np.testing.assert_allclose(every[layer].vectors, reference.vectors, atol=1e-5, rtol=0)
        assert every[layer].words == tuple(words) and every[layer].metadata["baseline_words"] == baseline
    with pytest.raises(ValueError, match="layers"):
        concept_vectors_all_layers(setup, words, baseline, [4])


def test_trial_runner_reads_and_samples(llama, forward):
    setup = _setup(llama, batch=4, width=16)
    prompts = [EncodedPrompt(tuple(range(5 + i, 12 + i)), 2, NO_END, "") for i in range(5)]
    vector = np.random.default_rng(3).standard_normal(D).astype(np.float32)
    plain = [Trial(p) for p in prompts]
    zero = [Trial(p, vector, 1, 0.0) for p in prompts]
    edited = [Trial(p, vector, 1, 4.0) for p in prompts]
    logits_plain = setup.runner.next_token_logits(plain)  # 5 trials: two chunks, the second padded
    assert logits_plain.shape == (5, 256)
    np.testing.assert_array_equal(setup.runner.next_token_logits(zero), logits_plain)
    edited_logits = setup.runner.next_token_logits(edited)
    assert np.abs(edited_logits - logits_plain).max() > 1e-3
    reference = forward(llama, jnp.asarray([list(prompts[4].tokens)]),
                        Intervention.add(vector, layers=1, num_layers=L, strength=4.0, start=2), None)
    np.testing.assert_allclose(edited_logits[4], np.asarray(reference.logits[0, -1]), atol=1e-5, rtol=0)
    # sampling: a zero edit samples exactly what no edit samples (same chunk keys)
    a = setup.runner.sample(plain, max_new_tokens=3, temperature=1.0, seed=7)
    b = setup.runner.sample(zero, max_new_tokens=3, temperature=1.0, seed=7)
    assert a == b and all(len(r) == 3 for r in a)
    with pytest.raises(ValueError, match="width"):
        setup.runner.next_token_logits([Trial(EncodedPrompt(tuple(range(20)), 0, NO_END, ""))])
