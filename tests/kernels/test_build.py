"""The kernel builder: its cache key, the lock that lets concurrent processes share one build, and clear errors.

Builds here use small stand-in compilers (shell scripts) so that nothing is compiled per test; the real
library is built once per session by the conftest fixtures."""
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from glm_ms.errors import GlmMsError
from glm_ms.kernels import build


def _script(path, body):
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def copying_compiler(tmp_path, simd_library):
    """A stand-in compiler that logs each compile, waits a little, then writes the real library to -o."""
    log = tmp_path / "compiles.log"
    cxx = _script(tmp_path / "fake-c++", f"""\
        if [ "$1" = "--version" ]; then echo "fake c++ 1.0"; exit 0; fi
        out=""; prev=""
        for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
        echo "$*" >> "{log}"
        sleep 1
        cp "{simd_library.path}" "$out"
        """)
    return cxx, log


def test_flags_of_each_level():
    portable, avx2, avx512 = (set(build.build_flags(level)) for level in ("portable", "avx2", "avx512"))
    for flag in ("-O3", "-fopenmp", "-shared", "-fPIC"):
        assert flag in portable and flag in avx2 and flag in avx512
    assert {"-mavx2", "-mfma", "-mf16c"} <= avx2 and not {"-mavx2", "-mfma", "-mf16c"} & portable
    assert avx2 | {"-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"} <= avx512
    with pytest.raises(build.KernelBuildError, match="unknown kernel build level 'sse9'.*portable, avx2, avx512"):
        build.build_flags("sse9")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n\nprocessor\t: 1\n")
    assert build.cpu_level(info) == "avx2"
    info.write_text("flags\t\t: avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni\n")
    assert build.cpu_level(info) == "avx512"
    info.write_text("flags\t\t: avx2 fma f16c avx512f avx512bw avx512vl\n")  # no VNNI: the AVX2 build
    assert build.cpu_level(info) == "avx2"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx fma f16c\n")
    assert build.cpu_level(info) == "portable"
    assert build.cpu_level(tmp_path / "missing") == "portable"


@pytest.mark.parametrize("setting, level", [("", "avx512"), ("avx2", "avx2"), ("PORTABLE", "portable"),
                                            ("avx512", "avx512"), ("on", "avx512")])
def test_the_level_can_be_capped(monkeypatch, tmp_path, setting, level):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni\n")
    monkeypatch.setenv("GLM_MS_KERNELS", setting)
    assert build.default_level(info) == level
    info.write_text("flags\t\t: avx avx2 fma f16c\n")
    monkeypatch.setenv("GLM_MS_KERNELS", "avx512")  # a cap, never more than the CPU has
    assert build.default_level(info) == "avx2"


def test_the_cache_key_follows_flags_compiler_and_version():
    name = build.library_name("avx2", "g++", "g++ 12.2")
    assert name == build.library_name("avx2", "g++", "g++ 12.2")
    assert name.startswith("glm_ms_kernels-avx2-") and name.endswith(".so")
    others = {build.library_name("portable", "g++", "g++ 12.2"), build.library_name("avx512", "g++", "g++ 12.2"),
              build.library_name("avx2", "clang++", "g++ 12.2"), build.library_name("avx2", "g++", "g++ 13.1")}
    assert name not in others and len(others) == 4


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path))
    assert build.cache_dir() == tmp_path / "kernels"
    monkeypatch.delenv("GLM_MS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.cache_dir() == tmp_path / "home" / ".cache" / "glm_ms" / "kernels"


@pytest.mark.parametrize("value, enabled", [("", True), ("on", True), ("off", False), ("OFF", False),
                                            ("0", False), ("no", False)])
def test_kernels_can_be_switched_off(monkeypatch, value, enabled):
    monkeypatch.setenv("GLM_MS_KERNELS", value)
    assert build.kernels_enabled() is enabled


def test_the_session_library_is_cached_and_loads(simd_library):
    assert simd_library.level == build.default_level()
    assert simd_library.path.parent == build.cache_dir() and simd_library.path.is_file()
    assert build.build_library() == simd_library  # found in the cache, not rebuilt


def test_a_missing_compiler_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_MS_CXX", str(tmp_path / "no-such-g++"))
    for call in (lambda: build.build_library(cache=tmp_path / "cache"),
                 lambda: build.build_library(cxx=str(tmp_path / "other-g++"), cache=tmp_path / "cache")):
        with pytest.raises(build.KernelBuildError) as caught:
            call()
        message = str(caught.value)
        assert "not usable" in message and "apt-get install g++" in message and "GLM_MS_KERNELS=off" in message
        assert isinstance(caught.value, GlmMsError) and isinstance(caught.value, RuntimeError)


def test_a_failed_compile_shows_the_compiler_output(tmp_path):
    cxx = _script(tmp_path / "bad-c++", """\
        if [ "$1" = "--version" ]; then echo "bad c++ 1.0"; exit 0; fi
        echo "kernels.h:1: error: something is wrong" >&2; exit 1
        """)
    cache = tmp_path / "cache"
    with pytest.raises(build.KernelBuildError, match="(?s)compiling the CPU kernels failed.*something is wrong"):
        build.build_library(cxx=cxx, cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]  # no partial library left behind


def test_a_library_that_does_not_load_is_a_clear_error(tmp_path):
    cxx = _script(tmp_path / "junk-c++", """\
        if [ "$1" = "--version" ]; then echo "junk c++ 1.0"; exit 0; fi
        out=""; prev=""
        for arg in "$@"; do [ "$prev" = "-o" ] && out="$arg"; prev="$arg"; done
        echo "not an ELF file" > "$out"
        """)
    with pytest.raises(build.KernelBuildError, match="do not load.*--rebuild"):
        build.build_library(cxx=cxx, cache=tmp_path / "cache")


def test_concurrent_processes_share_one_build(copying_compiler, tmp_path):
    cxx, log = copying_compiler
    cache = tmp_path / "cache"
    code = ("import sys; from glm_ms.kernels.build import build_library; "
            "print(build_library(cxx=sys.argv[1], level='avx2', cache=sys.argv[2]).path)")
    procs = [subprocess.Popen([sys.executable, "-c", code, cxx, str(cache)], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy()) for _ in range(3)]
    paths = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert len(paths) == 1
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted([".lock", os.path.basename(paths.pop())])


def test_clear_and_rebuild(copying_compiler, tmp_path, capsys, monkeypatch):
    cxx, log = copying_compiler
    monkeypatch.setenv("GLM_MS_CXX", cxx)
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path / "root"))
    first = build.build_library()
    assert build.main([]) == 0 and str(first.path) in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == 1
    assert build.main(["--rebuild"]) == 0
    assert "removed 1" in capsys.readouterr().out and first.path.is_file()
    assert len(log.read_text().splitlines()) == 2
    assert build.clear_cache() == 1 and not first.path.exists()
    assert build.main(["--clear"]) == 0 and "removed 0" in capsys.readouterr().out
    assert build.clear_cache(tmp_path / "never-made") == 0


def test_the_command_reports_a_build_failure(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GLM_MS_CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path))
    assert build.main([]) == 1
    assert "error:" in capsys.readouterr().out


def test_the_builder_and_quantizer_need_no_mindspore():
    code = ("import sys, glm_ms.kernels, glm_ms.kernels.build, glm_ms.kernels.quantize; "
            "glm_ms.kernels.quantize_rows([[1.0, 2.0]], 4); print('mindspore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
