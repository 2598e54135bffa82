"""One Cell per ChatGLM-6B component; attribute names equal the checkpoint's."""
from .attention import SelfAttention, scaled_masked_attention
from .block import GLMBlock
from .kv_cache import KVCache
from .layers import Embedding, LayerNorm, Linear
from .mlp import GeluMLP, gelu_tanh
from .rotary import RotaryEmbedding2D, apply_rotary, rotary_tables
from .transformer import ChatGLMModel

__all__ = ["SelfAttention", "scaled_masked_attention", "GLMBlock", "KVCache", "Embedding", "LayerNorm", "Linear",
           "GeluMLP", "gelu_tanh", "RotaryEmbedding2D", "apply_rotary", "rotary_tables", "ChatGLMModel"]
