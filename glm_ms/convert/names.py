"""Upstream ChatGLM-6B checkpoint names → glm_ms parameter names (mostly identity, by design).

`CHATGLM_6B_NAMES` is the reviewable table; `NameTable` bundles it with what the converter needs to
check a checkpoint without building the model: the parameter shapes a `config.json` implies and the
tied pairs. Other families (ChatGLM2/3) add their own `NameTable` to `TABLES`.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

# (pattern, target): `{i}` is the layer number; target None drops the tensor on purpose.
CHATGLM_6B_NAMES = [
    ("transformer.word_embeddings.weight", "transformer.word_embeddings.weight"),
    ("transformer.layers.{i}.input_layernorm.weight", "transformer.layers.{i}.input_layernorm.weight"),
    ("transformer.layers.{i}.input_layernorm.bias", "transformer.layers.{i}.input_layernorm.bias"),
    ("transformer.layers.{i}.attention.query_key_value.weight", "transformer.layers.{i}.attention.query_key_value.weight"),
    ("transformer.layers.{i}.attention.query_key_value.bias", "transformer.layers.{i}.attention.query_key_value.bias"),
    ("transformer.layers.{i}.attention.dense.weight", "transformer.layers.{i}.attention.dense.weight"),
    ("transformer.layers.{i}.attention.dense.bias", "transformer.layers.{i}.attention.dense.bias"),
    # Recomputed from the config (rounded to fp16 exactly as upstream), so the stored buffer is redundant.
    ("transformer.layers.{i}.attention.rotary_emb.inv_freq", None),
    ("transformer.layers.{i}.post_attention_layernorm.weight", "transformer.layers.{i}.post_attention_layernorm.weight"),
    ("transformer.layers.{i}.post_attention_layernorm.bias", "transformer.layers.{i}.post_attention_layernorm.bias"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.weight", "transformer.layers.{i}.mlp.dense_h_to_4h.weight"),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.bias", "transformer.layers.{i}.mlp.dense_h_to_4h.bias"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.weight", "transformer.layers.{i}.mlp.dense_4h_to_h.weight"),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.bias", "transformer.layers.{i}.mlp.dense_4h_to_h.bias"),
    ("transformer.final_layernorm.weight", "transformer.final_layernorm.weight"),
    ("transformer.final_layernorm.bias", "transformer.final_layernorm.bias"),
    # Tied to the embedding; checked equal at load time and kept separate only if it differs.
    ("lm_head.weight", "lm_head.weight"),
]


class UnknownTensorError(KeyError):
    """A checkpoint tensor name the table does not know."""

    def __str__(self):
        return str(self.args[0])


def _compile(table):
    compiled = []
    for pattern, target in table:
        regex = re.compile("^" + re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")
        compiled.append((regex, target))
    return compiled


_CHATGLM_6B = _compile(CHATGLM_6B_NAMES)


def map_name(name, table=None):
    """Target parameter name for checkpoint tensor `name` (None: dropped on purpose); unknown names raise."""
    for regex, target in (table or _CHATGLM_6B):
        match = regex.match(name)
        if match:
            if target is None:
                return None
            return target.replace("{i}", match.group("i")) if "i" in match.groupdict() else target
    raise UnknownTensorError(f"unexpected tensor {name!r}: not in the ChatGLM-6B name table")


def expand_targets(table, num_layers):
    """Every parameter name the table fills for a model of `num_layers` blocks (drops excluded)."""
    names = []
    for _, target in table:
        if target is None:
            continue
        if "{i}" in target:
            names.extend(target.replace("{i}", str(i)) for i in range(num_layers))
        else:
            names.append(target)
    return names


def _chatglm_6b_shapes(config):
    """Parameter name → shape for a ChatGLM-6B `config.json` dict (the layout of the upstream weights)."""
    from ..config import ChatGLMConfig  # numpy-free, mindspore-free

    c = ChatGLMConfig.from_dict(config)
    h, inner, vocab = c.hidden_size, c.inner_hidden_size, c.vocab_size
    per_layer = {
        "input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
        "attention.query_key_value.weight": (3 * h, h), "attention.query_key_value.bias": (3 * h,),
        "attention.dense.weight": (h, h), "attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
        "mlp.dense_h_to_4h.weight": (inner, h), "mlp.dense_h_to_4h.bias": (inner,),
        "mlp.dense_4h_to_h.weight": (h, inner), "mlp.dense_4h_to_h.bias": (h,),
    }
    shapes = {"transformer.word_embeddings.weight": (vocab, h)}
    for i in range(c.num_layers):
        shapes.update({f"transformer.layers.{i}.{k}": v for k, v in per_layer.items()})
    shapes.update({"transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,),
                   "lm_head.weight": (vocab, h)})
    return shapes


@dataclass(frozen=True)
class NameTable:
    """One model family's checkpoint layout: name table, expected shapes from config.json, tied pairs."""

    family: str  # e.g. "chatglm-6b"; recorded in converted folders
    table: list  # [(checkpoint pattern, parameter name | None)], `{i}` = layer number
    shapes: Callable[[dict], Dict[str, Tuple[int, ...]]]  # config.json dict → parameter name → shape
    tied: Dict[str, str] = field(default_factory=dict)  # parameter → the parameter it shares storage with
    matches: Callable[[dict], bool] = lambda config: False  # does this config.json describe this family?

    def __post_init__(self):
        object.__setattr__(self, "_compiled", _compile(self.table))

    def map_name(self, name):
        """Parameter name for checkpoint tensor `name` (None: dropped on purpose); unknown names raise."""
        try:
            return map_name(name, self._compiled)
        except UnknownTensorError:
            raise UnknownTensorError(f"unexpected tensor {name!r}: not in the {self.family} name table") from None

    def expected_shapes(self, config):
        """Parameter name → shape for every parameter a checkpoint must fill, given `config.json`'s dict."""
        return self.shapes(config)


