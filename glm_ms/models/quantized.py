"""Weight-only quantization of a built model: which layers, swapping them for quantized cells, filling them.

The family's name table (`convert.names.NameTable.quantized`) lists the layers upstream quantizes. A model is
quantized by replacing each such Linear (and, with `embeddings`, the word embeddings and output layer) by a
`cells.quantized` cell under the same name: empty before a quantized checkpoint is loaded into it, or filled
from the layer's own weights (`CausalLM.quantize`). Integers and scales are always `kernels.quantize_rows`'s,
the arithmetic of upstream's published int8/int4 checkpoints.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from mindspore import Tensor, nn

from ..cells.layers import Embedding, Linear
from ..cells.quantized import QuantizedEmbedding, QuantizedLinear, fill_quantized
from ..config import read_config_json
from ..convert.names import SCALE, NameTable, Quantization
from ..kernels import quantize_rows
from ..kernels.quantize import QuantizationError

QUANTIZED_CELLS = (QuantizedLinear, QuantizedEmbedding)


def stored_quantization(folder: os.PathLike | str) -> Quantization | None:
    """The quantization `folder`'s config.json declares (`quantization_bit`, `quantization_embeddings`)."""
    path, data = read_config_json(folder)
    return Quantization.from_config(data, source=str(path))


def quantized_cells(model: nn.Cell) -> dict[str, nn.Cell]:
    """Module path → quantized cell, for every quantized layer of `model`."""
    return {path: cell for path, cell in model.cells_and_names() if isinstance(cell, QUANTIZED_CELLS)}


def frozen_parameter_ids(model: nn.Cell) -> set[int]:
    """ids of the int8 weights and float16 scales: what a change of compute dtype must leave alone."""
    return {id(p) for cell in quantized_cells(model).values() for p in (cell.weight, cell.weight_scale)}


def quantize_layers(model: Any, table: NameTable, quantization: Quantization, fast: bool = False,
                    from_weights: bool = False) -> None:
    """Replace the layers `quantization` covers by quantized cells: empty, or quantized from their weights."""
    cells = dict(model.cells_and_names())
    tied = {module_of(p): module_of(b) for p, b in table.tied.items()}  # module → module holding its matrix
    built: dict[str, nn.Cell] = {}
    for path in table.quantized_modules(model.config.num_layers, quantization):
        old = cells.get(path)
        if not isinstance(old, (Linear, Embedding)):
            raise QuantizationError(f"{path} is {type(old).__name__}, not a Linear or Embedding layer")
        new = _quantized_like(old, quantization.bits, model.compute_dtype, fast)
        if path in tied and tied[path] in built:
            new.weight, new.weight_scale = built[tied[path]].weight, built[tied[path]].weight_scale
        elif from_weights:
            fill_quantized(new, quantize_rows(old.weight.asnumpy(), quantization.bits))
            if getattr(old, "bias", None) is not None:
                new.bias.set_data(Tensor.from_numpy(old.bias.asnumpy()))
        built[path] = new
        parent, _, name = path.rpartition(".")
        setattr(cells[parent], name, new)
    # A cell assigned after the model was built gets its parameters named relative to its parent only; the
    # compiled graphs and the checkpoint names want the full path.
    for name, param in model.parameters_and_names():
        param.name = name


def _quantized_like(old: nn.Cell, bits: int, dtype: Any, fast: bool) -> nn.Cell:
    rows, columns = old.weight.shape
    if isinstance(old, Embedding):
        return QuantizedEmbedding(rows, columns, bits, dtype=dtype)
    return QuantizedLinear(columns, rows, bits, bias=old.bias is not None, dtype=dtype, fast=fast)


def module_of(param: str) -> str:
    """The module path of a parameter name (`a.b.weight` → `a.b`)."""
    return param.rpartition(".")[0]


def store_quantized(cell: nn.Cell, array: np.ndarray, name: str, source: str) -> None:
    """Quantize a floating-point checkpoint tensor for a quantized layer as it is read (only it is in memory)."""
    if tuple(array.shape) != cell.float_shape:
        raise QuantizationError(f"{source}: tensor {name!r} has shape {list(array.shape)}, the model expects "
                                f"{list(cell.float_shape)} before quantization")
    fill_quantized(cell, quantize_rows(array, cell.bits))


def scale_of(weight: str) -> str:
    """The scale parameter stored with a quantized `…weight`."""
    return f"{module_of(weight)}.{SCALE}"
