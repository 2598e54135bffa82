"""ChatGLM-6B tokenizer: parity with the upstream tokenizer's golden outputs, padding/masks/positions, image offset."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from glm_ms.positions import position_ids_2d, prefix_lm_mask
from glm_ms.errors import TokenizerError
from glm_ms.tokenizers.chatglm import BatchEncoding, ChatGLMTokenizer, SPTokenizer
from tests.support import FAMILIES, FAMILY_FOLDERS, tiny

FIXTURE = os.fspath(FAMILY_FOLDERS["chatglm-6b"])
VOCAB = os.path.join(FIXTURE, "ice_text.model")

with open(os.path.join(FIXTURE, "golden.json"), encoding="utf-8") as _f:
    GOLDEN = json.load(_f)
CASES = GOLDEN["tokenizer_cases"]
PROMPTS = GOLDEN["prompts"]


@pytest.fixture(scope="module")
def tok():
    return ChatGLMTokenizer.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def tok_img():
    return ChatGLMTokenizer(VOCAB, num_image_tokens=20000)


@pytest.fixture(scope="module")
def npz():
    with np.load(os.path.join(FIXTURE, "golden.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def sp():
    proc = spm.SentencePieceProcessor()
    proc.Load(VOCAB)
    return proc


# ---- golden parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:30] for c in CASES])
def test_golden_tokenizer_case(tok, case):
    text = case["text"]
    assert tok.encode(text) == case["input_ids"]
    assert tok.tokenize(text) + [tok.gmask_token, tok.bos_token] == case["tokens"]
    assert tok.encode(text, add_special_tokens=False) == case["encode_no_special"]
    assert tok.decode(case["input_ids"], skip_special_tokens=True) == case["decoded"]
    # tokens and ids agree both ways
    assert tok.convert_tokens_to_ids(case["tokens"]) == case["input_ids"]
    assert tok.convert_ids_to_tokens(case["input_ids"]) == case["tokens"]


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_golden_single_prompt_inputs(tok, npz, i):
    enc = tok([PROMPTS[i]], padding=True)
    np.testing.assert_array_equal(enc["input_ids"], npz[f"fwd{i}_input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"], npz[f"fwd{i}_attention_mask"])
    np.testing.assert_array_equal(enc["position_ids"], npz[f"fwd{i}_position_ids"])
    assert enc["input_ids"].dtype == np.int64
    assert enc["attention_mask"].dtype == np.bool_
    assert enc["position_ids"].dtype == np.int64


def test_golden_batch_left_padding(tok, npz):
    enc = tok(PROMPTS[0:2], padding=True)
    np.testing.assert_array_equal(enc["input_ids"], npz["batch_input_ids"])
    b, L = enc["input_ids"].shape
    assert enc["attention_mask"].shape == (b, 1, L, L)
    assert enc["position_ids"].shape == (b, 2, L)
    for row in range(b):
        single_ids = npz[f"fwd{row}_input_ids"][0]
        n = len(single_ids)
        pad = L - n
        assert (enc["input_ids"][row, :pad] == tok.pad_token_id).all()
        np.testing.assert_array_equal(enc["input_ids"][row, pad:], single_ids)
        mask = enc["attention_mask"][row, 0]
        np.testing.assert_array_equal(mask[pad:, pad:], npz[f"fwd{row}_attention_mask"][0, 0])
        assert mask[:pad, :].all() and mask[:, :pad].all()  # pad rows and columns fully masked
        pos = enc["position_ids"][row]
        np.testing.assert_array_equal(pos[:, pad:], npz[f"fwd{row}_position_ids"][0])
        assert (pos[:, :pad] == 0).all()
    assert L - len(npz["fwd0_input_ids"][0]) == 7  # "你好" really was padded in this batch


def test_special_ids_come_from_model_and_match_config(tok, sp):
    with open(os.path.join(FIXTURE, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert tok.bos_token_id == config["bos_token_id"] == sp.PieceToId("<sop>")
    assert tok.eos_token_id == config["eos_token_id"] == sp.PieceToId("<eop>")
    assert tok.mask_token_id == config["mask_token_id"] == sp.PieceToId("[MASK]")
    assert tok.gmask_token_id == config["gmask_token_id"] == sp.PieceToId("[gMASK]")
    assert tok.pad_token_id == config["pad_token_id"] == sp.PieceToId("<pad>")
    assert tok.unk_token_id == sp.PieceToId("<unk>") == 0
    assert tok.end_token_id == sp.PieceToId("</s>") == 2
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<sop>", "<eop>", "<pad>", "<unk>")
    assert (tok.mask_token, tok.gmask_token, tok.end_token) == ("[MASK]", "[gMASK]", "</s>")
    assert tok.vocab_size == len(tok) == config["vocab_size"] == 3000
    assert tok.padding_side == "left"
    assert tok.num_image_tokens == 0


def test_vocab_and_conversions(tok):
    vocab = tok.get_vocab()
    assert len(vocab) == tok.vocab_size
    assert vocab["<sop>"] == 8 and vocab["[gMASK]"] == 5 and vocab["<|blank_80|>"] == 92
    assert tok.convert_tokens_to_ids("<n>") == 12
    assert tok.convert_tokens_to_ids(["<|tab|>", "▁"]) == [13, 349]
    assert tok.convert_tokens_to_ids("no-such-piece") == tok.unk_token_id  # sentencepiece's behaviour
    assert tok.convert_ids_to_tokens(14) == "<|blank_2|>"
    assert tok.convert_ids_to_tokens(np.int64(856)) == "你好"
    assert tok.convert_ids_to_tokens([8, 349, 9, 5], skip_special_tokens=True) == ["▁", "[gMASK]"]


# ---- special tokens inside text -----------------------------------------------------------------------------------


def test_special_token_in_text_splits_and_strips(tok):
    # Each chunk goes through sentencepiece on its own, so "世界" gets its own dummy-prefix "▁";
    # the spaces around <sop> vanish. "世" is not in the tiny vocabulary: byte fallback.
    tokens = tok.tokenize("你好 <sop> 世界")
    assert tokens == ["▁", "你好", "<sop>", "▁", "<0xE4>", "<0xB8>", "<0x96>", "界"]
    assert tok.encode("你好 <sop> 世界") == [349, 856, 8, 349, 321, 277, 243, 2792, 5, 8]
    assert tok.tokenize("你好 <sop> 世界") == tok.tokenize("你好") + ["<sop>"] + tok.tokenize("世界")
    # newlines are whitespace too, stripped on both sides of every no-split token
    assert tok.tokenize("a\n<eop>\n b") == ["▁a", "<eop>", "▁", "b"]
    assert tok.tokenize("  <unk>  ") == ["<unk>"]
    assert tok.tokenize("<pad><eop>") == ["<pad>", "<eop>"]
    assert tok.tokenize("a [MASK] b") == ["▁a", "[MASK]", "▁", "b"]


def test_gmask_in_text_is_not_a_no_split_token(tok):
    # [gMASK] is not in transformers' special-tokens map: sentencepiece finds it, the spaces stay.
    assert tok.tokenize("a [gMASK] b") == ["▁a", "▁", "[gMASK]", "▁", "b"]
    assert tok.encode("a [gMASK] b", add_special_tokens=False) == [550, 349, 5, 349, 424]


def test_literal_n_piece_in_text_is_a_newline(tok):
    assert tok.encode("<n>", add_special_tokens=False) == tok.encode("\n", add_special_tokens=False)


# ---- decoding -----------------------------------------------------------------------------------------------------


def test_decode_accepts_int_list_and_numpy(tok):
    ids = [349, 856, 5, 8]
    expected = "你好[gMASK]<sop>"
    assert tok.decode(ids) == expected
    assert tok.decode(tuple(ids)) == expected
    assert tok.decode(np.array(ids, dtype=np.int64)) == expected
    assert tok.decode(np.array(ids, dtype=np.int32)) == expected
    assert tok.decode([np.int64(i) for i in ids]) == expected
    assert tok.decode(856) == "你好"
    assert tok.decode(np.int64(856)) == "你好"
    assert tok.decode([]) == ""
    assert tok.decode(np.array([], dtype=np.int64)) == ""
    assert tok.batch_decode(np.array([[349, 856], [3, 856]])) == ["你好", "你好"]


def test_decode_drops_pad_always_and_specials_when_asked(tok):
    ids = [3, 3, 349, 856, 9, 0, 4, 5, 8, 3]
    assert tok.decode(ids) == "你好<eop> ⁇ [MASK][gMASK]<sop>"
    assert tok.decode(ids, skip_special_tokens=True) == "你好[gMASK]"
    assert tok.decode([3, 3, 3]) == ""


def test_decode_clean_up_tokenization_spaces(tok):
    ids = tok.encode("a . b ? c ! d , it 's we 're", add_special_tokens=False)
    assert tok.decode(ids) == "a. b? c! d, it's we're"
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == "a . b ? c ! d , it 's we 're"


def test_whitespace_round_trip(tok):
    for text in ["x" + " " * 170 + "y", "a\t\tb\n\nc", "  two leading", "end   ", "tab\t and  spaces\n"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text + "[gMASK]"
    ids = tok.encode("x" + " " * 170 + "y", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["▁x", "<|blank_80|>", "<|blank_80|>", "<|blank_10|>", "y"]


@pytest.mark.parametrize("bad", [3000, -1, 10**9])
def test_bad_id_raises_value_error_naming_it(tok, bad):
    with pytest.raises(ValueError, match=str(bad)):
        tok.decode([349, bad])
    with pytest.raises(ValueError, match=str(bad)):
        tok.convert_ids_to_tokens(bad)


def test_non_integer_ids_rejected(tok):
    with pytest.raises(TypeError):
        tok.decode([1.5])
    with pytest.raises(TypeError):
        tok.decode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(np.zeros((2, 3), dtype=np.int64))


# ---- __call__ -----------------------------------------------------------------------------------------------------


def test_call_without_padding_returns_lists(tok):
    enc = tok("你好")
    assert isinstance(enc, BatchEncoding) and isinstance(enc, dict)
    assert enc["input_ids"] == enc.input_ids == [349, 856, 5, 8]
    assert set(enc) == {"input_ids"}
    assert dict(**enc) == {"input_ids": [349, 856, 5, 8]}
    assert tok(["你好", "介绍一下清华大学"]).input_ids == [[349, 856, 5, 8], tok.encode("介绍一下清华大学")]
    assert tok("你好", add_special_tokens=False).input_ids == [349, 856]
    with pytest.raises(AttributeError):
        enc.no_such_key


def test_call_single_string_with_padding_is_batched(tok, npz):
    enc = tok("你好", padding=True)
    np.testing.assert_array_equal(enc.input_ids, npz["fwd0_input_ids"])
    np.testing.assert_array_equal(enc.attention_mask, npz["fwd0_attention_mask"])
    np.testing.assert_array_equal(enc.position_ids, npz["fwd0_position_ids"])


def test_call_return_tensors_np_equal_lengths(tok, npz):
    enc = tok([PROMPTS[0], PROMPTS[0]], return_tensors="np")
    assert enc.input_ids.dtype == np.int64 and enc.input_ids.shape == (2, 4)
    np.testing.assert_array_equal(enc.input_ids, np.repeat(npz["fwd0_input_ids"], 2, axis=0))
    np.testing.assert_array_equal(enc.attention_mask, np.repeat(npz["fwd0_attention_mask"], 2, axis=0))
    np.testing.assert_array_equal(enc.position_ids, np.repeat(npz["fwd0_position_ids"], 2, axis=0))


def test_call_return_tensors_unequal_lengths_without_padding_raises(tok):
    with pytest.raises(ValueError, match="padding=True"):
        tok(PROMPTS[0:2], return_tensors="np")


def test_call_padding_max_length(tok, npz):
    enc = tok(PROMPTS[0:2], padding="max_length", max_length=16)
    assert enc.input_ids.shape == (2, 16)
    assert enc.attention_mask.shape == (2, 1, 16, 16)
    assert enc.position_ids.shape == (2, 2, 16)
    np.testing.assert_array_equal(enc.input_ids[1, 5:], npz["fwd1_input_ids"][0])
    assert (enc.input_ids[1, :5] == tok.pad_token_id).all()
    np.testing.assert_array_equal(enc.attention_mask[1, 0, 5:, 5:], npz["fwd1_attention_mask"][0, 0])
    np.testing.assert_array_equal(enc.position_ids[1, :, 5:], npz["fwd1_position_ids"][0])
    with pytest.raises(ValueError, match="max_length"):
        tok(PROMPTS[0:2], padding="max_length")
    with pytest.raises(ValueError, match="exceeds max_length"):
        tok(PROMPTS[0:2], padding="max_length", max_length=5)
    with pytest.raises(ValueError):
        tok("你好", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("你好", padding=True, return_tensors="pt")


def test_mask_and_positions_follow_mask_token(tok):
    # [MASK] in the prompt wins over the appended [gMASK] for the frozen position, as upstream's _pad.
    ids = tok.encode("a [MASK] b")
    enc = tok("a [MASK] b", padding=True)
    mask_pos = ids.index(tok.mask_token_id)
    ctx = ids.index(tok.bos_token_id)
    np.testing.assert_array_equal(enc.position_ids[0, 0, ctx:], mask_pos)
    np.testing.assert_array_equal(enc.position_ids[0, 1], [0] * ctx + list(range(1, len(ids) - ctx + 1)))
    np.testing.assert_array_equal(enc.attention_mask[0], prefix_lm_mask(ids, tok.bos_token_id))
    np.testing.assert_array_equal(
        enc.position_ids[0], position_ids_2d(ids, tok.bos_token_id, tok.mask_token_id, tok.gmask_token_id)
    )


# ---- image-token offset (old 150528 vocabulary layout) ------------------------------------------------------------


def test_image_token_offset_shifts_every_id(tok, tok_img):
    assert tok_img.num_image_tokens == 20000
    assert tok_img.vocab_size == len(tok_img) == 20000 + 3000
    for attr in ("bos", "eos", "pad", "unk", "mask", "gmask", "end"):
        assert getattr(tok_img, f"{attr}_token_id") == getattr(tok, f"{attr}_token_id") + 20000
    for case in CASES:
        assert tok_img.encode(case["text"]) == [i + 20000 for i in case["input_ids"]]
        shifted = [i + 20000 for i in case["input_ids"]]
        assert tok_img.decode(shifted, skip_special_tokens=True) == case["decoded"]
        assert tok_img.convert_ids_to_tokens(shifted) == case["tokens"]


def test_image_token_ids_below_offset(tok_img):
    assert tok_img.convert_ids_to_tokens([0, 5, 19999]) == ["<image_0>", "<image_5>", "<image_19999>"]
    assert tok_img.convert_tokens_to_ids("<image_7>") == 7
    assert tok_img.get_vocab()["<image_123>"] == 123
    # SPTokenizer.decode drops image ids; the HF-style decode keeps their token text, as upstream.
    assert tok_img.sp_tokenizer.decode([5, 20349, 20856, 19999]) == "你好"
    # "<image_5>" comes out as literal text; the "▁" after it is no longer the first piece, so its space stays.
    assert tok_img.decode([5, 20349, 20856]) == "<image_5> 你好"
    with pytest.raises(ValueError, match="23000"):
        tok_img.decode([23000])


def test_image_token_offset_padding(tok_img, npz):
    enc = tok_img(PROMPTS[0:2], padding=True)
    np.testing.assert_array_equal(enc.input_ids, np.where(npz["batch_input_ids"] == 3, 20003,
                                                          npz["batch_input_ids"] + 20000))
    ref = ChatGLMTokenizer(VOCAB)(PROMPTS[0:2], padding=True)
    np.testing.assert_array_equal(enc.attention_mask, ref.attention_mask)
    np.testing.assert_array_equal(enc.position_ids, ref.position_ids)


# ---- SPTokenizer ---------------------------------------------------------------------------------------------------


def test_sp_tokenizer_whitespace_substitution():
    spt = SPTokenizer(VOCAB, num_image_tokens=0)
    assert spt._preprocess("a\n\tb" + " " * 90 + "c  d") == "a<n><|tab|>b<|blank_80|><|blank_10|>c<|blank_2|>d"
    assert spt.postprocess("a<n><|tab|>b<|blank_80|><|blank_10|>c<|blank_2|>d") == "a\n\tb" + " " * 90 + "c  d"
    assert spt.encode("你好") == [349, 856]
    assert spt.tokenize("a\tb") == ["▁a", "<|tab|>", "b"]
    # add_dummy_prefix=False drops the leading "▁"
    assert spt.tokenize("你好", add_dummy_prefix=False) == ["你好"]
    assert spt.encode("你好", add_dummy_prefix=False) == [856]
    assert spt["<sop>"] == 8 and spt[8] == "<sop>"
    assert spt.num_tokens == spt.num_text_tokens == 3000


# ---- loading and saving -------------------------------------------------------------------------------------------


def test_missing_vocab_file_names_it(tmp_path):
    shutil.copy(os.path.join(FIXTURE, "tokenizer_config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="ice_text.model"):
        ChatGLMTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="ice_text.model"):
        ChatGLMTokenizer(str(tmp_path / "ice_text.model"))


def test_missing_config_names_it(tmp_path):
    shutil.copy(VOCAB, tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        ChatGLMTokenizer.from_pretrained(tmp_path)


def test_from_pretrained_overrides(tmp_path):
    t = ChatGLMTokenizer.from_pretrained(FIXTURE, num_image_tokens=20000)
    assert t.num_image_tokens == 20000 and t.bos_token_id == 20008
    with pytest.raises(TypeError, match="no_such_option"):
        ChatGLMTokenizer.from_pretrained(FIXTURE, no_such_option=1)
    with pytest.raises(ValueError, match="left"):
        ChatGLMTokenizer(VOCAB, padding_side="right")
    with pytest.raises(ValueError, match="not a piece"):
        ChatGLMTokenizer(VOCAB, bos_token="<no-such-token>")


def test_save_pretrained_round_trip(tok_img, tmp_path):
    out = tmp_path / "saved"
    paths = tok_img.save_pretrained(out)
    assert sorted(os.path.basename(p) for p in paths) == ["ice_text.model", "tokenizer_config.json"]
    with open(out / "tokenizer_config.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["num_image_tokens"] == 20000 and saved["bos_token"] == "<sop>"
    again = ChatGLMTokenizer.from_pretrained(out)
    assert again.num_image_tokens == 20000
    for case in CASES:
        assert again.encode(case["text"]) == tok_img.encode(case["text"])


def test_save_pretrained_keeps_unknown_config_keys(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    with open(tmp_path / "tokenizer_config.json", encoding="utf-8") as f:
        saved = json.load(f)
    with open(os.path.join(FIXTURE, "tokenizer_config.json"), encoding="utf-8") as f:
        original = json.load(f)
    for key, value in original.items():
        assert saved[key] == value


def test_no_framework_imports():
    code = (
        "import sys, glm_ms.tokenizers.chatglm; "
        "bad = [m for m in ('mindspore', 'torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


@pytest.mark.parametrize("name", FAMILIES)
def test_lone_surrogate_is_a_clear_tokenizer_error(name):
    tok = tiny(name).tokenizer
    for call in (lambda: tok.encode("半个\ud83d表情"), lambda: tok(["ok", "\udc00"]), lambda: tok.tokenize("\ud800")):
        with pytest.raises(TokenizerError, match="lone surrogate U\\+D[8-F][0-9A-F]{2} at index"):
            call()
    assert "好" in tok.decode(tok.encode("好"))  # the tokenizer still works
