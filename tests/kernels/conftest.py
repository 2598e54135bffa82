"""Shared by the kernel tests: the kernel libraries (built once per session, or found in the cache), random
quantized weights, their float64 reference, and a reader for the torch checkpoints of the fixtures."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from glm_ms.kernels import build_library, dequantize_rows, quantize_rows
from glm_ms.kernels.build import LEVELS, cpu_level


def load_torch(path) -> dict[str, np.ndarray]:
    """Every tensor of a fixture's checkpoint folder (or a file in it), through glm_ms's own safe readers."""
    from pathlib import Path

    from glm_ms.convert.readers import open_weights
    path = Path(path)
    return dict(open_weights(path.parent if path.is_file() else path).tensors())


@pytest.fixture(scope="session")
def simd_library():
    """The library this CPU gets (its strongest build level)."""
    return build_library()


@pytest.fixture(scope="session")
def portable_library():
    """The scalar fallback build, for CPUs without AVX2/FMA/F16C."""
    return build_library(level="portable")


@pytest.fixture(scope="session", params=list(LEVELS))
def library(request):
    """Each build level this CPU can run (portable, avx2, avx512): a test taking it runs once per level."""
    names = list(LEVELS)
    if names.index(request.param) > names.index(cpu_level()):
        pytest.skip(f"this CPU cannot run the {request.param} build")
    return build_library(level=request.param)


@dataclass(frozen=True)
class Weights:
    """One random weight in each stored form, and float64 references of what the kernels must compute."""
    half: np.ndarray  # float16 [N, K]
    int8: np.ndarray
    scale8: np.ndarray
    int4: np.ndarray | None  # packed [N, K/2]; None for an odd K
    scale4: np.ndarray | None

    def stored(self, kind: str) -> tuple[np.ndarray, ...]:
        """The kernel's weight inputs for kind "int8" | "int4" | "half"."""
        return {"int8": (self.int8, self.scale8), "int4": (self.int4, self.scale4), "half": (self.half,)}[kind]

    def dense(self, kind: str) -> np.ndarray:
        """The dequantized weight of `kind` in float64."""
        if kind == "half":
            return self.half.astype(np.float64)
        bits = 8 if kind == "int8" else 4
        return dequantize_rows(*self.stored(kind), bits).astype(np.float64)

    def reference(self, x: np.ndarray, kind: str) -> np.ndarray:
        """x . W^T in float64."""
        return np.asarray(x, np.float64) @ self.dense(kind).T


def random_weights(n: int, k: int, seed: int = 0) -> Weights:
    """A float16 weight [n, k] (k even for int4) quantized both ways."""
    rng = np.random.default_rng(seed)
    half = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
    q8 = quantize_rows(half, 8)
    q4 = quantize_rows(half, 4) if k % 2 == 0 else (None, None)  # int4 needs an even K
    return Weights(half, q8.weight, q8.scale, q4[0], q4[1])
