"""What every test shares: fixture folders, golden outputs, one loaded model and tokenizer per family.

`conftest.py` exposes these as pytest fixtures; parametrized tests that need a family outside a fixture call
`tiny(family)` directly. Everything is loaded once per session.
"""
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY_FOLDERS = {"chatglm-6b": FIXTURES / "tiny-chatglm-6b", "chatglm2": FIXTURES / "tiny-chatglm2-6b",
                  "chatglm3": FIXTURES / "tiny-chatglm3-6b"}
FAMILIES = tuple(FAMILY_FOLDERS)
SECOND_GENERATION = ("chatglm2", "chatglm3")
REAL_MANIFESTS = {"chatglm-6b": FIXTURES / "chatglm-6b-real-manifest",
                  "chatglm2": FIXTURES / "chatglm2-6b-real-manifest",
                  "chatglm3": FIXTURES / "chatglm3-6b-real-manifest"}


def rel_err(a, b) -> float:
    """max|a - b| / max|b| in float64."""
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def as_json(value):
    """Tuples → lists etc., to compare with what golden.json stores."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class Tiny:
    """The tiny fixture model of one family: its folder, goldens, and (loaded on first use) model and tokenizer."""
    family: str

    @property
    def dir(self) -> Path:
        return FAMILY_FOLDERS[self.family]

    @property
    def golden(self) -> dict:
        return _golden(self.family)

    @property
    def golden_json(self) -> dict:
        return _golden_json(self.family)

    @property
    def model(self):
        return _model(self.family)

    @property
    def tokenizer(self):
        return _tokenizer(self.family, False)

    @property
    def tokenizer_special(self):
        """ChatGLM3's tokenizer loaded with encode_special_tokens=True."""
        return _tokenizer(self.family, True)


def tiny(family: str) -> Tiny:
    """The tiny fixture of `family`."""
    return Tiny(family)


@functools.lru_cache(maxsize=None)
def _golden(family):
    return dict(np.load(FAMILY_FOLDERS[family] / "golden.npz"))


@functools.lru_cache(maxsize=None)
def _golden_json(family):
    return json.loads((FAMILY_FOLDERS[family] / "golden.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _model(family):
    # As users get it: the generic entry point picks the class from the folder.
    from glm_ms import AutoModel
    return AutoModel.from_pretrained(FAMILY_FOLDERS[family], dtype="float32")


@functools.lru_cache(maxsize=None)
def _tokenizer(family, encode_special_tokens):
    from glm_ms import AutoTokenizer
    options = {"encode_special_tokens": True} if encode_special_tokens else {}
    return AutoTokenizer.from_pretrained(FAMILY_FOLDERS[family], **options)


# ----------------------------------------------------------------------------- fine-tuned (adapter) fixtures

ADAPTER_FOLDERS = {name: FIXTURES / name for name in (
    "tiny-chatglm-6b-lora", "tiny-chatglm3-6b-lora", "tiny-chatglm3-6b-lora-mlp",
    "tiny-chatglm-6b-ptuning", "tiny-chatglm-6b-ptuning-proj", "tiny-chatglm2-6b-ptuning")}
ADAPTERS = tuple(ADAPTER_FOLDERS)
PREFIX_ADAPTERS = tuple(n for n in ADAPTERS if "pre_seq_len" in json.loads(
    (ADAPTER_FOLDERS[n] / "golden.json").read_text(encoding="utf-8")))  # the P-tuning v2 ones


@dataclass(frozen=True)
class Adapted:
    """An adapter fixture (LoRA or P-tuning) applied to the base fixture its golden.json names."""
    name: str

    @property
    def dir(self) -> Path:
        return ADAPTER_FOLDERS[self.name]

    @property
    def golden(self) -> dict:
        return _adapter_golden(self.name)

    @property
    def golden_json(self) -> dict:
        return json.loads((self.dir / "golden.json").read_text(encoding="utf-8"))

    @property
    def base(self) -> Tiny:
        folder = FIXTURES / self.golden_json["base_fixture"]
        return tiny(next(f for f, d in FAMILY_FOLDERS.items() if d == folder))

    @property
    def model(self):
        return _adapted_model(self.name)


def adapted(name: str) -> Adapted:
    """The adapter fixture `name`."""
    return Adapted(name)


@functools.lru_cache(maxsize=None)
def _adapter_golden(name):
    return dict(np.load(ADAPTER_FOLDERS[name] / "golden.npz"))


@functools.lru_cache(maxsize=None)
def _adapted_model(name):
    from glm_ms import AutoModel
    return AutoModel.from_pretrained(adapted(name).base.dir, dtype="float32", adapter=ADAPTER_FOLDERS[name])
