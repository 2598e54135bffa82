"""Builds glm_ms's C++ CPU kernels on first use into a per-user cache (MindSpore-free).

The shared object is keyed by a hash of the sources, the flags and the compiler's version, built under a file
lock into a temporary name and renamed into place, so concurrent processes never load a half-written file.
`python -m glm_ms.kernels.build [--rebuild | --clear]` shows, rebuilds or empties the cache.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from glm_ms.errors import GlmMsError
from glm_ms.files import file_lock

SOURCES = Path(__file__).resolve().parent / "csrc"
COMMON_FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-shared", "-fPIC")


@dataclass(frozen=True)
class Level:
    """A kernel build level: its g++ flags, and the /proc/cpuinfo names of what those flags let the compiler use."""
    flags: tuple[str, ...] = ()
    cpu_flags: tuple[str, ...] = ()


_AVX2 = Level(("-mavx2", "-mfma", "-mf16c"), ("avx2", "fma", "f16c"))
# Weakest first. avx512 widens the kernels' inner loops to 16 floats / 32 int16 and fuses fast mode's
# multiply-adds (VNNI).
LEVELS: dict[str, Level] = {
    "portable": Level(),
    "avx2": _AVX2,
    "avx512": Level(_AVX2.flags + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
                    _AVX2.cpu_flags + ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")),
}
PREFIX = "glm_ms_kernels-"
INSTALL_HINT = ("install a C++ compiler with OpenMP (Debian/Ubuntu: `apt-get install g++`; Fedora: `dnf install "
                "gcc-c++`) or point $GLM_MS_CXX at one; $GLM_MS_KERNELS=off uses the slower MindSpore-ops path")


class KernelBuildError(GlmMsError, RuntimeError):
    """The C++ kernels cannot be built or loaded (no compiler, a failed compile, an unwritable cache)."""


@dataclass(frozen=True)
class KernelLibrary:
    """A built kernel library: the shared object and its build level (a key of LEVELS)."""
    path: Path
    level: str


def _setting() -> str:
    return os.environ.get("GLM_MS_KERNELS", "").strip().lower()


def kernels_enabled() -> bool:
    """False when $GLM_MS_KERNELS is "off" (or 0/false/no): callers then use MindSpore ops only."""
    return _setting() not in ("off", "0", "false", "no")


def cache_dir() -> Path:
    """$GLM_MS_CACHE/kernels, else ~/.cache/glm_ms/kernels."""
    root = os.environ.get("GLM_MS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "glm_ms") / "kernels"


def compiler() -> str:
    """The C++ compiler to use: $GLM_MS_CXX, else g++."""
    return os.environ.get("GLM_MS_CXX") or "g++"


def cpu_level(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The strongest build level this CPU's flags allow ("portable" where /proc/cpuinfo cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return "portable"
    flags = next((set(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("flags")),
                 set())
    return [name for name, level in LEVELS.items() if set(level.cpu_flags) <= flags][-1]


def default_level(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """cpu_level(), capped by $GLM_MS_KERNELS when it names a weaker level (e.g. avx2 to compare builds)."""
    best, cap = cpu_level(cpuinfo), _setting()
    names = list(LEVELS)
    return names[min(names.index(best), names.index(cap))] if cap in LEVELS else best


def build_flags(level: str) -> tuple[str, ...]:
    """g++ flags of a build level."""
    if level not in LEVELS:
        raise KernelBuildError(f"unknown kernel build level {level!r}: one of {', '.join(LEVELS)}")
    return COMMON_FLAGS + LEVELS[level].flags


def source_files() -> list[Path]:
    """The kernel sources (.cc compiled, .h hashed too), in a stable order."""
    return sorted(p for p in SOURCES.iterdir() if p.suffix in (".cc", ".h"))


def compiler_version(cxx: str) -> str:
    """`cxx --version`, or KernelBuildError saying what to install."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelBuildError(f"C++ compiler {cxx!r} not usable ({err}): {INSTALL_HINT}") from err
    if out.returncode != 0:
        raise KernelBuildError(f"C++ compiler {cxx!r} --version failed ({out.stderr.strip()[-300:]}): "
                               f"{INSTALL_HINT}")
    return out.stdout


def library_name(level: str, cxx: str, version: str) -> str:
    """File name of the library for these sources, flags and compiler."""
    digest = hashlib.sha256()
    for part in (cxx, version, " ".join(build_flags(level))):
        digest.update(part.encode() + b"\0")
    for path in source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{PREFIX}{level}-{digest.hexdigest()[:16]}.so"


def _compile(cxx: str, level: str, target: Path) -> None:
    # Into a temporary name in the same folder, then one rename: a reader sees no file or a whole one.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cxx, *build_flags(level), "-o", tmp, *(str(p) for p in source_files() if p.suffix == ".cc")]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelBuildError(f"compiling the CPU kernels with {cxx!r} failed ({err}): {INSTALL_HINT}") from err
        if out.returncode != 0:
            raise KernelBuildError(f"compiling the CPU kernels failed ({' '.join(cmd)}):\n{out.stderr.strip()[-2000:]}"
                                   f"\n{INSTALL_HINT}")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def build_library(cxx: str | None = None, level: str | None = None, cache: Path | None = None) -> KernelLibrary:
    """The kernel library for this CPU, compiled now unless the cache already holds it.

    cxx defaults to `compiler()`, level to `default_level()`, cache to `cache_dir()`; raises KernelBuildError.
    """
    cxx = cxx or compiler()
    level = level or default_level()
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / library_name(level, cxx, compiler_version(cxx))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            with file_lock(cache / ".lock"):
                if not target.exists():  # another process may have built it while we waited
                    _compile(cxx, level, target)
    except OSError as err:
        raise KernelBuildError(f"cannot write the kernel cache {cache} ({err}); set $GLM_MS_CACHE to a writable "
                               "folder") from err
    try:
        ctypes.CDLL(str(target))  # fail here, clearly, rather than inside MindSpore's kernel launch
    except OSError as err:
        raise KernelBuildError(f"the CPU kernels at {target} do not load ({err}); rebuild them with "
                               "`python -m glm_ms.kernels.build --rebuild`") from err
    return KernelLibrary(target, level)


def clear_cache(cache: Path | None = None) -> int:
    """Delete every built kernel library in the cache; returns how many were removed."""
    cache = Path(cache) if cache is not None else cache_dir()
    if not cache.is_dir():
        return 0
    removed = 0
    with file_lock(cache / ".lock"):
        for path in cache.glob(PREFIX + "*.so"):
            path.unlink()
            removed += 1
    return removed


def main(argv: list[str] | None = None) -> int:
    """Show (building if needed), rebuild or clear the kernel cache."""
    parser = argparse.ArgumentParser(prog="python -m glm_ms.kernels.build", description=main.__doc__)
    parser.add_argument("--rebuild", action="store_true", help="delete the cached libraries, then build")
    parser.add_argument("--clear", action="store_true", help="delete the cached libraries only")
    args = parser.parse_args(argv)
    if args.rebuild or args.clear:
        print(f"removed {clear_cache()} librar(y/ies) from {cache_dir()}")
    if args.clear:
        return 0
    try:
        lib = build_library()
    except KernelBuildError as err:
        print(f"error: {err}")
        return 1
    print(f"{lib.path} ({lib.level} build)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
