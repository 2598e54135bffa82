"""Upstream checkpoint names → glm_ms parameter names, one reviewable table per checkpoint layout.

The cells keep the upstream names, so almost every row is the identity; a `None` target drops a tensor on
purpose. A `NameTable` bundles its rows with what the converter needs to check a checkpoint without building
the model: the parameter shapes a config implies and the tied pairs. Which table serves a folder is the
family table's business (`glm_ms.families`, field `names`), not this module's.

Weight-only quantized checkpoints (upstream's int8/int4 repositories, `quantization_bit` in config.json) store
each quantized linear as `weight` int8 ([N, K], or [N, K/2] packed for int4) plus `weight_scale` float16 [N];
`Quantization` says which, and a table lists the modules it applies to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, UnknownTensorError
from ..kernels.quantize import QuantizationError, packed_columns

Shapes = dict[str, tuple[int, ...]]

LAYER = "{i}"  # stands for the layer number in a row's pattern and target
SCALE = "weight_scale"  # the per-row scale a quantized module stores next to its int8 `weight`


@dataclass(frozen=True)
class Quantization:
    """Weight-only quantization of a model: `bits` 8 or 4, and whether the embeddings / output layer are too."""

    bits: int
    embeddings: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise ConfigError(f"quantization bits (config.json's quantization_bit) must be 4 or 8, not {self.bits!r}")
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"quantization_embeddings must be true or false, not {self.embeddings!r}")

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "config.json") -> Quantization | None:
        """The quantization a config.json dict declares (`quantization_bit`, `quantization_embeddings`), or None."""
        bits = data.get("quantization_bit")
        if bits is None or (bits == 0 and not isinstance(bits, bool)):
            return None
        try:
            return cls(bits, data.get("quantization_embeddings", False))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def config_entries(self) -> dict[str, Any]:
        """The config.json keys that declare this quantization (what a quantized conversion writes)."""
        return {"quantization_bit": self.bits, "quantization_embeddings": self.embeddings}


def requested_quantization(stored: Quantization | None, bits: int | None,
                           embeddings: bool = False) -> Quantization | None:
    """The quantization to build (or write) for a checkpoint quantized as `stored` when `bits` (8, 4 or None)
    and `embeddings` are asked for; re-quantizing to other bits is an error."""
    if bits is None:
        if embeddings and stored is None:
            raise QuantizationError("quantize_embeddings needs quantize=8 or 4 (or an int8/int4 checkpoint)")
        return stored if not embeddings else Quantization(stored.bits, True)
    if stored is not None and stored.bits != bits:
        raise QuantizationError(f"the checkpoint is already quantized to int{stored.bits}; quantizing it again to "
                                f"int{bits} would round twice (load the float16 checkpoint instead)")
    return Quantization(bits, embeddings or (stored is not None and stored.embeddings))


@dataclass(frozen=True)
class NameTable:
    """One checkpoint layout: (pattern, target | None) rows, the shapes a config implies, the tied pairs."""

    name: str  # names the table in error messages ("not in the chatglm-6b name table")
    rows: tuple[tuple[str, str | None], ...]
    shapes: Callable[[Any], Shapes]  # config dataclass → parameter name → shape
    tied: dict[str, str] = field(default_factory=dict)  # parameter → the parameter it shares storage with
    quantized: tuple[str, ...] = ()  # modules (weight [N, K]) that a quantized checkpoint stores quantized
    quantized_embeddings: tuple[str, ...] = ()  # the modules `Quantization.embeddings` adds
    _compiled: tuple[tuple[re.Pattern, str | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A quantized module's scale keeps its name, like every other row (known whether or not a config asks
        # for quantization: the model and the converter then say the checkpoint does not fit the config).
        scales = tuple((f"{module}.{SCALE}", f"{module}.{SCALE}")
                       for module in self.quantized + self.quantized_embeddings)
        compiled = tuple((re.compile("^" + re.escape(pattern).replace(re.escape(LAYER), r"(?P<i>\d+)") + "$"),
                          target) for pattern, target in self.rows + scales)
        object.__setattr__(self, "_compiled", compiled)

    def map_name(self, name: str) -> str | None:
        """Parameter name for checkpoint tensor `name` (None: dropped on purpose); unknown names raise."""
        for regex, target in self._compiled:
            match = regex.match(name)
            if match:
                if target is None or "i" not in match.groupdict():
                    return target
                return target.replace(LAYER, match.group("i"))
        raise UnknownTensorError(f"unexpected tensor {name!r}: not in the {self.name} name table")

    def layer_of(self, name: str) -> int | None:
        """The layer number a per-layer checkpoint name carries (None for other names and unknown ones)."""
        for regex, _ in self._compiled:
            match = regex.match(name)
            if match:
                return int(match.group("i")) if "i" in match.groupdict() else None
        return None

    def targets(self, num_layers: int, quantization: Quantization | None = None) -> list[str]:
        """Every parameter name the rows fill for a model of `num_layers` blocks (drops excluded)."""
        names = _expand([target for _, target in self.rows if target is not None], num_layers)
        return names + [f"{module}.{SCALE}" for module in self.quantized_modules(num_layers, quantization)]

    def quantized_modules(self, num_layers: int, quantization: Quantization | None) -> list[str]:
        """The modules `quantization` stores quantized in a model of `num_layers` blocks (none for None)."""
        if quantization is None:
            return []
        modules = self.quantized + (self.quantized_embeddings if quantization.embeddings else ())
        return _expand(list(modules), num_layers)

    def tied_for(self, quantization: Quantization | None = None) -> dict[str, str]:
        """The tied pairs; a pair of quantized modules shares its scales too."""
        tied = dict(self.tied)
        if quantization is not None and quantization.embeddings:
            for param, base in self.tied.items():
                tied[param.replace(".weight", f".{SCALE}")] = base.replace(".weight", f".{SCALE}")
        return tied

    def expected_shapes(self, config: Any, quantization: Quantization | None = None) -> Shapes:
        """Parameter name → shape for every parameter a checkpoint must fill, for a parsed config."""
        shapes = self.shapes(config)
        for module in self.quantized_modules(config.num_layers, quantization):
            rows, columns = shapes[f"{module}.weight"]
            shapes[f"{module}.weight"] = (rows, packed_columns(columns, quantization.bits))
            shapes[f"{module}.{SCALE}"] = (rows,)
        return shapes


def _expand(names: list[str], num_layers: int) -> list[str]:
    """Names with `{i}` repeated for every layer, in order."""
    out: list[str] = []
    for name in names:
        if LAYER in name:
            out.extend(name.replace(LAYER, str(i)) for i in range(num_layers))
        else:
            out.append(name)
    return out


def _layers(per_layer: Shapes, prefix: str, num_layers: int) -> Shapes:
    return {f"{prefix}.{i}.{k}": v for i in range(num_layers) for k, v in per_layer.items()}


def _identity(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


# ChatGLM-6B (the real checkpoint: 368 tensors for 28 layers).
_CHATGLM_6B_LAYER = tuple(f"transformer.layers.{LAYER}.{n}" for n in (
    "input_layernorm.weight", "input_layernorm.bias", "attention.query_key_value.weight",
    "attention.query_key_value.bias", "attention.dense.weight", "attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias"))
CHATGLM_6B_ROWS = (
    *_identity("transformer.word_embeddings.weight"),
    *_identity(*_CHATGLM_6B_LAYER),
    # Recomputed from the config (rounded to fp16 exactly as upstream), so the stored buffer is redundant.
    (f"transformer.layers.{LAYER}.attention.rotary_emb.inv_freq", None),
    *_identity("transformer.final_layernorm.weight", "transformer.final_layernorm.bias"),
    # Tied to the embedding; checked equal at load time and kept separate only if it differs.
    *_identity("lm_head.weight"),
)


def _chatglm_6b_shapes(c: Any) -> Shapes:
    """The layout of the upstream ChatGLM-6B weights for a `ChatGLMConfig`."""
    h, inner, vocab = c.hidden_size, c.inner_hidden_size, c.vocab_size
    per_layer = {
        "input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
        "attention.query_key_value.weight": (3 * h, h), "attention.query_key_value.bias": (3 * h,),
        "attention.dense.weight": (h, h), "attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
        "mlp.dense_h_to_4h.weight": (inner, h), "mlp.dense_h_to_4h.bias": (inner,),
        "mlp.dense_4h_to_h.weight": (h, inner), "mlp.dense_4h_to_h.bias": (h,),
    }
    return {"transformer.word_embeddings.weight": (vocab, h),
            **_layers(per_layer, "transformer.layers", c.num_layers),
            "transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,),
            "lm_head.weight": (vocab, h)}


CHATGLM_6B = NameTable(
    name="chatglm-6b", rows=CHATGLM_6B_ROWS, shapes=_chatglm_6b_shapes,
    # lm_head shares the embedding matrix (upstream ties them); checkpoints store both copies.
    tied={"lm_head.weight": "transformer.word_embeddings.weight"},
    quantized=tuple(f"transformer.layers.{LAYER}.{m}" for m in (
        "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    # chatglm-6b-int4-qe (`quantization_embeddings: true`) quantizes the shared matrix under both names.
    quantized_embeddings=("transformer.word_embeddings", "lm_head"),
)

# ChatGLM2-6B and ChatGLM3-6B share one checkpoint layout (the real ones: 200 tensors for 28 layers), with the
# upstream names (`transformer.embedding`, `transformer.encoder`, `self_attention`, `output_layer`); biases and
# LayerNorm biases only exist for configs that ask for them.
_CHATGLM2_LAYER = tuple(f"transformer.encoder.layers.{LAYER}.{n}" for n in (
    "input_layernorm.weight", "input_layernorm.bias", "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias", "self_attention.dense.weight", "self_attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias"))
CHATGLM2_ROWS = (
    *_identity("transformer.embedding.word_embeddings.weight"),
    *_identity(*_CHATGLM2_LAYER),
    *_identity("transformer.encoder.final_layernorm.weight", "transformer.encoder.final_layernorm.bias"),
    # Untied, unlike ChatGLM-6B's lm_head.
    *_identity("transformer.output_layer.weight"),
    # Recomputed from the config in float32 as upstream does; the stored buffer is never read upstream either.
    ("transformer.rotary_pos_emb.inv_freq", None),
)


def _chatglm2_shapes(c: Any) -> Shapes:
    """The ChatGLM2/3 layout for a `ChatGLM2Config` (biases only where the config has them)."""
    h, d, heads, groups, ffn = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_kv_heads, c.ffn_hidden_size
    qkv = (heads + 2 * groups) * d
    per_layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
                 "self_attention.query_key_value.weight": (qkv, h), "self_attention.dense.weight": (h, heads * d),
                 "mlp.dense_h_to_4h.weight": (2 * ffn, h), "mlp.dense_4h_to_h.weight": (h, ffn)}
    if not c.rmsnorm:
        per_layer.update({"input_layernorm.bias": (h,), "post_attention_layernorm.bias": (h,)})
    if c.add_qkv_bias or c.add_bias_linear:
        per_layer["self_attention.query_key_value.bias"] = (qkv,)
    if c.add_bias_linear:
        per_layer.update({"self_attention.dense.bias": (h,), "mlp.dense_h_to_4h.bias": (2 * ffn,),
                          "mlp.dense_4h_to_h.bias": (h,)})
    shapes = {"transformer.embedding.word_embeddings.weight": (c.padded_vocab_size, h),
              **_layers(per_layer, "transformer.encoder.layers", c.num_layers)}
    if c.post_layer_norm:
        shapes["transformer.encoder.final_layernorm.weight"] = (h,)
        if not c.rmsnorm:
            shapes["transformer.encoder.final_layernorm.bias"] = (h,)
    shapes["transformer.output_layer.weight"] = (c.padded_vocab_size, h)
    return shapes


CHATGLM2 = NameTable(
    name="chatglm2", rows=CHATGLM2_ROWS, shapes=_chatglm2_shapes,
    quantized=tuple(f"transformer.encoder.layers.{LAYER}.{m}" for m in (
        "self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    # Not an upstream layout (chatglm2-6b-int4 keeps both float16): glm_ms's quantize_embeddings option.
    quantized_embeddings=("transformer.embedding.word_embeddings", "transformer.output_layer"),
)


# MindSpore cells name LayerNorm parameters gamma/beta and Embedding's table embedding_table; MindNLP's
# converted checkpoints may carry those names instead of the upstream (HF) ones.
_MINDSPORE_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"), (".embedding_table", ".weight"))


def mindspore_to_upstream(name: str) -> str:
    """`*.gamma` → `*.weight`, `*.beta` → `*.bias`, `*.embedding_table` → `*.weight`; other names unchanged."""
    for old, new in _MINDSPORE_SUFFIXES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name
