"""Tokenizer behaviour shared by ChatGLM2 and ChatGLM3 against the golden cases, plus ChatGLM2's own rules."""
import numpy as np
import pytest

from glm_ms.tokenizers.chatglm2 import ChatGLM2Tokenizer, ChatGLM3Tokenizer
from tests.support import FAMILY_FOLDERS, SECOND_GENERATION, tiny


@pytest.fixture(params=SECOND_GENERATION)
def family(request):
    return request.param


def _cases(family, key):
    return [pytest.param(family, i, id=f"{family}-{i}") for i in range(len(tiny(family).golden_json[key]))]


TOKENIZER_CASES = [p for f in SECOND_GENERATION for p in _cases(f, "tokenizer_cases")]
DECODE_CASES = [p for f in SECOND_GENERATION for p in _cases(f, "decode_cases")]


@pytest.mark.parametrize("family, i", TOKENIZER_CASES)
def test_tokenizer_case(family, i):
    case, tok = tiny(family).golden_json["tokenizer_cases"][i], tiny(family).tokenizer
    enc = tok(case["text"])
    assert enc["input_ids"] == case["input_ids"]
    assert enc["position_ids"] == case["position_ids"]
    assert enc["attention_mask"] == [1] * len(case["input_ids"])
    assert tok.encode(case["text"]) == case["input_ids"]
    assert tok.convert_ids_to_tokens(case["input_ids"]) == case["tokens"]
    assert tok.decode(case["input_ids"], skip_special_tokens=True) == case["decoded"]
    assert tok.decode(case["input_ids"]) == case["decoded_keep_special"]
    assert tok.encode(case["text"], add_special_tokens=False) == case["encode_no_special"]
    assert tok.tokenize(case["text"]) == case["sp_pieces"]


@pytest.mark.parametrize("family, i", DECODE_CASES)
def test_decode_case(family, i):
    case, tok = tiny(family).golden_json["decode_cases"][i], tiny(family).tokenizer
    assert tok.decode(case["ids"]) == case["decoded"]
    assert tok.decode(np.array(case["ids"]), skip_special_tokens=True) == case["decoded_skip_special"]
    assert tok.convert_ids_to_tokens(case["ids"]) == case["tokens"]


def test_special_ids_follow_the_sentencepiece_vocabulary(family):
    g, tok = tiny(family).golden_json, tiny(family).tokenizer
    for token, token_id in g["special_token_ids"].items():
        assert tok.get_command(token) == token_id
    assert len(tok) == tok.vocab_size == g["sizes"]["tokenizer_vocab_size"]
    attrs = g["tokenizer_attrs"]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id, tok.unk_token, tok.padding_side) == (
        attrs["eos_token"], attrs["eos_token_id"], attrs["pad_token"], attrs["pad_token_id"], attrs["unk_token"],
        attrs["padding_side"])
    with pytest.raises(KeyError):
        tok.get_command("<|nope|>")


def test_left_padding_with_zero_attention_and_positions(family):
    g, tok = tiny(family).golden, tiny(family).tokenizer
    enc = tok(tiny(family).golden_json["prompts"][:2], padding=True)
    np.testing.assert_array_equal(enc["input_ids"], g["batch_input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"], g["batch_attention_mask"])
    np.testing.assert_array_equal(enc["position_ids"], g["batch_position_ids"])
    for i, prompt in enumerate(tiny(family).golden_json["prompts"]):
        single = tok(prompt, return_tensors="np")
        np.testing.assert_array_equal(single["input_ids"], g[f"fwd{i}_input_ids"])
        np.testing.assert_array_equal(single["position_ids"], g[f"fwd{i}_position_ids"])
    wide = tok(["你好"], padding="max_length", max_length=7)
    assert wide["input_ids"].tolist() == [[0, 0, 0] + tok.encode("你好")]
    assert wide["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    assert wide["position_ids"].tolist() == [[0, 0, 0, 0, 1, 2, 3]]
    with pytest.raises(ValueError, match="max_length"):
        tok(["你好"], padding="max_length", max_length=2)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["你好", "Hello world"], return_tensors="np")
    with pytest.raises(ValueError, match="left"):
        type(tok).from_pretrained(FAMILY_FOLDERS[family], padding_side="right")


def test_ids_beyond_the_tokenizer_decode_to_nothing(family):
    tok = tiny(family).tokenizer
    # Ids between the last special token and padded_vocab_size only pad the output matrix.
    assert tok.decode([469, tok.vocab_size, 3071, 1680]) == "ok"
    with pytest.raises(TypeError):
        tok.decode([1.5])


def test_save_and_reload_round_trip(family, tmp_path):
    tok = tiny(family).tokenizer
    tok.save_pretrained(tmp_path)
    again = type(tok).from_pretrained(tmp_path)
    text = tiny(family).golden_json["prompts"][2]
    assert again.encode(text) == tok.encode(text)
    assert again.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_chatglm2_prompt_format():
    tok = tiny("chatglm2").tokenizer
    assert isinstance(tok, ChatGLM2Tokenizer) and not isinstance(tok, ChatGLM3Tokenizer)
    for case in tiny("chatglm2").golden_json["build_prompt_cases"]:
        prompt = tok.build_prompt(case["query"], case["history"])
        assert prompt == case["prompt"]
        assert tok.encode(prompt) == case["input_ids"]
    assert not hasattr(tiny("chatglm3").tokenizer, "build_prompt")  # ChatGLM3 has role tokens instead
