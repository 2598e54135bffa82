"""THE family table: which ChatGLM generations exist and which classes serve each. Adding a family is a row here.

Each row names its classes by dotted path, so importing this module (and detecting a folder's family) loads no
MindSpore. `detect(folder)` reads config.json once and returns the family with its parsed config.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .config import read_config_json
from .errors import ConfigError


@dataclass(frozen=True)
class ChatDefaults:
    """The generation settings a family's `chat` uses unless told otherwise (upstream's values)."""
    max_length: int
    top_p: float
    temperature: float


@dataclass(frozen=True)
class Family:
    """One row of the table. Dotted paths are `module:attribute`, loaded on first use."""
    name: str            # "chatglm-6b", recorded in converted folders
    title: str           # what users read ("ChatGLM-6B")
    config: str          # config dataclass
    names: str           # `convert.names.NameTable` of its checkpoints
    model: str           # public model class (network + generation + chat)
    tokenizer: str       # tokenizer class
    tokenizer_file: str  # the sentencepiece file a tokenizer folder of this family holds
    chat: ChatDefaults
    # How config.json's `rope_ratio` stretches the rotary (long-context variants): "positions" divides the
    # positions (ChatGLM2-6B-32K's interpolation), "base" multiplies the rotary base (ChatGLM3-6B-32K).
    rope_scaling: str = ""

    def load(self, what: str) -> Any:
        """The object a dotted-path field names: `family.load("model")`."""
        module, _, attribute = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), attribute)

    def config_from_dict(self, data: Dict[str, Any], source: str = "config.json") -> Any:
        """This family's config from a config.json dict (its family recorded)."""
        return self.load("config").from_dict(dict(data, family=self.name), source=source)


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("chatglm-6b", "ChatGLM-6B", "glm_ms.config:ChatGLMConfig", "glm_ms.convert.names:CHATGLM_6B",
           "glm_ms.api:ChatGLMForConditionalGeneration", "glm_ms.tokenizers.chatglm:ChatGLMTokenizer",
           "ice_text.model", ChatDefaults(max_length=2048, top_p=0.7, temperature=0.95)),
    Family("chatglm2", "ChatGLM2-6B", "glm_ms.config:ChatGLM2Config", "glm_ms.convert.names:CHATGLM2",
           "glm_ms.api:ChatGLM2ForConditionalGeneration", "glm_ms.tokenizers.chatglm2:ChatGLM2Tokenizer",
           "tokenizer.model", ChatDefaults(max_length=8192, top_p=0.8, temperature=0.8), rope_scaling="positions"),
    Family("chatglm3", "ChatGLM3-6B", "glm_ms.config:ChatGLM2Config", "glm_ms.convert.names:CHATGLM2",
           "glm_ms.api:ChatGLM3ForConditionalGeneration", "glm_ms.tokenizers.chatglm2:ChatGLM3Tokenizer",
           "tokenizer.model", ChatDefaults(max_length=8192, top_p=0.8, temperature=0.8), rope_scaling="base"),
)}


def get(name: str) -> Family:
    """The row of family `name`; an unknown name is a ConfigError listing the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


@dataclass(frozen=True)
class Detected:
    """What `detect` found: the family row and its parsed config."""
    family: Family
    config: Any


def _layout(data: Dict[str, Any], source: str) -> str:
    # ChatGLM-6B's config has the 2D-position switch; ChatGLM2/3 share another layout (and one config class).
    if "padded_vocab_size" in data or "ffn_hidden_size" in data or "multi_query_group_num" in data:
        return "chatglm2"
    if "position_encoding_2d" in data or "inner_hidden_size" in data or "gmask_token_id" in data:
        return "chatglm-6b"
    raise ConfigError(f"{source}: describes no known ChatGLM generation (no 'padded_vocab_size' as in ChatGLM2/3, "
                      "no 'position_encoding_2d' as in ChatGLM-6B)")


def _named(*names: Optional[str]) -> Optional[str]:
    """'chatglm3' / 'chatglm2' when a repository name (config `_name_or_path`, tokenizer `name_or_path`) says so."""
    for name in names:
        text = str(name or "").lower().replace("_", "").replace("-", "")
        if "chatglm3" in text:
            return "chatglm3"
        if "chatglm2" in text or "codegeex2" in text:
            return "chatglm2"
    return None


def _tokenizer_config_name(folder: Path) -> Optional[str]:
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _second_generation(folder: Optional[Path], data: Dict[str, Any]) -> str:
    """ChatGLM2 or ChatGLM3 for a second-generation folder.

    The two share config.json's fields and the sentencepiece model (the role tokens live in the tokenizer code),
    so the third generation is recognised, in order, by: a `family` key in config.json (glm-ms-convert writes
    it), the repository name in config.json / tokenizer_config.json, and a shipped `tokenization_chatglm.py`
    that knows `<|observation|>`. Without any of these the folder is taken as ChatGLM2.
    """
    if data.get("family") in ("chatglm2", "chatglm3"):
        return data["family"]
    named = _named(data.get("_name_or_path"), _tokenizer_config_name(folder) if folder else None)
    if named:
        return named
    code = folder / "tokenization_chatglm.py" if folder else None
    if code is not None and code.is_file() and "<|observation|>" in code.read_text(encoding="utf-8", errors="replace"):
        return "chatglm3"
    return "chatglm2"


def family_of(data: Dict[str, Any], folder: Optional[os.PathLike] = None, family: Optional[str] = None,
              source: str = "config.json") -> Family:
    """The family a config.json dict (of `folder`, when known) describes; `family` overrides within a layout."""
    folder = Path(folder) if folder is not None else None
    layout = _layout(data, source)
    if family is not None:
        chosen = get(family)
        if chosen.config != get(layout).config:
            raise ConfigError(f"{source}: a {get(layout).title} config cannot be loaded as {chosen.title}")
        return chosen
    return get(layout if layout == "chatglm-6b" else _second_generation(folder, data))


def detect(folder: os.PathLike | str, family: Optional[str] = None) -> Detected:
    """Read `folder`'s config.json once: its family row and parsed config (`family` overrides the detection)."""
    folder = Path(folder)
    folder = folder.parent if folder.is_file() else folder
    path, data = read_config_json(folder)
    row = family_of(data, folder, family, str(path))
    return Detected(row, row.config_from_dict(data, source=str(path)))


def tokenizer_family(folder: os.PathLike | str, family: Optional[str] = None) -> Family:
    """The family of a tokenizer folder: from config.json when there is one, else from its sentencepiece file."""
    folder = Path(folder)
    if family is not None:
        return get(family)
    if (folder / "config.json").is_file():
        path, data = read_config_json(folder)
        return family_of(data, folder, source=str(path))
    for row in FAMILIES.values():  # rows sharing a file: the first (older) generation is the default
        if (folder / row.tokenizer_file).is_file():
            if row.tokenizer_file == "tokenizer.model":
                return get(_named(_tokenizer_config_name(folder)) or row.name)
            return row
    raise ConfigError(f"{folder}: no config.json and no tokenizer file "
                      f"({', '.join(sorted({r.tokenizer_file for r in FAMILIES.values()}))})")
