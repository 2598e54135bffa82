"""The one place that decides MindSpore's device, execution mode and default dtype."""
import os

_selected = None


def ascend_available():
    """True when MindSpore can see an Ascend NPU."""
    try:
        import mindspore as ms
        return bool(ms.hal.is_available("Ascend"))
    except Exception:  # CPU-only wheels raise or lack the backend entirely
        return False


def select_device(device=None):
    """Set MindSpore's device once: argument, else $GLM_MS_DEVICE, else Ascend when present, else CPU."""
    global _selected
    import mindspore as ms
    wanted = device or os.environ.get("GLM_MS_DEVICE") or ("Ascend" if ascend_available() else "CPU")
    wanted = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend"}.get(wanted.lower(), wanted)
    if wanted not in ("CPU", "Ascend"):
        raise ValueError(f"unknown device {wanted!r}: use 'CPU' or 'Ascend'")
    if _selected is None:
        ms.set_device(wanted)
        _selected = wanted
    elif _selected != wanted:
        raise RuntimeError(f"MindSpore already runs on {_selected}; a process cannot switch to {wanted}")
    return _selected


def default_dtype(device=None):
    """float16 on Ascend (no bf16 on 910A), float32 on CPU (MindSpore's fp16 CPU kernels are ~8x slower)."""
    return "float16" if select_device(device) == "Ascend" else "float32"


def jit_config():
    """Graph-compilation settings for the compiled decode path: whole-graph sinking (O2) exists only on Ascend."""
    return {"jit_level": "O2"} if select_device() == "Ascend" else {"jit_level": "O0"}
