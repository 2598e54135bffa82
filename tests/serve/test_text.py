"""Reply text from generated ids: incremental decoding equals decoding everything, stops never leak, deltas add up."""
import numpy as np
import pytest

from glm_ms.chat import process_response
from glm_ms.serve.text import ReplyText, cut_at_stop, held_suffix
from tests.support import FAMILIES, tiny


def raw(text, done):
    return text


def streamed(reply, ids):
    deltas = [reply.push(i) for i in ids]
    deltas.append(reply.finish())
    return deltas


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_equals_decoding_everything(family):
    tok = tiny(family).tokenizer
    rng = np.random.default_rng(0)
    vocab = tok.vocab_size
    samples = [rng.integers(0, vocab, size=n).tolist() for n in (1, 7, 40, 120)]
    samples.append(tok.encode("你好，世界！ hello   world\n\n中文 😀 emoji", add_special_tokens=False)
                   if family != "chatglm-6b" else tok.encode("你好，世界！ hello   world\n\n中文", ))
    for ids in samples:
        reply = ReplyText(tok.decode, raw)
        deltas = streamed(reply, ids)
        assert reply.raw_text() == tok.decode(ids)
        assert "".join(deltas) == reply.final() == tok.decode(ids)
        assert not reply.diverged


def test_a_stop_string_cuts_before_it_and_is_never_emitted_in_part():
    pieces = ["Hel", "lo wo", "rld, ST", "OP here"]
    reply = ReplyText(lambda ids: "".join(pieces[i] for i in ids), raw, stops=["STOP"])
    deltas = [reply.push(i) for i in range(3)]
    assert "".join(deltas) == "Hello world"  # ", ST" waits: it could start STOP (and "," may still change)
    assert not reply.stopped
    assert reply.push(3) == ", "
    assert reply.stopped and reply.final() == "Hello world, "
    assert reply.push(0) == "" and reply.finish() == ""


def test_clean_up_rewrites_wait_until_they_are_final():
    # ChatGLM-6B makes "," full-width next to a CJK character: after "ab" the comma waits for what follows.
    pieces = ["你好", ",", "世界", " ab", ",", "中", "[[训练", "时间]]", " "]
    reply = ReplyText(lambda ids: "".join(pieces[i] for i in ids), lambda text, done: process_response(text))
    assert [reply.push(i) for i in range(9)] == ["你好", "，", "世界", " ab", "", "，中", "", "2023年", ""]
    assert reply.finish() == "" and reply.final() == "你好，世界 ab，中2023年"


def test_helpers():
    assert held_suffix("abc ST", ["STOP"]) == 2
    assert held_suffix("abc", ["STOP"]) == 0
    assert held_suffix("STO", ["STOP", "TOP!"]) == 3
    assert cut_at_stop("a b c", ["b", "c"]) == ("a ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
