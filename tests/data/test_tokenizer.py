"""Any local HF tokenizer.json loads (a cosmo2-style one built here, no download); round trips are lossless."""

import json

import pytest
from tokenizers import pre_tokenizers

from jaxstack.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_bpe

# SmolLM2's cosmo2 tokenizer: these 17 added tokens at ids 0..16, digits split one by one, then byte-level BPE.
COSMO2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                   "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
                   "<empty_output>"]
CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3, "def add(a, b):\n    return a + b\n",
          "Problem: 347 + 286 = ?\nAnswer: 633", "Съешь же ещё этих мягких французских булок.", "日本語のテキスト"] * 20
SAMPLES = ["Hello, world!  Two spaces\tand a tab\n", "x = 12345 ** 2  # digits", "Ünïcödé — “quotes” 😀",
           "привет, мир", "中文和日本語", "<|im_start|>user\nhi<|im_end|>\n", "", " leading space"]


def _cosmo2_style_json(tmp_path):
    tokenizer = train_bpe(CORPUS, 400, special_tokens=COSMO2_SPECIALS)
    tokenizer.backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    data = json.loads(path.read_text())
    # the fields of the released file that a loader must accept as they are
    data["normalizer"] = None
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    data["truncation"], data["padding"] = None, None
    path.write_text(json.dumps(data))
    return tmp_path


def test_cosmo2_style_tokenizer_json_loads_with_smollm2_special_ids(tmp_path):
    tokenizer = load_tokenizer(_cosmo2_style_json(tmp_path))  # a directory holding tokenizer.json
    assert [tokenizer.backend.token_to_id(t) for t in COSMO2_SPECIALS] == list(range(17))
    assert tokenizer.eos_id == 0
    assert tokenizer.encode("<|im_start|>assistant\nok<|im_end|>")[0] == 1
    assert tokenizer.encode("<|im_start|>assistant\nok<|im_end|>")[-1] == 2
    digits = tokenizer.encode("2024")
    assert [tokenizer.decode([t]) for t in digits] == ["2", "0", "2", "4"]  # digits are split individually
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_trained_byte_level_bpe_round_trips_any_text():
    tokenizer = train_bpe(CORPUS, 320)
    assert [tokenizer.backend.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    unseen = "ⴰⵣⵓⵍ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"  # scripts absent from training fall back to bytes
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token.*tokenizer.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)