CHATGLM_6B = NameTable(
    family="chatglm-6b",
    table=CHATGLM_6B_NAMES,
    shapes=_chatglm_6b_shapes,
    # lm_head shares the embedding matrix (upstream ties them); checkpoints store both copies.
    tied={"lm_head.weight": "transformer.word_embeddings.weight"},
    # ChatGLM-6B's config is the only one with the 2D-position switch; ChatGLM2/3 have none.
    matches=lambda config: "position_encoding_2d" in config or "inner_hidden_size" in config,
)

# Known families, tried in order by `table_for_config`.
TABLES = [CHATGLM_6B]


def table_for_config(config, source="config.json"):
    """The `NameTable` whose family `config` (a config.json dict) describes."""
    for table in TABLES:
        if table.matches(config):
            return table
    known = ", ".join(t.family for t in TABLES)
    raise UnknownTensorError(f"{source}: model family not recognised (model_type={config.get('model_type')!r}; "
                             f"known: {known})")


# MindSpore cells name LayerNorm parameters gamma/beta and Embedding's table embedding_table; MindNLP's
# converted checkpoints may carry those names instead of the upstream (HF) ones.
_MINDSPORE_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"), (".embedding_table", ".weight"))


def mindspore_to_upstream(name):
    """`*.gamma` → `*.weight`, `*.beta` → `*.bias`, `*.embedding_table` → `*.weight`; other names unchanged."""
    for old, new in _MINDSPORE_SUFFIXES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


