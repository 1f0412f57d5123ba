"""SmolTalk chat template with assistant-only loss masks, first-fit packing, and the embedded corpus."""

import grain
import numpy as np
import pytest

from jaxstack.data import chat, embedded
from jaxstack.data.tokenizer import train_bpe

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "5"}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7 is prime."}],
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [chat.render_chat(c) for c in CONVERSATIONS] * 20
    return train_bpe(texts, 300)


def test_template_renders_smoltalk_format():
    text = chat.render_chat(CONVERSATIONS[0])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n5<|im_end|>\n")


def test_generation_prompt_and_jinja_template_render_the_same_bytes(tmp_path):
    """The one renderer gives the strings the three former ones did: ChatML, then
    ``<|im_start|>assistant\\n`` as the generation prompt; a Jinja ChatML template renders the same."""
    messages = CONVERSATIONS[0][:2]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
    assert chat.render_chat(messages) == expected
    assert chat.render_chat(messages, add_generation_prompt=True) == expected + "<|im_start|>assistant\n"
    assert chat.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"
    assert chat.apply_chat_template(messages, add_generation_prompt=False) == expected
    jinja = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
             "'<|im_end|>' + '\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert chat.apply_chat_template(messages, jinja) == expected + "<|im_start|>assistant\n"
    one = [{"role": "user", "content": "hi"}]
    assert chat.CHATML.header("user") + "hi" + chat.CHATML.footer() == chat.render_chat(one)
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": [{"name": "default", "template": "T"}]}')
    assert chat.load_chat_template(tmp_path) == "T"
    (tmp_path / "chat_template.jinja").write_text(jinja)
    assert chat.load_chat_template(tmp_path) == jinja  # the .jinja file wins


@pytest.mark.parametrize("messages, match", [
    ([], r"messages: expected a non-empty list"),
    ("hi", r"messages: expected a non-empty list"),
    ([["user", "hi"]], r"messages\[0\] must be \{'role'.*got a value of type list"),
    ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], r"messages\[1\]\.role is 'robot'"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\.content has type int"),
], ids=["empty", "string", "not-a-dict", "bad-role", "content-not-string"])
def test_validate_messages_names_the_entry_and_the_field(messages, match):
    with pytest.raises(ValueError, match=match):
        chat.validate_messages(messages)
    tool = [{"role": "tool", "content": "x", "name": "search"}]
    assert chat.validate_messages(tool) == [{"role": "tool", "content": "x"}]  # other keys dropped


def test_loss_mask_covers_assistant_content_and_end_marker_only(tokenizer):
    for conversation in CONVERSATIONS:
        example = chat.chat_example(conversation, tokenizer.encode)
        tokens, mask = example["tokens"], example["loss_mask"]
        assert tokens.dtype == np.int32 and mask.shape == tokens.shape
        assert tokenizer.decode(tokens.tolist()) == chat.render_chat(conversation)  # lossless
        trained = tokenizer.decode(tokens[mask == 1].tolist())
        expected = "".join(m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant")
        assert trained == expected
        assert tokens[mask == 1][-1] == 2  # <|im_end|> is trained: the model learns to stop
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        chat.chat_example([{"role": "robot", "content": "x"}], tokenizer.encode)


def test_sft_module_reuses_the_one_template():
    import inspect

    from jaxstack.data.adp import sft

    assert inspect.signature(sft.tokenize_example).parameters["template"].default is chat.CHATML
    assert inspect.signature(sft.chat_text).parameters["template"].default is chat.CHATML


def test_first_fit_packing_yields_what_the_trainer_consumes(tokenizer):
    import jax.numpy as jnp

    from jaxstack.train.step import make_batch

    dataset = chat.packed_chat_dataset(grain.MapDataset.source(CONVERSATIONS), tokenizer, seq_len=63, batch_size=2,
                                       shuffle=False)
    batch = next(iter(dataset))
    assert set(batch) == {"tokens", "loss_mask", "segment_ids", "positions"}
    for value in batch.values():
        assert value.shape == (2, 64) and value.dtype == np.int32
    for row in range(2):
        segments, positions = batch["segment_ids"][row], batch["positions"][row]
        assert set(np.unique(segments)) - {0}  # at least one conversation per row
        for s in set(np.unique(segments)) - {0}:
            span = segments == s
            np.testing.assert_array_equal(positions[span], np.arange(span.sum()))  # restart per conversation
            text = tokenizer.decode(batch["tokens"][row][span].tolist())
            assert text in [chat.render_chat(c) for c in CONVERSATIONS]
        assert not batch["loss_mask"][row][segments == 0].any()  # padding carries no loss
    step_batch = make_batch(*(jnp.asarray(batch[k]) for k in ("tokens", "loss_mask")),
                            segment_ids=jnp.asarray(batch["segment_ids"]), positions=jnp.asarray(batch["positions"]))
    assert step_batch["loss_mask"].shape == (2, 63) and float(step_batch["loss_mask"].sum()) > 0
    with pytest.raises(ValueError, match="exceed the packing length"):
        next(iter(chat.packed_chat_dataset(grain.MapDataset.source(CONVERSATIONS), tokenizer, seq_len=4,
                                           batch_size=1, shuffle=False)))


def test_embedded_corpus_is_deterministic_with_held_out_splits(tmp_path):
    config = embedded.CorpusConfig(code_chars=50_000, literature_chars=20_000, math_documents=300,
                                   math_validation_documents=40)
    names = ("web", "code", "math_hi", "math_lo")
    directory = embedded.build_corpus(config, names, root=tmp_path)
    assert embedded.build_corpus(config, names, root=tmp_path) == directory  # cached
    for name in names:
        train = embedded.source_documents(name, "train", config)
        valid = embedded.source_documents(name, "validation", config)
        assert train and valid and not set(train) & set(valid)
        assert train == embedded.source_documents(name, "train", config)  # deterministic
    # both math qualities state the same problems; only hi has steps
    hi, lo = embedded.source_documents("math_hi", "train", config), embedded.source_documents("math_lo", "train", config)
    assert [d.count("Problem:") for d in hi] == [d.count("Problem:") for d in lo]
    assert "Step 1:" in hi[0] and "Step" not in lo[0]
    # held-out arithmetic never appears in training
    train_problems = {p for doc in embedded.math_split(config, "train") for p in doc}
    assert not train_problems & {p for doc in embedded.math_split(config, "validation") for p in doc}
    with pytest.raises(ValueError, match="unknown source"):
        embedded.source_documents("wikipedia", "train", config)


@pytest.mark.parametrize("a,op,b", [(347, "+", 286), (999, "+", 1), (503, "-", 178), (100, "-", 99), (87, "*", 6)])
def test_step_by_step_solutions_are_correct_arithmetic(a, op, b):
    problem = embedded.Problem(a, op, b)
    assert problem.answer == eval(f"{a} {op} {b}")  # the plain-Python reference
    text = embedded.render_problem(problem, "hi")
    assert text.endswith(f"Answer: {problem.answer}")
    if op == "+":  # the written digits, read from the highest place down, are the answer
        written = [int(s.split("write ")[1][0]) for s in embedded.solution_steps(problem) if "write" in s]
        assert int("".join(map(str, written[::-1]))) == problem.answer
    if op == "-":
        digits = [int(s.rsplit("= ", 1)[1]) for s in embedded.solution_steps(problem)]
        assert int("".join(map(str, digits[::-1]))) == problem.answer
