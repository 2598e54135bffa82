"""ChatGLM3's own tokenizer rules: role tokens, `encode_special_tokens`, `build_chat_input`."""
import pytest

from glm_ms.tokenizers.chatglm2 import ChatGLM3Tokenizer
from tests.support import tiny

CASES = tiny("chatglm3").golden_json["tokenizer_cases"]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_encode_special_tokens_turns_role_tokens_into_ids(i):
    case = CASES[i]
    tok = tiny("chatglm3").tokenizer_special
    assert tok.encode(case["text"]) == case["input_ids_encode_special_tokens"]


def test_only_role_tokens_are_recognised_in_text():
    tok = tiny("chatglm3").tokenizer_special
    ids = tok.encode("<|observation|>[gMASK]", add_special_tokens=False)
    assert ids[0] == tok.get_command("<|observation|>")
    assert tok.get_command("[gMASK]") not in ids
    assert tiny("chatglm3").tokenizer.encode("<|user|>", add_special_tokens=False) != [tok.get_command("<|user|>")]


@pytest.mark.parametrize("i", range(len(tiny("chatglm3").golden_json["build_chat_input_cases"])))
def test_build_chat_input(i):
    case = tiny("chatglm3").golden_json["build_chat_input_cases"][i]
    enc = tiny("chatglm3").tokenizer.build_chat_input(case["query"], history=case["history"], role=case["role"])
    assert enc["input_ids"].tolist() == [case["input_ids"]]
    assert enc["position_ids"].tolist() == [case["position_ids"]]
    assert enc["attention_mask"].tolist() == [case["attention_mask"]]


def test_build_chat_input_rejects_unknown_roles():
    with pytest.raises(ValueError, match="role"):
        tiny("chatglm3").tokenizer.build_chat_input("hi", role="tool")


def test_role_tokens_decode_literally():
    tok = tiny("chatglm3").tokenizer
    assert isinstance(tok, ChatGLM3Tokenizer)
    ids = [tok.get_command("<|assistant|>")] + tok.encode("你好", add_special_tokens=False)
    assert tok.decode(ids) == "<|assistant|> 你好"
    assert tok.convert_ids_to_tokens(tok.get_command("<|system|>")) == "<|system|>"
