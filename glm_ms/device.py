"""The one place that decides MindSpore's device, execution mode and default dtype."""
from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError, GlmMsError


class DeviceError(GlmMsError, RuntimeError):
    """MindSpore already runs on another device in this process."""


_selected = None

# MindSpore's CPU MatMul is oneDNN. For a one-row product with more than ~15k outputs (dense_h_to_4h, lm_head)
# oneDNN's AVX-512 pick is its "brgemm" kernel, which repacks the whole weight on every call: measured 9-10 GB/s
# against 20+ GB/s for its jit GEMM (numpy: ~21 GB/s) on the same matrices. Capping oneDNN at AVX2 keeps the
# GEMM for every shape: batch-1 decode becomes memory-bound, long prefills lose up to ~1.7x in compute.
CPU_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2"}

# glm_ms's CPU kernels use OpenMP. Launched from MindSpore's graph executor threads, each such thread gets its
# own OpenMP team, and by default idle OpenMP threads spin: on a small CPU they starve MindSpore's own threads (a
# tiny float16 decode step measured 40-70 ms instead of 4). Sleeping idle threads cost a wake-up per call. The
# OpenMP runtime reads this once, when MindSpore loads it, so it is set on import (a user's value wins); a
# process that imported MindSpore before glm_ms should set OMP_WAIT_POLICY=PASSIVE itself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def ascend_available() -> bool:
    """True when MindSpore can see an Ascend NPU."""
    try:
        import mindspore as ms
        return bool(ms.hal.is_available("Ascend"))
    except Exception:  # CPU-only wheels raise or lack the backend entirely
        return False


def select_device(device: str | None = None) -> str:
    """Set MindSpore's device once: argument, else $GLM_MS_DEVICE, else Ascend when present, else CPU."""
    global _selected
    import mindspore as ms
    # Once chosen, no probe again: every layer asks which device it runs on.
    wanted = device or os.environ.get("GLM_MS_DEVICE") or _selected or ("Ascend" if ascend_available() else "CPU")
    wanted = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend"}.get(wanted.lower(), wanted)
    if wanted not in ("CPU", "Ascend"):
        raise ConfigError(f"unknown device {wanted!r}: use 'CPU' or 'Ascend'")
    if _selected is None:
        if wanted == "CPU":
            for name, value in CPU_ENV.items():
                os.environ.setdefault(name, value)  # read by oneDNN when it first runs; a user's value wins
        ms.set_device(wanted)
        _selected = wanted
    elif _selected != wanted:
        raise DeviceError(f"MindSpore already runs on {_selected}; a process cannot switch to {wanted}")
    return _selected


def default_dtype(device: str | None = None) -> str:
    """float16 on Ascend (no bf16 on 910A), float32 on CPU (the arithmetic of the upstream CPU path)."""
    return "float16" if select_device(device) == "Ascend" else "float32"


def jit_config() -> dict[str, str]:
    """Keyword arguments of `mindspore.jit` for the compiled decode graphs.

    MindSpore 2.10's `jit` takes jit_level "O0" or "O1" only ("O2", the GE whole-graph sink, is deprecated
    since 2.9); on Ascend O1 adds operator fusion. $GLM_MS_JIT_LEVEL overrides the level.
    """
    level = os.environ.get("GLM_MS_JIT_LEVEL") or ("O1" if select_device() == "Ascend" else "O0")
    return {"jit_level": level}


def compiled_by_default(dtype: Any) -> bool:
    """Whether generation compiles graphs by default for weights of `dtype` (eager otherwise)."""
    # float16 on the CPU runs through glm_ms's float16 kernel, compiled like float32. Without the kernels
    # ($GLM_MS_KERNELS=off, no compiler) MindSpore's CPU MatMul, which has no float16 kernel, casts each weight
    # to float32, and a compiled graph keeps every such cast alive (about three times the float16 weights in
    # all); eager execution casts one weight at a time.
    import mindspore as ms
    if select_device() != "CPU" or dtype != ms.float16:
        return True
    from .kernels import kernel_library
    return kernel_library() is not None
