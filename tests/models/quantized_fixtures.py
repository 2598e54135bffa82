"""The weight-only quantized twins of the tiny fixtures (see ../fixtures/README.md), loaded once per session."""
import functools
import json

import numpy as np

from tests.support import FAMILY_FOLDERS, FIXTURES

QUANTIZED = {"chatglm-6b-int8": FIXTURES / "tiny-chatglm-6b-int8", "chatglm-6b-int4": FIXTURES / "tiny-chatglm-6b-int4",
             "chatglm2-int4": FIXTURES / "tiny-chatglm2-6b-int4"}
VARIANTS = tuple(QUANTIZED)


def family_of(variant: str) -> str:
    """The base family of a quantized variant ("chatglm-6b-int8" → "chatglm-6b")."""
    return variant.rpartition("-")[0]


def bits_of(variant: str) -> int:
    """The quantization bits of a variant."""
    return int(variant.rpartition("-int")[2])


def base_dir(variant: str):
    """The float16 fixture the variant was quantized from."""
    return FAMILY_FOLDERS[family_of(variant)]


@functools.lru_cache(maxsize=None)
def golden(variant: str) -> dict:
    return dict(np.load(QUANTIZED[variant] / "golden.npz"))


@functools.lru_cache(maxsize=None)
def golden_json(variant: str) -> dict:
    return json.loads((QUANTIZED[variant] / "golden.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def model(variant: str):
    from glm_ms import AutoModel
    return AutoModel.from_pretrained(QUANTIZED[variant], dtype="float32")


@functools.lru_cache(maxsize=None)
def tokenizer(variant: str):
    from glm_ms import AutoTokenizer
    return AutoTokenizer.from_pretrained(QUANTIZED[variant])


def prompts(variant: str) -> range:
    """Indices of the forward / greedy goldens."""
    return range(sum(1 for key in golden(variant) if key.startswith("fwd") and key.endswith("_input_ids")))
