"""Shared fixtures: the tiny ChatGLM-6B folder, its golden outputs, and one loaded model per session."""
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-chatglm-6b"


@pytest.fixture(scope="session")
def tiny_dir():
    return TINY


@pytest.fixture(scope="session")
def golden():
    return np.load(TINY / "golden.npz")


@pytest.fixture(scope="session")
def golden_json():
    return json.loads((TINY / "golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def model():
    from glm_ms import ChatGLMForConditionalGeneration
    return ChatGLMForConditionalGeneration.from_pretrained(TINY, dtype="float32")


@pytest.fixture(scope="session")
def tokenizer():
    from glm_ms import ChatGLMTokenizer
    return ChatGLMTokenizer.from_pretrained(TINY)
