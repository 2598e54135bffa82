"""Milliseconds per call of glm_ms's CPU kernels inside `mindspore.jit`, as JSON.

For x [rows, K] . W [N, K]^T with int8, int4 and float16 weights (exact and fast mode), next to MindSpore's
float32 `MatMul(transpose_b=True)` in the same kind of graph, and the "numpy bound": the time numpy takes to read
as many bytes as the weight holds (a memory-bandwidth floor for one pass over it).

    python scripts/bench_kernels.py [--n 4096 16384] [--k 4096] [--rows 1] [--calls 50] [--trials 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def numpy_read_gbps(nbytes: int = 512 << 20, trials: int = 5) -> float:
    """How fast numpy reads memory here (GB/s): summing a buffer larger than any cache."""
    buf = np.ones(nbytes // 8, np.float64)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def time_calls(step, inputs, calls: int, trials: int) -> dict:
    """min and median ms per call over `trials` runs of `calls` back-to-back calls (synchronised at the end)."""
    step(*inputs).asnumpy()  # compile and warm up
    per_call = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            out = step(*inputs)
        out.asnumpy()
        per_call.append((time.perf_counter() - start) / calls * 1e3)
    return {"ms_min": round(min(per_call), 4), "ms_median": round(statistics.median(per_call), 4)}


def cases(n: int, k: int, rng) -> dict:
    """name -> (bits or None for float16 or "float32", fast, weight inputs, weight bytes)."""
    from glm_ms.kernels import quantize_rows
    half = (rng.standard_normal((n, k)) * 0.02).astype(np.float16)
    q8, q4 = quantize_rows(half, 8), quantize_rows(half, 4)
    return {
        "int8_exact": (8, False, (q8.weight, q8.scale), n * k),
        "int8_fast": (8, True, (q8.weight, q8.scale), n * k),
        "int4_exact": (4, False, (q4.weight, q4.scale), n * k // 2),
        "int4_fast": (4, True, (q4.weight, q4.scale), n * k // 2),
        "float16": (None, False, (half,), 2 * n * k),
        "float32_matmul": ("float32", False, (half.astype(np.float32),), 4 * n * k),
    }


def make_step(bits, fast: bool):
    """A jitted cell computing x . W^T the way `bits` asks."""
    import mindspore as ms
    from mindspore import nn, ops

    from glm_ms.device import jit_config
    from glm_ms.kernels import half_matmul, quantized_matmul

    class Step(nn.Cell):
        def __init__(self):
            super().__init__()
            self.matmul = ops.MatMul(transpose_b=True)

        def construct(self, x, *weight):
            if bits == "float32":
                return self.matmul(x, weight[0])
            if bits is None:
                return half_matmul(x, weight[0])
            return quantized_matmul(x, weight[0], weight[1], bits, fast=fast)

    return ms.jit(Step(), **jit_config())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--rows", type=int, nargs="+", default=[1])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args(argv)

    from mindspore import Tensor

    from glm_ms.device import select_device
    from glm_ms.kernels import kernel_library
    select_device("CPU")
    library = kernel_library()
    gbps = numpy_read_gbps()
    rng = np.random.default_rng(0)
    results = []
    for n in args.n:
        for name, (bits, fast, weight, nbytes) in cases(n, args.k, rng).items():
            step, tensors = make_step(bits, fast), [Tensor(w) for w in weight]
            for rows in args.rows:
                x = Tensor(rng.standard_normal((rows, args.k)).astype(np.float32))
                timing = time_calls(step, [x, *tensors], args.calls, args.trials)
                results.append({"kernel": name, "rows": rows, "n": n, "k": args.k, **timing,
                                "weight_mb": round(nbytes / 1e6, 2),
                                "numpy_bound_ms": round(nbytes / gbps / 1e6, 4)})
    print(json.dumps({"library": str(library.path) if library else None, "level": library.level if library else None,
                      "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "numpy_read_gb_per_s": round(gbps, 2), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
