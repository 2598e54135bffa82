"""Model configurations read from `config.json` (same field names; unknown keys ignored).

`ChatGLMConfig` is ChatGLM-6B's, `ChatGLM2Config` the one ChatGLM2-6B and ChatGLM3-6B share; which one a folder
holds is decided by `glm_ms.families.detect`, the only place that knows the families.
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .errors import ConfigError, NotFoundError

# Sizes far above any released ChatGLM, so a crafted config.json (num_layers: 1e8) is refused before anything is
# built from it, instead of exhausting memory.
LIMITS = {"num_layers": 1024, "hidden_size": 1 << 16, "num_attention_heads": 1 << 10, "vocab_size": 1 << 21,
          "padded_vocab_size": 1 << 21, "inner_hidden_size": 1 << 18, "ffn_hidden_size": 1 << 18,
          "kv_channels": 1 << 12, "multi_query_group_num": 1 << 10, "max_sequence_length": 1 << 21,
          "seq_length": 1 << 21}
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; a bigger file is not one


def read_config_json(path: os.PathLike | str) -> Tuple[Path, Dict[str, Any]]:
    """(path, dict) of `config.json`, given the file or its folder; missing file or bad JSON is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise NotFoundError(f"no config.json at {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return path, data


def _check_family(config: Any) -> None:
    from .families import get  # the table imports this module; it is complete by the time a config is built
    row = get(config.family)
    if row.config.rpartition(":")[2] != type(config).__name__:
        raise ConfigError(f"family {config.family!r} does not use {type(config).__name__}")


def _check_sizes(config: Any, names: Tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if value > LIMITS.get(name, value):
            raise ConfigError(f"config field {name!r} = {value} is beyond any ChatGLM model (limit {LIMITS[name]})")


class _ConfigJSON:
    """Reading and writing config.json for the config dataclasses below."""

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "config"):
        """Build from a config.json dict; unknown keys are ignored, missing required ones named."""
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: os.PathLike | str):
        """Read `config.json` (or the config.json inside a folder)."""
        path, data = read_config_json(path)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict with config.json's field names."""
        return asdict(self)


