"""The one place that decides MindSpore's device, execution mode and default dtype."""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
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
    except ImportError:
        return False
    try:
        from mindspore.device_context import ascend  # MindSpore >= 2.5; ms.hal.is_available is deprecated
        check = ascend.is_available
    except (ImportError, AttributeError):
        check = lambda: ms.hal.is_available("Ascend")  # noqa: E731 (older MindSpore)
    try:
        return bool(check())
    except Exception:  # CPU-only wheels raise or lack the backend entirely
        return False


def resolve_device_id(value: int | str | None = None) -> int | None:
    """The NPU to use: the argument, else $DEVICE_ID (Ascend's own convention), else None (MindSpore's default)."""
    value = value if value is not None else os.environ.get("DEVICE_ID") or None
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ConfigError(f"device id must be an integer >= 0 (--device-id or $DEVICE_ID), got {value!r}")
    return number


def select_device(device: str | None = None, device_id: int | str | None = None) -> str:
    """Set MindSpore's device once: argument, else $GLM_MS_DEVICE, else Ascend when present, else CPU.

    On Ascend the NPU is `device_id`, else $DEVICE_ID, else MindSpore's default (0).
    """
    global _selected
    import mindspore as ms
    # Once chosen, no probe again: every layer asks which device it runs on.
    wanted = device or os.environ.get("GLM_MS_DEVICE") or _selected or ("Ascend" if ascend_available() else "CPU")
    wanted = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend"}.get(wanted.lower(), wanted)
    if wanted not in ("CPU", "Ascend"):
        raise ConfigError(f"unknown device {wanted!r}: use 'CPU' or 'Ascend'")
    if _selected is None:
        number = resolve_device_id(device_id) if wanted == "Ascend" else None
        if wanted == "CPU":
            for name, value in CPU_ENV.items():
                os.environ.setdefault(name, value)  # read by oneDNN when it first runs; a user's value wins
        if number is None:
            ms.set_device(wanted)
        else:
            ms.set_device(wanted, number)
        _selected = wanted
    elif _selected != wanted:
        raise DeviceError(f"MindSpore already runs on {_selected}; a process cannot switch to {wanted}")
    return _selected


def default_dtype(device: str | None = None) -> str:
    """float16 on Ascend (no bf16 on 910A), float32 on CPU (the arithmetic of the upstream CPU path)."""
    return "float16" if select_device(device) == "Ascend" else "float32"


# ----------------------------------------------------------------------------- how graphs are compiled

JIT_BACKENDS = ("GE", "ms_backend")
JIT_LEVELS = ("O0", "O1")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Platform:
    """What runs the graphs: device, Ascend SoC ("ascend910" = 910A, "ascend910b" = 910B …) and versions."""
    device: str
    chip: str | None = None
    mindspore: str = ""
    cann: str | None = None
    driver: str | None = None


def _version_file(path: str, keys: tuple[str, ...]) -> str | None:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() in keys and value.strip():
            return value.strip()
    return None


@functools.lru_cache(maxsize=None)
def platform() -> Platform:
    """The selected device, its SoC and the MindSpore, CANN and driver versions (None where unknown)."""
    import mindspore as ms
    device, chip = select_device(), None
    if device == "Ascend":
        try:
            from mindspore._c_expression import MSContext
            chip = MSContext.get_instance().get_ascend_soc_version() or None
        except (ImportError, AttributeError, RuntimeError):
            chip = None
    home = os.environ.get("ASCEND_HOME_PATH") or "/usr/local/Ascend/ascend-toolkit/latest"
    cann = _version_file(os.path.join(home, "version.cfg"), ("version", "toolkit_version"))
    cann = cann or _version_file(os.path.join(home, "compiler", "version.info"), ("Version", "version"))
    driver = _version_file("/usr/local/Ascend/driver/version.info", ("Version", "version"))
    return Platform(device, chip, ms.__version__, cann, driver)


def _release(version: str) -> tuple[int, int]:
    numbers = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2]]
    return tuple(numbers + [0] * (2 - len(numbers)))


def choose_jit(where: Platform) -> dict[str, str]:
    """`mindspore.jit` keywords for this platform, before environment overrides.

    - CPU: ms_backend at O0 (MindSpore's default; nothing Ascend-specific).
    - 910A ("ascend910", Atlas training series) on MindSpore 2.7/2.8: GE, the default the r2.7/r2.8 `jit` docs
      give that series (whole-graph sink, static shapes; jit_level is ignored there).
    - 910A on 2.9+: GE is deprecated, ms_backend at O0 (O1's automatic fusion targets the A2 series' kernels).
    - 910B/910_93 (Atlas A2/A3) and other chips: ms_backend, the documented default, at O1 (operator fusion).
    """
    if where.device != "Ascend":
        return {"jit_level": "O0"}
    if where.chip == "ascend910":
        if _release(where.mindspore) < (2, 9):
            return {"backend": "GE"}
        return {"backend": "ms_backend", "jit_level": "O0"}
    return {"backend": "ms_backend", "jit_level": "O1"}


def _overridden(config: dict[str, str], where: Platform) -> dict[str, str]:
    backend, level = os.environ.get("GLM_MS_JIT_BACKEND"), os.environ.get("GLM_MS_JIT_LEVEL")
    if backend:
        if backend not in JIT_BACKENDS:
            raise ConfigError(f"$GLM_MS_JIT_BACKEND={backend!r}: use one of {', '.join(JIT_BACKENDS)}")
        if backend == "GE" and where.device != "Ascend":
            raise ConfigError("$GLM_MS_JIT_BACKEND=GE needs an Ascend device (GE is CANN's graph engine)")
        config = {"backend": backend} if backend == "GE" else {"backend": backend, "jit_level": "O0"}
    if level:
        if level not in JIT_LEVELS:
            raise ConfigError(f"$GLM_MS_JIT_LEVEL={level!r}: use one of {', '.join(JIT_LEVELS)}")
        if config.get("backend") != "GE":  # GE ignores jit_level (MindSpore's jit docs)
            config = {**config, "jit_level": level}
    return config


_logged = set()


def jit_config() -> dict[str, str]:
    """Keyword arguments of `mindspore.jit` for the compiled decode graphs: `choose_jit` for this chip and
    MindSpore version, then $GLM_MS_JIT_BACKEND ("GE" | "ms_backend") and $GLM_MS_JIT_LEVEL ("O0" | "O1")."""
    where = platform()
    config = _overridden(choose_jit(where), where)
    key = tuple(sorted(config.items()))
    if key not in _logged:  # once per choice: every compiled step asks
        _logged.add(key)
        logger.info("compiled graphs: %s on %s (chip %s, MindSpore %s, CANN %s)",
                    ", ".join(f"{k}={v}" for k, v in config.items()), where.device, where.chip or "-",
                    where.mindspore, where.cann or "-")
    return config


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
