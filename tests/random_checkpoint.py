"""Random ChatGLM-6B checkpoints of any shape, saved as upstream does (torch shards + index, config, tokenizer)."""
import json
import shutil
from pathlib import Path

import numpy as np

from tests.torchfile import save_torch_checkpoint

TINY = Path(__file__).parent / "fixtures" / "tiny-chatglm-6b"


def make_checkpoint(folder, num_layers=3, hidden_size=96, num_attention_heads=6, inner_hidden_size=None,
                    num_image_tokens=0, seed=0, num_shards=2):
    """Write a random-weight model folder; returns (folder, config dict, state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    text_vocab = 3000  # pieces in the fixture's ice_text.model
    vocab = text_vocab + num_image_tokens
    inner = inner_hidden_size or 4 * hidden_size
    rd = hidden_size // num_attention_heads // 2

    def w(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    embedding = w(vocab, hidden_size, scale=0.8)
    sd = {"transformer.word_embeddings.weight": embedding, "lm_head.weight": embedding.copy()}
    for i in range(num_layers):
        p = f"transformer.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": (1 + w(hidden_size, scale=0.05)).astype(np.float16),
            p + "input_layernorm.bias": w(hidden_size, scale=0.02),
            p + "attention.query_key_value.weight": w(3 * hidden_size, hidden_size),
            p + "attention.query_key_value.bias": w(3 * hidden_size, scale=0.02),
            p + "attention.rotary_emb.inv_freq": (1.0 / 10000 ** (np.arange(0, rd, 2) / rd)).astype(np.float16),
            p + "attention.dense.weight": w(hidden_size, hidden_size),
            p + "attention.dense.bias": w(hidden_size, scale=0.02),
            p + "post_attention_layernorm.weight": (1 + w(hidden_size, scale=0.05)).astype(np.float16),
            p + "post_attention_layernorm.bias": w(hidden_size, scale=0.02),
            p + "mlp.dense_h_to_4h.weight": w(inner, hidden_size),
            p + "mlp.dense_h_to_4h.bias": w(inner, scale=0.02),
            p + "mlp.dense_4h_to_h.weight": w(hidden_size, inner, scale=0.2),
            p + "mlp.dense_4h_to_h.bias": w(hidden_size, scale=0.02),
        })
    sd["transformer.final_layernorm.weight"] = (1 + w(hidden_size, scale=0.05)).astype(np.float16)
    sd["transformer.final_layernorm.bias"] = w(hidden_size, scale=0.02)
    save_torch_checkpoint(folder, sd, num_shards=num_shards)
    config = json.loads((TINY / "config.json").read_text())
    offset = num_image_tokens
    config.update(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                  inner_hidden_size=inner, vocab_size=vocab, bos_token_id=8 + offset, eos_token_id=9 + offset,
                  mask_token_id=4 + offset, gmask_token_id=5 + offset, pad_token_id=3)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok_config = json.loads((TINY / "tokenizer_config.json").read_text())
    tok_config["num_image_tokens"] = num_image_tokens
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    shutil.copy(TINY / "ice_text.model", folder / "ice_text.model")
    return folder, config, sd
