"""The long-context fixtures (tiny-chatglm2-6b-32k, tiny-chatglm3-6b-32k): folders, goldens, one loaded model and
tokenizer per family, loaded once per session as tests/support.py does for the base fixtures."""
import functools
import json

import numpy as np

from tests.support import FIXTURES

LONG_FOLDERS = {"chatglm2": FIXTURES / "tiny-chatglm2-6b-32k", "chatglm3": FIXTURES / "tiny-chatglm3-6b-32k"}


@functools.lru_cache(maxsize=None)
def long_model(family):
    from glm_ms import AutoModel
    return AutoModel.from_pretrained(LONG_FOLDERS[family], dtype="float32")


@functools.lru_cache(maxsize=None)
def long_tokenizer(family):
    from glm_ms import AutoTokenizer
    return AutoTokenizer.from_pretrained(LONG_FOLDERS[family])


@functools.lru_cache(maxsize=None)
def long_golden(family):
    return dict(np.load(LONG_FOLDERS[family] / "golden.npz"))


@functools.lru_cache(maxsize=None)
def long_golden_json(family):
    return json.loads((LONG_FOLDERS[family] / "golden.json").read_text(encoding="utf-8"))