# ChatGLM2-6B and ChatGLM3-6B share one checkpoint layout (the real ones: 200 tensors for 28 layers). The cells keep
# the upstream names (`transformer.embedding`, `transformer.encoder`, `self_attention`, `output_layer`), so every
# row is the identity; biases and LayerNorm biases only exist for configs that ask for them.
CHATGLM2_NAMES = [
    ("transformer.embedding.word_embeddings.weight", "transformer.embedding.word_embeddings.weight"),
    ("transformer.encoder.layers.{i}.input_layernorm.weight", "transformer.encoder.layers.{i}.input_layernorm.weight"),
    ("transformer.encoder.layers.{i}.input_layernorm.bias", "transformer.encoder.layers.{i}.input_layernorm.bias"),
    ("transformer.encoder.layers.{i}.self_attention.query_key_value.weight",
     "transformer.encoder.layers.{i}.self_attention.query_key_value.weight"),
    ("transformer.encoder.layers.{i}.self_attention.query_key_value.bias",
     "transformer.encoder.layers.{i}.self_attention.query_key_value.bias"),
    ("transformer.encoder.layers.{i}.self_attention.dense.weight",
     "transformer.encoder.layers.{i}.self_attention.dense.weight"),
    ("transformer.encoder.layers.{i}.self_attention.dense.bias", "transformer.encoder.layers.{i}.self_attention.dense.bias"),
    ("transformer.encoder.layers.{i}.post_attention_layernorm.weight",
     "transformer.encoder.layers.{i}.post_attention_layernorm.weight"),
    ("transformer.encoder.layers.{i}.post_attention_layernorm.bias",
     "transformer.encoder.layers.{i}.post_attention_layernorm.bias"),
    ("transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight", "transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight"),
    ("transformer.encoder.layers.{i}.mlp.dense_h_to_4h.bias", "transformer.encoder.layers.{i}.mlp.dense_h_to_4h.bias"),
    ("transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight", "transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight"),
    ("transformer.encoder.layers.{i}.mlp.dense_4h_to_h.bias", "transformer.encoder.layers.{i}.mlp.dense_4h_to_h.bias"),
    ("transformer.encoder.final_layernorm.weight", "transformer.encoder.final_layernorm.weight"),
    ("transformer.encoder.final_layernorm.bias", "transformer.encoder.final_layernorm.bias"),
    # Untied, unlike ChatGLM-6B's lm_head.
    ("transformer.output_layer.weight", "transformer.output_layer.weight"),
    # Recomputed from the config in float32 as upstream does; the stored buffer is never read upstream either.
    ("transformer.rotary_pos_emb.inv_freq", None),
]

_CHATGLM2 = _compile(CHATGLM2_NAMES)


def map_glm2_name(name):
    """Target parameter name for a ChatGLM2/ChatGLM3 checkpoint tensor (None: dropped); unknown names raise."""
    try:
        return map_name(name, _CHATGLM2)
    except UnknownTensorError:
        raise UnknownTensorError(f"unexpected tensor {name!r}: not in the ChatGLM2/ChatGLM3 name table") from None


def _chatglm2_shapes(config):
    """Parameter name → shape for a ChatGLM2/ChatGLM3 `config.json` dict (biases only where the config has them)."""
    from ..config import ChatGLM2Config  # numpy-free, mindspore-free

    c = ChatGLM2Config.from_dict(dict(config, family="chatglm2"))
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
    shapes = {"transformer.embedding.word_embeddings.weight": (c.padded_vocab_size, h)}
    for i in range(c.num_layers):
        shapes.update({f"transformer.encoder.layers.{i}.{k}": v for k, v in per_layer.items()})
    if c.post_layer_norm:
        shapes["transformer.encoder.final_layernorm.weight"] = (h,)
        if not c.rmsnorm:
            shapes["transformer.encoder.final_layernorm.bias"] = (h,)
    shapes["transformer.output_layer.weight"] = (c.padded_vocab_size, h)
    return shapes


def _second_generation(config, family):
    from ..families import family_of
    try:
        return family_of(config).name == family
    except ValueError:
        return False


# ChatGLM2 and ChatGLM3 checkpoints share names and shapes; two entries only so that a converted folder records
# which generation it holds (told apart by the repository name config.json keeps, as `config.detect_family` does).
CHATGLM3 = NameTable(family="chatglm3", table=CHATGLM2_NAMES, shapes=_chatglm2_shapes,
                     matches=lambda config: _second_generation(config, "chatglm3"))
CHATGLM2 = NameTable(family="chatglm2", table=CHATGLM2_NAMES, shapes=_chatglm2_shapes,
                     matches=lambda config: _second_generation(config, "chatglm2"))
TABLES.extend([CHATGLM3, CHATGLM2])
