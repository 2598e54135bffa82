"""Decode attention on the CPU: glm_ms's kernel against the MindSpore ops it replaces, compiled, one layer.

`python3 scripts/bench_attention.py [--groups 2 --rows 16 --head-dim 128 --widths 1024 32768 --dtype float32]`
prints one JSON object: for each cache width read, the best and median ms of `cells.attention.cache_attention`
with `fused` on and off (ChatGLM2-6B-32K's step shape by default: 2 key/value groups of 16 query heads).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    """Time both paths at each width; print and return the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=2, help="key/value groups")
    parser.add_argument("--rows", type=int, default=16, help="query rows per group (heads per group x tokens)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 32768], help="cache slots read")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import mindspore as ms
    from mindspore import Parameter, Tensor

    from glm_ms.cells.attention import cache_attention, fused_attention_here
    from glm_ms.device import select_device
    select_device("CPU")
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)
    capacity = max(args.widths)
    shape = (capacity, 1, args.groups, args.head_dim)
    keys = Parameter(Tensor(rng.standard_normal(shape).astype(dtype)), requires_grad=False)
    values = Parameter(Tensor(rng.standard_normal(shape).astype(dtype)), requires_grad=False)
    query = Tensor((rng.standard_normal((1, args.groups, args.rows, args.head_dim)) / 3).astype(dtype))
    result = {"groups": args.groups, "rows": args.rows, "head_dim": args.head_dim, "dtype": args.dtype,
              "kernel_available": fused_attention_here(), "widths": {}}
    for fused in ((True, False) if result["kernel_available"] else (False,)):
        def attend(q, k, v, m, fused=fused):
            return cache_attention(q, k, v, m, 2.0, fused)
        step = ms.jit(attend)
        for width in args.widths:
            mask = Tensor(np.zeros((1, 1, 1, width), bool))
            step(query, keys, values, mask).asnumpy()  # compiles
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step(query, keys, values, mask).asnumpy()
                times.append(time.perf_counter() - start)
            entry = result["widths"].setdefault(str(width), {})
            entry["kernel" if fused else "mindspore_ops"] = {"best_ms": round(min(times) * 1e3, 2),
                                                             "median_ms": round(float(np.median(times)) * 1e3, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
