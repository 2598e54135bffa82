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


def lm_class():
    """The ChatGLM2/3 model with generation (no chat): what the parity tests drive."""
    from glm_ms.generation import GenerationMixin
    from glm_ms.model_glm2 import ChatGLM2CausalLM

    class ChatGLM2LM(GenerationMixin, ChatGLM2CausalLM):
        pass
    return ChatGLM2LM


@functools.lru_cache(maxsize=None)
def model(family):
    """The tiny model of `family` in float32, loaded once per session."""
    return lm_class().from_folder(FOLDERS[family], dtype="float32")


def tokenizer(family, encode_special_tokens=False):
    return _tokenizer(family, encode_special_tokens)


@functools.lru_cache(maxsize=None)
def _tokenizer(family, encode_special_tokens):
    from glm_ms.tokenizer_glm2 import tokenizer_class
    options = {"encode_special_tokens": True} if encode_special_tokens else {}
    return tokenizer_class(family).from_pretrained(FOLDERS[family], **options)


@functools.lru_cache(maxsize=None)
def chat_model(family):
    """The tiny model of `family` with its chat methods, float32."""
    from glm_ms.chat_glm2 import chat_mixin

    class ChatLM(chat_mixin(family), lm_class()):
        pass
    return ChatLM.from_folder(FOLDERS[family], dtype="float32")


def as_json(value):
    """Tuples → lists etc., to compare with what golden.json stores."""
    return json.loads(json.dumps(value))
