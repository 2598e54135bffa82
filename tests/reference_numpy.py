"""An independent float64 numpy ChatGLM-6B forward, written from the upstream code, for shapes with no golden."""
import math

import numpy as np

from glm_ms.positions import position_ids_2d, prefix_lm_mask


def _layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)))


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def forward(sd, config, ids, positions, mask):
    """Logits [seq, vocab] for one sequence `ids` with positions [2, seq] and bool mask [seq, seq]."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    hd = hidden // heads
    rd = hd // 2
    inv = (1.0 / (10000 ** (np.arange(0, rd, 2, dtype=np.float32) / rd))).astype(np.float16).astype(np.float64)

    def cos_sin(p):
        f = p[:, None].astype(np.float64) * inv[None]
        e = np.concatenate([f, f], -1)
        return np.cos(e)[:, None], np.sin(e)[:, None]

    c1, s1 = cos_sin(positions[0])
    c2, s2 = cos_sin(positions[1])
    alpha = math.sqrt(2 * 28)  # upstream quirk: GLMBlock's default num_layers=28 is never overridden
    x = sd["lm_head.weight"][ids]  # tied: the later checkpoint copy (lm_head) is the embedding
    seq = len(ids)
    for layer in range(config["num_layers"]):
        p = f"transformer.layers.{layer}."
        a_in = _layer_norm(x, sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"])
        qkv = (a_in @ sd[p + "attention.query_key_value.weight"].T + sd[p + "attention.query_key_value.bias"])
        qkv = qkv.reshape(seq, heads, 3 * hd)
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        q = np.concatenate([_rotate(q[..., :rd], c1, s1), _rotate(q[..., rd:], c2, s2)], -1)
        k = np.concatenate([_rotate(k[..., :rd], c1, s1), _rotate(k[..., rd:], c2, s2)], -1)
        scores = np.einsum("snd,tnd->nst", q / math.sqrt(hd), k)
        scores = np.where(mask[None], -10000.0, scores)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = np.einsum("nst,tnd->snd", probs, v).reshape(seq, hidden)
        h = a_in * alpha + ctx @ sd[p + "attention.dense.weight"].T + sd[p + "attention.dense.bias"]
        m_in = _layer_norm(h, sd[p + "post_attention_layernorm.weight"], sd[p + "post_attention_layernorm.bias"])
        mlp = _gelu(m_in @ sd[p + "mlp.dense_h_to_4h.weight"].T + sd[p + "mlp.dense_h_to_4h.bias"])
        x = m_in * alpha + mlp @ sd[p + "mlp.dense_4h_to_h.weight"].T + sd[p + "mlp.dense_4h_to_h.bias"]
    x = _layer_norm(x, sd["transformer.final_layernorm.weight"], sd["transformer.final_layernorm.bias"])
    return x @ sd["lm_head.weight"].T


def left_padded_inputs(config, ids):
    """Mask/positions as the tokenizer builds them for left-padded rows `ids` (pads fully masked, positions 0)."""
    masks, positions = [], []
    for row in np.asarray(ids).tolist():
        real = [t for t in row if t != config.pad_token_id]
        pad = len(row) - len(real)
        m = np.ones((1, len(row), len(row)), bool)
        m[:, pad:, pad:] = prefix_lm_mask(real, config.bos_token_id)
        p = np.zeros((2, len(row)), np.int64)
        p[:, pad:] = position_ids_2d(real, config.bos_token_id, config.mask_token_id, config.gmask_token_id)
        masks.append(m)
        positions.append(p)
    return {"attention_mask": np.stack(masks), "position_ids": np.stack(positions)}
