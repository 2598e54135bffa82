"""Microseconds per call of ChatGLM-6B's per-layer elementwise steps inside `mindspore.jit`, glm_ms's CPU kernel
next to the MindSpore ops it replaces, as JSON.

Each graph chains `--repeat` calls, so a call's cost includes MindSpore's own cost per op (what a decode step pays
per layer): the GELU of 16384 values, the split + 2D rotary of the fused query/key/value output (32 heads of
128) and the deep-norm residual x * alpha + y of 4096 values, in float16 and float32.

    python scripts/bench_ops.py [--repeat 20] [--calls 30] [--trials 3]
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bench_kernels import time_calls


def graphs(dtype, repeat: int, rng) -> dict:
    """step name -> (kernel graph, ops graph, inputs)."""
    import mindspore as ms
    from mindspore import Tensor, ops

    from glm_ms.kernels.attention import rotary_2d
    from glm_ms.kernels.activation import gelu_tanh
    from glm_ms.kernels.residual import scaled_add
    from glm_ms.models.chatglm import apply_rotary

    np_dtype = np.float16 if dtype == ms.float16 else np.float32
    h = Tensor(rng.standard_normal((1, 1, 16384)).astype(np_dtype))
    qkv = Tensor(rng.standard_normal((1, 1, 32 * 3 * 128)).astype(np_dtype))
    cos = Tensor(rng.standard_normal((1, 1, 1, 128)).astype(np_dtype))
    x = Tensor(rng.standard_normal((1, 1, 4096)).astype(np_dtype))
    alpha = 0.5  # ChatGLM-6B's is sqrt(56): chained 20 times, float16 would overflow

    def residual_kernel(y):
        for _ in range(repeat):
            y = scaled_add(x, y, alpha)
        return y

    def residual_ops(y):
        for _ in range(repeat):
            y = x * alpha + y
        return y

    def gelu_kernel(h):
        for _ in range(repeat):
            h = gelu_tanh(h)
        return h

    def gelu_ops(h):
        for _ in range(repeat):
            h = ops.gelu(h, approximate="tanh")
        return h

    def rotary_kernel(qkv):
        out = cos
        for _ in range(repeat):
            q, k, v = rotary_2d(qkv, cos, cos, 0.1)
            qkv = ops.depend(qkv, (q, k, v))
            out = out + k[:, :, :1]
        return out

    def rotary_ops(qkv):
        out = cos
        for _ in range(repeat):
            q, k, v = ops.split(qkv.reshape(1, 1, 32, 3 * 128), 128, axis=-1)
            q = (apply_rotary(q, cos, cos) * 0.1).transpose(0, 2, 1, 3)
            k = apply_rotary(k, cos, cos)
            qkv = ops.depend(qkv, (q, k, v))
            out = out + k[:, :, :1]
        return out

    return {"gelu_16384": (gelu_kernel, gelu_ops, h), "rotary_32x128": (rotary_kernel, rotary_ops, qkv),
            "residual_4096": (residual_kernel, residual_ops, x)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls chained in one graph")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)

    import mindspore as ms

    from glm_ms.device import select_device
    from glm_ms.kernels import kernel_library
    select_device("CPU")
    library = kernel_library()
    if library is None:
        raise SystemExit("glm_ms's kernels are off or could not be built: nothing to compare")
    rng = np.random.default_rng(0)
    results = []
    for dtype in (ms.float16, ms.float32):
        for name, (kernel, by_ops, x) in graphs(dtype, args.repeat, rng).items():
            row = {"step": name, "dtype": str(dtype).lower()}
            for label, fn in (("kernel", kernel), ("mindspore_ops", by_ops)):
                timing = time_calls(ms.jit(fn), [x], args.calls, args.trials)
                row[f"{label}_us_per_call"] = round(timing["ms_min"] / args.repeat * 1e3, 1)
            results.append(row)
    print(json.dumps({"library": str(library.path), "level": library.level, "cpus": os.cpu_count(),
                      "repeat": args.repeat, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
