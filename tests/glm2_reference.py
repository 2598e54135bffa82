"""An independent float64 numpy ChatGLM2/3 forward written from the upstream code, and random checkpoints of any
shape saved as upstream does — for sizes no golden file covers (layers, heads, key/value groups, kv_channels)."""
import json
import math
import shutil
from pathlib import Path

import numpy as np

from tests.torchfile import save_torch_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
TINY2 = FIXTURES / "tiny-chatglm2-6b"


def _rms(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, positions, rot_half, base=10000.0):
    """Upstream apply_rotary_pos_emb: the first 2·(rot_half/2) dims of each head turned as adjacent pairs."""
    theta = 1.0 / (base ** (np.arange(0, rot_half, 2) / rot_half))
    ang = positions[:, None] * theta[None]  # [s, n]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]  # [s, 1, n]
    n = theta.shape[0]
    r, rest = x[..., :2 * n], x[..., 2 * n:]
    x0, x1 = r[..., 0::2], r[..., 1::2]
    out = np.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).reshape(r.shape)
    return np.concatenate([out, rest], -1)


def forward(sd, config, ids, positions, mask=None):
    """Logits [seq, vocab] of one sequence; positions [seq]; bool mask [seq, seq] (True = masked, default causal)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    h, heads = config["hidden_size"], config["num_attention_heads"]
    d = config.get("kv_channels") or h // heads
    g = config["multi_query_group_num"] if config.get("multi_query_attention", True) else heads
    seq = len(ids)
    if mask is None:
        mask = ~np.tril(np.ones((seq, seq), bool))
    positions = np.asarray(positions, np.float64)
    x = sd["transformer.embedding.word_embeddings.weight"][ids]
    for layer in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{layer}."
        a = _rms(x, sd[p + "input_layernorm.weight"])
        qkv = a @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        if config.get("multi_query_attention", True):
            q = qkv[:, :heads * d].reshape(seq, heads, d)
            k = qkv[:, heads * d:(heads + g) * d].reshape(seq, g, d)
            v = qkv[:, (heads + g) * d:].reshape(seq, g, d)
        else:
            per = qkv.reshape(seq, heads, 3 * d)
            q, k, v = per[..., :d], per[..., d:2 * d], per[..., 2 * d:]
        q, k = _rope(q, positions, d // 2), _rope(k, positions, d // 2)
        k = np.repeat(k, heads // g, axis=1)  # upstream: unsqueeze(-2).expand(..., heads // g, ...)
        v = np.repeat(v, heads // g, axis=1)
        scores = np.einsum("snd,tnd->nst", q, k) / math.sqrt(d)
        scores = np.where(mask[None], -np.inf, scores)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = np.einsum("nst,tnd->snd", probs, v).reshape(seq, heads * d)
        x = x + ctx @ sd[p + "self_attention.dense.weight"].T
        m = _rms(x, sd[p + "post_attention_layernorm.weight"]) @ sd[p + "mlp.dense_h_to_4h.weight"].T
        gate, up = np.split(m, 2, axis=-1)
        x = x + (gate / (1 + np.exp(-gate)) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = _rms(x, sd["transformer.encoder.final_layernorm.weight"])
    return x @ sd["transformer.output_layer.weight"].T


def make_checkpoint(folder, num_layers=3, hidden_size=96, num_attention_heads=6, kv_channels=24,
                    multi_query_group_num=3, ffn_hidden_size=80, multi_query_attention=True, padded_vocab_size=3072,
                    seed=0, num_shards=2):
    """Write a random-weight ChatGLM2-layout folder (torch shards, index, config, tokenizer); returns (folder, config, sd)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    g = multi_query_group_num if multi_query_attention else num_attention_heads
    d = kv_channels

    def w(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    sd = {"transformer.embedding.word_embeddings.weight": w(padded_vocab_size, hidden_size, scale=1.0),
          "transformer.rotary_pos_emb.inv_freq": (1.0 / 10000 ** (np.arange(0, d // 2, 2) / (d // 2))).astype(np.float16)}
    for i in range(num_layers):
        p = f"transformer.encoder.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": (1 + w(hidden_size, scale=0.1)).astype(np.float16),
            p + "self_attention.query_key_value.weight": w((num_attention_heads + 2 * g) * d, hidden_size),
            p + "self_attention.query_key_value.bias": w((num_attention_heads + 2 * g) * d, scale=0.1),
            p + "self_attention.dense.weight": w(hidden_size, num_attention_heads * d),
            p + "post_attention_layernorm.weight": (1 + w(hidden_size, scale=0.1)).astype(np.float16),
            p + "mlp.dense_h_to_4h.weight": w(2 * ffn_hidden_size, hidden_size),
            p + "mlp.dense_4h_to_h.weight": w(hidden_size, ffn_hidden_size),
        })
    sd["transformer.encoder.final_layernorm.weight"] = (1 + w(hidden_size, scale=0.1)).astype(np.float16)
    sd["transformer.output_layer.weight"] = w(padded_vocab_size, hidden_size)
    save_torch_checkpoint(folder, sd, num_shards=num_shards)
    config = json.loads((TINY2 / "config.json").read_text())
    config.update(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                  kv_channels=kv_channels, multi_query_group_num=multi_query_group_num,
                  multi_query_attention=multi_query_attention, ffn_hidden_size=ffn_hidden_size,
                  padded_vocab_size=padded_vocab_size)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer_config.json", "tokenizer.model"):
        shutil.copy(TINY2 / name, folder / name)
    return folder, config, sd