@dataclass(frozen=True)
class ChatGLMConfig(_ConfigJSON):
    vocab_size: int              # embedding rows = lm_head rows (130528 current, 150528 old layout)
    hidden_size: int             # model width
    num_layers: int              # GLM blocks
    num_attention_heads: int     # heads per block; head_dim = hidden_size / heads
    bos_token_id: int            # <sop>: starts the generated span; everything before it is context
    eos_token_id: int            # <eop>: generation stops here
    mask_token_id: int           # [MASK]
    gmask_token_id: int          # [gMASK]: the span to generate (what chat prompts use)
    pad_token_id: int            # left padding
    inner_hidden_size: int = 0   # MLP width; 0 means 4 * hidden_size (upstream default)
    max_sequence_length: int = 2048   # positions the model was trained on (rotary tables sized from it)
    layernorm_epsilon: float = 1e-5
    position_encoding_2d: bool = True  # ChatGLM-6B always uses the 2D (position, block position) rotary
    model_type: str = "chatglm"
    torch_dtype: str = "float16"       # dtype of the published weights
    family: str = "chatglm-6b"         # not in upstream's config.json: the row of glm_ms.families

    def __post_init__(self):
        if self.inner_hidden_size == 0 and isinstance(self.hidden_size, int):
            object.__setattr__(self, "inner_hidden_size", 4 * self.hidden_size)
        _check_sizes(self, ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "inner_hidden_size",
                            "max_sequence_length"))
        _check_family(self)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"config field 'hidden_size' ({self.hidden_size}) is not divisible by "
                              f"'num_attention_heads' ({self.num_attention_heads})")
        if self.head_dim % 4:
            raise ConfigError(f"head size hidden_size/num_attention_heads = {self.head_dim} must be a multiple of 4 "
                              "(2D rotary splits each head in two halves, each rotated in pairs)")
        if not self.position_encoding_2d:
            raise ConfigError("config field 'position_encoding_2d' is false: only ChatGLM-6B's 2D positions are supported")
        for name in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id"):
            if not 0 <= int(getattr(self, name)) < self.vocab_size:
                raise ConfigError(f"config field {name!r} = {getattr(self, name)} is outside the vocabulary "
                                  f"(vocab_size {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Dims rotated by each of the two rotary embeddings (half a head)."""
        return self.head_dim // 2


# ----------------------------------------------------------------------------- ChatGLM2-6B / ChatGLM3-6B


@dataclass(frozen=True)
class ChatGLM2Config(_ConfigJSON):
    """ChatGLM2-6B / ChatGLM3-6B `config.json` (the two share one architecture and one config layout).

    `family` is not in config.json: `glm_ms.families.detect` decides it (ChatGLM2 or ChatGLM3); only the tokenizer's
    role tokens and the chat format depend on it.
    """
    padded_vocab_size: int          # embedding / output rows (65024); the tokenizer uses fewer ids (64798)
    hidden_size: int                # model width
    num_layers: int                 # GLM blocks
    num_attention_heads: int        # query heads per block
    ffn_hidden_size: int            # SwiGLU width: dense_h_to_4h has 2 * ffn_hidden_size outputs
    kv_channels: int = 0            # head size; 0 (or null) means hidden_size / num_attention_heads
    multi_query_attention: bool = True
    multi_query_group_num: int = 1  # key/value heads shared by groups of query heads (when multi_query_attention)
    add_bias_linear: bool = False   # bias on dense, dense_h_to_4h, dense_4h_to_h
    add_qkv_bias: bool = True       # bias on query_key_value only (the released models)
    apply_residual_connection_post_layernorm: bool = False  # residual from the normalized input instead
    apply_query_key_layer_scaling: bool = True  # q / layer_number, undone in float32 before the softmax
    attention_softmax_in_fp32: bool = True
    fp32_residual_connection: bool = False
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True            # RMSNorm (else LayerNorm with bias)
    post_layer_norm: bool = True    # final_layernorm after the last block
    original_rope: bool = True      # upstream flag; both values use the same rotary code
    rope_ratio: float = 1.0         # long-context variants' rotary stretch (16, 50); see `rope_scaling`
    seq_length: int = 8192          # positions the model has: generation refuses a max_length beyond it
    eos_token_id: int = 2           # </s>
    pad_token_id: int = 0           # <unk> doubles as pad
    pre_seq_len: Optional[int] = None  # P-tuning v2 prefix length (not supported)
    model_type: str = "chatglm"
    torch_dtype: str = "float16"
    family: str = "chatglm2"        # not in config.json: the row of glm_ms.families (ChatGLM2 or ChatGLM3)

    def __post_init__(self):
        if not self.kv_channels:
            if self.num_attention_heads and self.hidden_size % self.num_attention_heads == 0:
                object.__setattr__(self, "kv_channels", self.hidden_size // self.num_attention_heads)
        _check_sizes(self, ("padded_vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                            "ffn_hidden_size", "kv_channels", "multi_query_group_num", "seq_length"))
        if self.kv_channels % 4:
            raise ConfigError(f"config field 'kv_channels' ({self.kv_channels}) must be a multiple of 4 "
                              "(rotary turns pairs in the first half of each head)")
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(f"config field 'num_attention_heads' ({self.num_attention_heads}) is not divisible by "
                              f"'multi_query_group_num' ({self.multi_query_group_num})")
        if self.pre_seq_len:
            raise ConfigError("config field 'pre_seq_len' is set: P-tuning v2 prefix checkpoints are not supported")
        if self.fp32_residual_connection:
            raise ConfigError("config field 'fp32_residual_connection' is true: not supported")
        if not self.rope_ratio > 0:
            raise ConfigError(f"config field 'rope_ratio' must be > 0, got {self.rope_ratio!r}")
        _check_family(self)
        for name in ("eos_token_id", "pad_token_id"):
            if not 0 <= int(getattr(self, name)) < self.padded_vocab_size:
                raise ConfigError(f"config field {name!r} = {getattr(self, name)} is outside the vocabulary "
                                  f"(padded_vocab_size {self.padded_vocab_size})")

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding and output matrices (what logits span)."""
        return self.padded_vocab_size

    @property
    def head_dim(self) -> int:
        """Size of one query/key/value head (`kv_channels`, not always hidden_size / heads)."""
        return self.kv_channels

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads: the query groups with multi-query attention, else one per query head."""
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that rotary turns (the first half, as adjacent pairs)."""
        return self.kv_channels // 2

    @property
    def rope_scaling(self) -> str:
        """How `rope_ratio` stretches the rotary: the family's rule ("positions" or "base")."""
        from .families import get  # the table imports this module
        return get(self.family).rope_scaling

    @property
    def rotary_base(self) -> float:
        """Base of the rotary frequencies: 10000, times `rope_ratio` under the "base" rule."""
        return 10000.0 * (self.rope_ratio if self.rope_scaling == "base" else 1.0)

    @property
    def rotary_position_scale(self) -> float:
        """What positions are divided by before they turn: `rope_ratio` under the "positions" rule, else 1."""
        return float(self.rope_ratio) if self.rope_scaling == "positions" else 1.0
