"""Shared loaders for the ChatGLM2/ChatGLM3 tests: fixture folders, golden outputs, one model per family."""
import functools
import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
FOLDERS = {"chatglm2": FIXTURES / "tiny-chatglm2-6b", "chatglm3": FIXTURES / "tiny-chatglm3-6b"}
FAMILIES = tuple(FOLDERS)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@functools.lru_cache(maxsize=None)
def golden(family):
    return dict(np.load(FOLDERS[family] / "golden.npz"))


@functools.lru_cache(maxsize=None)
def golden_json(family):
    return json.loads((FOLDERS[family] / "golden.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def model(family):
    """The tiny model of `family` (float32) as users get it: the generic entry point picks the class."""
    from glm_ms import ChatGLMForConditionalGeneration
    return ChatGLMForConditionalGeneration.from_pretrained(FOLDERS[family], dtype="float32")


chat_model = model


def tokenizer(family, encode_special_tokens=False):
    return _tokenizer(family, encode_special_tokens)


@functools.lru_cache(maxsize=None)
def _tokenizer(family, encode_special_tokens):
    from glm_ms import AutoTokenizer
    options = {"encode_special_tokens": True} if encode_special_tokens else {}
    return AutoTokenizer.from_pretrained(FOLDERS[family], **options)


def as_json(value):
    """Tuples → lists etc., to compare with what golden.json stores."""
    return json.loads(json.dumps(value))
