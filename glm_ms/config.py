"""ChatGLM-6B configuration read from `config.json` (same field names; unknown keys ignored)."""
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that is missing a field or contradicts itself."""


@dataclass(frozen=True)
class ChatGLMConfig:
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

    def __post_init__(self):
        if self.inner_hidden_size == 0:
            object.__setattr__(self, "inner_hidden_size", 4 * self.hidden_size)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "inner_hidden_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"config field {name!r} must be positive, got {getattr(self, name)!r}")
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
    def head_dim(self):
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self):
        """Dims rotated by each of the two rotary embeddings (half a head)."""
        return self.head_dim // 2

    @classmethod
    def from_dict(cls, data, source="config"):
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
    def from_file(cls, path):
        """Read `config.json` (or the config.json inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self):
        """Plain dict with config.json's field names."""
        return asdict(self)
