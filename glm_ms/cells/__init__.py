"""Building blocks every model family shares: `layers` (Linear, Embedding, LayerNorm, RMSNorm), `kv_cache`
(the static KVCache) and `attention` (scaled_masked_attention). Family networks live in `glm_ms.models`."""
