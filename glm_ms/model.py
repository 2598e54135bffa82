"""ChatGLM-6B language model Cell: transformer + tied lm_head, static-cache steps, dtypes and weight loading."""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from .cells import ChatGLMModel, Linear
from .config import ChatGLMConfig
from .device import default_dtype, select_device
from .positions import position_ids_2d, prefix_lm_mask

logger = logging.getLogger(__name__)

# Output projections that share their matrix with an input one (lm_head ↔ word embeddings in ChatGLM-6B).
TIED_WEIGHTS = {"lm_head.weight": "transformer.word_embeddings.weight"}

_DTYPES = {"float32": ms.float32, "fp32": ms.float32, "float16": ms.float16, "fp16": ms.float16, "half": ms.float16}


def resolve_dtype(dtype):
    """'float16' | 'float32' | mindspore dtype → mindspore dtype."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use 'float16' or 'float32'")
        return _DTYPES[dtype.lower()]
    if dtype in (ms.float16, ms.float32):
        return dtype
    raise ValueError(f"unsupported dtype {dtype!r}: use float16 or float32")


@dataclass
class CausalLMOutput:
    """What a forward pass returns: logits [batch, seq, vocab] and, if asked, per-layer hidden states."""
    logits: Tensor
    hidden_states: tuple = ()


class WeightError(ValueError):
    """Missing, unexpected or mis-shaped tensors when filling the model."""


class ChatGLMCausalLM(nn.Cell):
    """ChatGLM-6B: `transformer` (embeddings, blocks, final LN) and `lm_head` tied to the embeddings."""

    def __init__(self, config, dtype=None):
        super().__init__()
        select_device()
        self.config = config
        self.compute_dtype = resolve_dtype(dtype or default_dtype())
        self.transformer = ChatGLMModel(config, dtype=self.compute_dtype)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, dtype=self.compute_dtype)
        self.lm_head.weight = self.transformer.word_embeddings.weight  # tied, as upstream
        self.set_train(False)

    # ----- tensors in, tensors out: the unit the compiled decode path builds on -----
    def forward_step(self, input_ids, position_ids, mask, cache_positions, last_only=False):
        """Run tokens [b, s] through the model writing their keys at `cache_positions`; logits [b, s|1, vocab]."""
        hidden, _ = self.transformer(input_ids, position_ids, mask, cache_positions)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden).astype(ms.float32)

    def allocate_cache(self, batch, capacity):
        """Fresh static KV caches for `batch` rows of up to `capacity` tokens; grows rotary tables if needed."""
        self.transformer.rotary.ensure(capacity + 1)
        for layer in self.transformer.layers:
            layer.attention.kv_cache.allocate(batch, capacity, self.compute_dtype)

    def reorder_cache(self, index):
        """Keep cache rows `index` (beam search)."""
        index = Tensor(np.asarray(index, dtype=np.int32))
        for layer in self.transformer.layers:
            layer.attention.kv_cache.reorder(index)

    # ----- the eager forward users call: model(input_ids) -----
    def construct(self, input_ids, position_ids=None, attention_mask=None, output_hidden_states=False):
        """Full forward without reuse of a cache; masks and positions built as upstream when not given."""
        ids = self.check_ids(input_ids)
        mask, positions = self.prefix_inputs(ids, attention_mask, position_ids)
        batch, seq = ids.shape
        self.allocate_cache(batch, seq)
        hidden, states = self.transformer(Tensor(ids.astype(np.int32)), Tensor(positions.astype(np.int32)),
                                          Tensor(mask), Tensor(np.arange(seq, dtype=np.int32)),
                                          output_hidden_states)
        return CausalLMOutput(logits=self.lm_head(hidden).astype(ms.float32), hidden_states=states)

    def check_ids(self, input_ids):
        """Token ids (numpy, list of lists or Tensor) → int64 [batch, seq]; ids outside the vocabulary raise."""
        if isinstance(input_ids, Tensor):
            input_ids = input_ids.asnumpy()
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be a non-empty integer array [batch, seq], got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})")
        return ids.astype(np.int64)

    def prefix_inputs(self, ids, attention_mask=None, position_ids=None):
        """Mask [b, 1, s, s] (True = masked) and 2D positions [b, 2, s]: given ones checked, else built per row."""
        c = self.config
        batch, seq = ids.shape
        if attention_mask is None:
            attention_mask = np.stack([prefix_lm_mask(row, c.bos_token_id) for row in ids.tolist()])
        if position_ids is None:
            position_ids = np.stack([position_ids_2d(row, c.bos_token_id, c.mask_token_id, c.gmask_token_id,
                                                     prefer_gmask=True) for row in ids.tolist()])
        mask = np.asarray(attention_mask.asnumpy() if isinstance(attention_mask, Tensor) else attention_mask)
        positions = np.asarray(position_ids.asnumpy() if isinstance(position_ids, Tensor) else position_ids)
        if mask.dtype != np.bool_ or mask.shape != (batch, 1, seq, seq):
            raise ValueError(f"attention_mask must be bool [{batch}, 1, {seq}, {seq}] (True = masked, as the "
                             f"tokenizer returns it), got {mask.dtype} {list(mask.shape)}")
        if positions.shape != (batch, 2, seq):
            raise ValueError(f"position_ids must be [{batch}, 2, {seq}], got {list(positions.shape)}")
        return mask, positions.astype(np.int64)

    def next_position_ids(self, last):
        """Positions [b, 2, 1] of the next generated token given the previous token's."""
        nxt = last.copy()
        nxt[:, 1] += 1  # a new token keeps the mask position and advances the block position by one
        return nxt

    # ----- dtypes -----
    def to_dtype(self, dtype):
        """Cast every weight to `dtype` (float16 or float32); caches follow at the next allocation."""
        self.compute_dtype = resolve_dtype(dtype)
        for _, param in self.parameters_and_names():
            if param.dtype != self.compute_dtype:
                param.set_dtype(self.compute_dtype)  # set_data would cast the new data back to the old dtype
        return self

    def half(self):
        """float16 weights and compute (LayerNorm statistics and softmax stay float32)."""
        return self.to_dtype(ms.float16)

    def float(self):
        """float32 weights and compute."""
        return self.to_dtype(ms.float32)

    @property
    def dtype(self):
        """Compute dtype of the model."""
        return self.compute_dtype

    # ----- weights -----
    def weight_parameters(self):
        """name → Parameter for every weight (caches excluded)."""
        return {name: p for name, p in self.parameters_and_names() if p.requires_grad}

    def load_named_tensors(self, named_tensors, map_name=None, source="checkpoint"):
        """Fill weights from (checkpoint name, numpy array) pairs; unknown/missing/mis-shaped tensors raise."""
        from .convert.names import UnknownTensorError, map_name as default_map
        map_name = map_name or default_map
        params = self.weight_parameters()
        filled, digests = {}, {}
        np_dtype = np.float16 if self.compute_dtype == ms.float16 else np.float32
        for name, array in named_tensors:
            try:
                target = map_name(name)
            except UnknownTensorError as err:
                raise WeightError(f"{source}: {err}") from None
            if target is None:
                continue
            # lm_head shares the embedding matrix; upstream loads both copies into it, so the later one wins.
            target = TIED_WEIGHTS.get(target, target)
            if target not in params:
                raise WeightError(f"{source}: tensor {name!r} maps to {target!r}, which the model does not have")
            param = params[target]
            if tuple(array.shape) != tuple(param.shape):
                raise WeightError(f"{source}: tensor {name!r} has shape {list(array.shape)}, "
                                  f"the model expects {list(param.shape)}")
            if target in filled and target not in TIED_WEIGHTS.values():
                raise WeightError(f"{source}: tensor {target!r} given twice ({filled[target]!r}, {name!r})")
            # numpy casts (if needed) into memory that is freed when replaced; a MindSpore astype would land in
            # its memory pool, which keeps the peak of a 6B model's load one copy higher.
            data = np.ascontiguousarray(array, dtype=np_dtype)
            if target in TIED_WEIGHTS.values():
                # Tied copies are compared by digest: never two 1 GB matrices (and a bool mask) in memory at once.
                digest = hashlib.sha256(memoryview(data).cast("B")).digest()
                if target in digests and digests[target] != digest:
                    logger.warning("%s: %r differs from %r; like upstream, the later one (%r) is used for both "
                                   "the input embeddings and lm_head", source, name, filled[target], name)
                digests[target] = digest
            # from_numpy: the array becomes the weight's storage (Tensor(data) would copy a 1 GB matrix once more).
            param.set_data(Tensor.from_numpy(data) if data.flags.writeable else Tensor(data))
            filled[target] = name
        missing = sorted(set(params) - set(filled))
        if missing:
            raise WeightError(f"{source}: missing tensors: {', '.join(missing)}")
        return self

    @classmethod
    def from_folder(cls, folder, dtype=None, config=None):
        """Build the model from a local folder: config.json plus weights, glm_ms-converted (MindSpore
        safetensors), MindNLP's MindSpore checkpoints or upstream torch/safetensors shards."""
        from .convert.readers import WeightSource, open_weights
        weights = folder if isinstance(folder, WeightSource) else open_weights(folder)
        config = config or ChatGLMConfig.from_file(weights.path)
        model = cls(config, dtype=dtype)
        map_name = (lambda name: name) if weights.names_are_parameters else None  # None: this model's own table
        return model.load_named_tensors(weights.tensors(), map_name=map_name, source=str(weights.path))
