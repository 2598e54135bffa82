"""What every family's causal LM shares: dtypes, input-id checks, static caches, weight loading, from_folder.

A family subclass sets `config_class` (and `tied_weights` if it ties matrices), builds its `transformer` and
provides `forward_step`, `construct`, `prompt_inputs`, `next_position_ids`, `attention_layers` and
`position_tables` (the rotary Cell whose tables grow with the cache), and `max_positions` if it has a limit. Its
steps pass their mask and cache slots through `prefixed`, so a P-tuning v2 prefix sits in front of every row
without the decoders knowing of it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..cells.layers import float32_parameter_ids
from ..cells.masks import PromptMask
from ..convert.names import NameTable, Quantization, requested_quantization
from ..device import default_dtype, select_device
from ..errors import ConfigError, GenerationError, UnknownTensorError, WeightError
from ..kernels.quantize import QuantizationError
from .quantized import (frozen_parameter_ids, quantize_layers, quantized_cells, scale_of, store_quantized,
                        stored_quantization)

logger = logging.getLogger(__name__)

_DTYPES = {"float32": ms.float32, "fp32": ms.float32, "float16": ms.float16, "fp16": ms.float16, "half": ms.float16}


def resolve_dtype(dtype: str | ms.Type) -> ms.Type:
    """'float16' | 'float32' | a mindspore dtype → the mindspore dtype (float16 or float32 only)."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}: use 'float16' or 'float32'")
        return _DTYPES[dtype.lower()]
    if dtype in (ms.float16, ms.float32):
        return dtype
    raise ConfigError(f"unsupported dtype {dtype!r}: use float16 or float32")


def host_array(value: Any) -> np.ndarray:
    """A numpy view of a Tensor, array or nested list."""
    return np.asarray(value.asnumpy() if isinstance(value, Tensor) else value)


def last_position(hidden: Tensor) -> Tensor:
    """hidden [b, s, ...] → [b, 1, ...], its last position (graph-safe)."""
    # narrow, not hidden[:, -1:]: MindSpore's CPU StridedSlice costs ~0.1 µs per element, 0.5 ms even for a decode
    # step's [1, 1, 4096] and 10 ms for a [1, 1, 130528] row of logits; narrow is a view.
    if hidden.shape[1] == 1:  # a decode step (shapes are static in a graph: no op at all)
        return hidden
    return ops.narrow(hidden, 1, hidden.shape[1] - 1, 1)


@dataclass
class CausalLMOutput:
    """What a forward pass returns: logits [batch, seq, vocab] and, if asked, per-layer hidden states."""
    logits: Tensor
    hidden_states: tuple = ()


