"""Upstream ChatGLM-6B checkpoint names → glm_ms parameter names (mostly identity, by design)."""
import re

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