class CausalLM(nn.Cell):
    """The family-independent part of a ChatGLM causal LM (see the module docstring for what a family adds)."""

    config_class: type = object
    tied_weights: dict[str, str] = {}  # parameter name in checkpoints → the parameter that holds its matrix
    max_positions: int | None = None   # tokens a sequence may hold (None: rotary tables grow without a limit)

    def __init__(self, config: Any, dtype: str | ms.Type | None = None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}")
        select_device()
        self.config = config
        self.compute_dtype = resolve_dtype(dtype or default_dtype())
        self.quantization: Quantization | None = None  # set by `quantize` (int8/int4 weight-only layers)
        self.prefix_cache = None  # a P-tuning v2 `adapters.PrefixCache` (float32), or None
        self.prefix_length = 0   # cache slots it takes in front of every row (a plain int: graphs read it)
        self.base_name = None    # what the weights came from (folder name or model id): adapters name theirs

    # ----- what a family provides
    def attention_layers(self) -> list[nn.Cell]:
        """The attention Cell of every block (each holds a `kv_cache`)."""
        raise NotImplementedError

    def position_tables(self) -> nn.Cell:
        """The rotary Cell whose `ensure(n, dtype)` grows its tables to n positions, kept in `dtype`."""
        raise NotImplementedError

    def prompt_inputs(self, ids: np.ndarray, attention_mask: Any = None,
                      position_ids: Any = None) -> tuple[PromptMask, np.ndarray]:
        """A prompt's mask (rows made on demand) and positions [b, 1 | 2, s]: given ones checked, else built."""
        raise NotImplementedError

    # ----- inputs
    def check_ids(self, input_ids: Any) -> np.ndarray:
        """Token ids (numpy, list of lists or Tensor) → int64 [batch, seq]; ids outside the vocabulary raise."""
        ids = host_array(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise GenerationError(f"input_ids must be a non-empty integer array [batch, seq], got shape "
                                  f"{ids.shape} dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise GenerationError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.config.vocab_size})")
        return ids.astype(np.int64)

    def prefix_inputs(self, ids: np.ndarray, attention_mask: Any = None,
                      position_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """A prompt's whole mask (bool [b, 1, s, s], True = masked) and positions, as upstream builds them."""
        mask, positions = self.prompt_inputs(ids, attention_mask, position_ids)
        return mask.rows(0, ids.shape[1]), positions

    # ----- static caches
    def allocate_cache(self, batch: int, capacity: int) -> None:
        """Fresh static KV caches for `batch` rows of up to `capacity` tokens; grows rotary tables if needed.

        With a P-tuning prefix every row holds it first: `prefix_length` more slots, filled here.
        """
        pre = self.prefix_length
        self.position_tables().ensure(capacity + 1, self.compute_dtype)  # positions are not shifted by a prefix
        np_dtype = np.float16 if self.compute_dtype == ms.float16 else np.float32
        slots = Tensor(np.arange(pre, dtype=np.int32))
        for i, attention in enumerate(self.attention_layers()):
            attention.kv_cache.allocate(batch, pre + capacity, self.compute_dtype)
            if pre:
                attention.kv_cache(_prefix_rows(self.prefix_cache.keys[i], batch, np_dtype),
                                   _prefix_rows(self.prefix_cache.values[i], batch, np_dtype), slots)

    def set_prefix(self, prefix: Any) -> None:
        """Put a P-tuning v2 `PrefixCache` (None: none) in front of every row, from the next cache allocation."""
        if prefix is not None and len(prefix.keys) != len(self.attention_layers()):
            raise WeightError(f"the prefix has {len(prefix.keys)} layers, the model {len(self.attention_layers())}")
        self.prefix_cache = prefix
        self.prefix_length = 0 if prefix is None else prefix.length

    def prefixed(self, mask, cache_positions):
        """A step's mask [b, 1, s, L] and cache slots [s] behind the prefix: `prefix_length` always-visible
        columns in front of the mask, slots moved past the prefix (positions are not shifted, as upstream)."""
        if not self.prefix_length:
            return mask, cache_positions
        b, _, s, _ = mask.shape
        visible = ops.zeros((b, 1, s, self.prefix_length), ms.bool_)
        return ops.concat([visible, mask], -1), cache_positions + self.prefix_length

    def reorder_cache(self, index: Iterable[int]) -> None:
        """Keep cache rows `index` (beam search)."""
        index = Tensor(np.asarray(index, dtype=np.int32))
        for attention in self.attention_layers():
            attention.kv_cache.reorder(index)

    # ----- dtypes
    def to_dtype(self, dtype: str | ms.Type) -> CausalLM:
        """Cast every weight to `dtype` (float16 or float32); caches follow at the next allocation.

        Quantized layers keep their int8 weights and float16 scales; their bias and output follow `dtype`.
        Norm parameters stay float32 (see cells.layers.LayerNorm).
        """
        self.compute_dtype = resolve_dtype(dtype)
        frozen = frozen_parameter_ids(self) | float32_parameter_ids(self)  # int8 weights and scales; norms
        for _, param in self.parameters_and_names():
            if id(param) not in frozen and param.dtype != self.compute_dtype:
                param.set_dtype(self.compute_dtype)  # set_data would cast the new data back to the old dtype
        for cell in quantized_cells(self).values():
            if hasattr(cell, "compute_dtype"):
                cell.compute_dtype = self.compute_dtype
        return self

    def half(self) -> CausalLM:
        """float16 weights and compute (norm statistics and softmax stay float32)."""
        return self.to_dtype(ms.float16)

    def float(self) -> CausalLM:
        """float32 weights and compute."""
        return self.to_dtype(ms.float32)

    @property
    def dtype(self) -> ms.Type:
        """Compute dtype of the model."""
        return self.compute_dtype

    # ----- weights
    def weight_parameters(self) -> dict[str, Parameter]:
        """name → Parameter for every weight (caches excluded)."""
        return {name: p for name, p in self.parameters_and_names() if p.requires_grad}

    def name_table(self) -> NameTable:
        """The checkpoint name table of this model's family."""
        from ..families import get
        return get(self.config.family).load("names")

    def default_name_map(self) -> Callable[[str], str | None]:
        """Checkpoint name → parameter name (None: dropped) by the family table of this model's config."""
        return self.name_table().map_name

    def tied_parameters(self) -> dict[str, str]:
        """Parameter name in checkpoints → the parameter that holds its matrix (and, quantized, its scales)."""
        tied = dict(self.tied_weights)
        if self.quantization is not None:
            tied.update(self.name_table().tied_for(self.quantization))
        return tied

    # ----- quantization
    def quantize(self, bits: int, embeddings: bool = False, fast: bool = False) -> CausalLM:
        """Quantize the weights of the layers upstream quantizes to int8 (`bits` 8) or int4, in place.

        The integers and scales are those of upstream's published int8/int4 checkpoints. `embeddings` also
        quantizes the word embeddings and output layer; `fast` uses the CPU kernels' integer dot products.
        """
        if self.quantization is not None:
            raise QuantizationError(f"the model is already quantized to int{self.quantization.bits}; quantizing "
                                    "again would round twice (load the float16 checkpoint instead)")
        quantization = Quantization(bits, embeddings)
        quantize_layers(self, self.name_table(), quantization, fast=fast, from_weights=True)
        self.quantization = quantization
        return self

    def _prepare_quantized(self, quantization: Quantization | None, fast: bool) -> None:
        # Before loading: empty quantized cells, filled from int8 tensors or quantized from float ones as read.
        if fast and quantization is None:
            raise QuantizationError("fast mode needs quantize=8 or 4 (or an int8/int4 checkpoint): it is a way of "
                                    "computing with quantized weights")
        if quantization is not None:
            quantize_layers(self, self.name_table(), quantization, fast=fast)
            self.quantization = quantization

    def load_named_tensors(self, named_tensors: Iterable[tuple[str, np.ndarray]],
                           map_name: Callable[[str], str | None] | None = None,
                           source: str = "checkpoint") -> CausalLM:
        """Fill weights from (checkpoint name, numpy array) pairs; unknown/missing/mis-shaped tensors raise.

        A floating-point tensor for a quantized layer is quantized as it is read.
        """
        map_name = map_name or self.default_name_map()
        params = self.weight_parameters()
        quantized = {f"{path}.weight": cell for path, cell in quantized_cells(self).items()}
        tied_map = self.tied_parameters()
        tied = set(tied_map.values())
        filled, digests = {}, {}
        for name, array in named_tensors:
            try:
                target = map_name(name)
            except UnknownTensorError as err:
                raise WeightError(f"{source}: {err}") from None
            if target is None:
                continue
            target = tied_map.get(target, target)
            if target not in params:
                hint = " (a quantized checkpoint? config.json declares no quantization_bit)" \
                    if target.endswith(".weight_scale") else ""
                raise WeightError(f"{source}: tensor {name!r} maps to {target!r}, which the model does not have{hint}")
            if target in filled and target not in tied:
                raise WeightError(f"{source}: tensor {target!r} given twice ({filled[target]!r}, {name!r})")
            if target in quantized and np.issubdtype(array.dtype, np.floating):
                data = np.ascontiguousarray(array)
                store_quantized(quantized[target], data, name, source)
                filled[scale_of(target)] = name
            else:
                data = _checked_array(array, params[target], name, source)
                # from_numpy: the array becomes the weight's storage (Tensor(data) would copy a 1 GB matrix).
                params[target].set_data(Tensor.from_numpy(data) if data.flags.writeable else Tensor(data))
            if target in tied:
                _warn_if_tied_copies_differ(digests, target, data, filled.get(target), name, source)
            filled[target] = name
        missing = sorted(set(params) - set(filled))
        if missing:
            raise WeightError(f"{source}: missing tensors: {', '.join(missing)}")
        return self

    @classmethod
    def from_folder(cls, folder_or_weights: Any, dtype: str | ms.Type | None = None, config: Any = None,
                    quantize: int | None = None, quantize_embeddings: bool = False,
                    fast: bool = False, adapter: Any = None) -> CausalLM:
        """Build and fill the model from a local folder or a `WeightSource`: glm_ms-converted (MindSpore
        safetensors), MindNLP's MindSpore checkpoints or upstream torch/safetensors shards.

        An int8/int4 checkpoint (`quantization_bit` in config.json) loads quantized. `quantize` 8 or 4
        quantizes a float one as each tensor is read (memory: the quantized model plus one tensor);
        `quantize_embeddings` also quantizes the embeddings and output layer; `fast` see `quantize`.
        `adapter` (an `adapters.read_adapter` record): a LoRA is merged into the weights as they are read (before
        any quantization), a P-tuning v2 prefix put in front of every row. A folder that stores a prefix with its
        weights (what `glm-ms-convert --adapter` writes) loads it too.
        """
        from ..convert.readers import WeightSource, open_weights
        from ..families import detect
        weights = folder_or_weights
        if not isinstance(weights, WeightSource):
            weights = open_weights(os.fspath(folder_or_weights))
        config = config if config is not None else detect(weights.path).config
        quantization = requested_quantization(stored_quantization(weights.path), quantize, quantize_embeddings)
        model = cls(config, dtype=dtype)
        model._prepare_quantized(quantization, fast)
        map_name = _same_name if weights.names_are_parameters else None  # None: the family's name table
        return model.fill_from(weights, map_name, adapter)

    def fill_from(self, weights: Any, map_name: Callable[[str], str | None] | None, adapter: Any = None) -> CausalLM:
        """Load a `WeightSource` with `adapter` applied (see `from_folder`); prefix tensors in it become the prefix."""
        from ..adapters import LoraAdapter, prefix_from_tensors
        from ..adapters.ptuning import PREFIX
        from ..config import read_config_json
        source = (weights.manifest or {}).get("source") or {}
        self.base_name = source.get("model_id") or weights.path.name
        # A LoRA may change one tied copy and not the other, so then every copy is read.
        tensors = weights.tensors(skip_equal_tied=not isinstance(adapter, LoraAdapter))
        if adapter is not None:
            self._check_adapter(adapter)
            if isinstance(adapter, LoraAdapter):
                tensors = adapter.merged(tensors, str(weights.path))  # merged first: quantized (if asked) after
        stored = []
        self.load_named_tensors(_set_aside(tensors, PREFIX, stored), map_name=map_name, source=str(weights.path))
        if stored:
            self.set_prefix(prefix_from_tensors(weights.path, read_config_json(weights.path)[1], stored)
                            .cache(self.config))
        if adapter is not None and not isinstance(adapter, LoraAdapter):
            self.set_prefix(adapter.cache(self.config))
        return self

    def load_adapter(self, adapter: Any, mirror: str | None = None, revision: str = "master",
                     cache_dir: os.PathLike | str | None = None, endpoint: str | None = None) -> CausalLM:
        """Apply a LoRA adapter (merged into the weights now) or a P-tuning v2 prefix (replacing any other): a
        folder, a model id with `mirror="modelscope"`, or an `adapters.read_adapter` record."""
        from ..adapters import LoraAdapter, resolve_adapter
        adapter = resolve_adapter(adapter, mirror=mirror, revision=revision, cache_dir=cache_dir, endpoint=endpoint)
        self._check_adapter(adapter)
        if not isinstance(adapter, LoraAdapter):
            self.set_prefix(adapter.cache(self.config))
            return self
        if getattr(self, "quantization", None) is not None:
            raise WeightError(f"{adapter.path}: a LoRA adapter cannot be merged into a quantized model; load the "
                              "float16 checkpoint with adapter= and quantize= (merged first, then quantized)")
        params, map_name = self.weight_parameters(), self.default_name_map()
        np_dtype = np.float16 if self.compute_dtype == ms.float16 else np.float32
        for pair in adapter.pairs.values():
            param = params[map_name(pair.module + ".weight")]
            merged = param.asnumpy().astype(np.float32) + pair.delta(adapter.config.scaling)  # float32, then cast
            param.set_data(Tensor(merged.astype(np_dtype)))
        return self

    def _check_adapter(self, adapter: Any) -> None:
        from ..adapters import warn_if_other_base
        from ..families import get
        adapter.check_against(get(self.config.family), self.config)
        warn_if_other_base(adapter, self.base_name)


def _prefix_rows(kv: np.ndarray, batch: int, dtype: type) -> Tensor:
    """One layer's prefix keys or values [pre, heads, d] (float32) as cache input [batch, pre, heads, d] of `dtype`."""
    return Tensor(np.ascontiguousarray(np.broadcast_to(kv[None], (batch,) + kv.shape), dtype=dtype))


def _set_aside(tensors: Iterable[tuple[str, np.ndarray]], prefix: str, aside: list) -> Iterable:
    """The (name, array) pairs whose name does not start with `prefix`; the others are appended to `aside`."""
    for name, array in tensors:
        if name.startswith(prefix):
            aside.append((name, array))
        else:
            yield name, array


def _same_name(name: str) -> str:
    return name


def _checked_array(array: np.ndarray, param: Parameter, name: str, source: str) -> np.ndarray:
    """`array` as the contiguous numpy data of `param`: shapes equal, integers only for int8 weights."""
    if tuple(array.shape) != tuple(param.shape):
        raise WeightError(f"{source}: tensor {name!r} has shape {list(array.shape)}, "
                          f"the model expects {list(param.shape)}")
    want = np.dtype(np.int8 if param.dtype == ms.int8 else np.float16 if param.dtype == ms.float16 else np.float32)
    if want.kind == "f" and not np.issubdtype(array.dtype, np.floating):
        raise WeightError(f"{source}: tensor {name!r} is {array.dtype} (a quantized checkpoint?), but the model "
                          "holds floating-point weights there: config.json declares no quantization_bit")
    if want.kind == "i" and array.dtype != want:
        raise WeightError(f"{source}: tensor {name!r} is {array.dtype}; the quantized layer holds int8")
    if name.endswith(".weight_scale") and array.dtype != np.float16:
        raise WeightError(f"{source}: tensor {name!r} is {array.dtype}; quantization scales are float16")
    # numpy casts (if needed) into memory that is freed when replaced; a MindSpore astype would land in its
    # memory pool, which keeps the peak of a 6B model's load one copy higher.
    return np.ascontiguousarray(array, dtype=want)


def _warn_if_tied_copies_differ(digests: dict, target: str, data: np.ndarray, previous: str | None, name: str,
                                source: str) -> None:
    # Tied copies are compared by digest: never two 1 GB matrices (and a bool mask) in memory at once. Upstream
    # loads both copies into the one matrix, so the later one wins; we do the same and say so.
    digest = hashlib.sha256(memoryview(data).cast("B")).digest()
    if target in digests and digests[target] != digest:
        logger.warning("%s: %r differs from %r; like upstream, the later one (%r) is used for both the input "
                       "embeddings and lm_head", source, name, previous, name)
    digests[target] = digest
