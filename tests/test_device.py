"""Device choices: the jit backend and level per chip and MindSpore version (chip and version mocked, no NPU
needed), their environment overrides, logged once; DEVICE_ID; the Ascend probe on this CPU-only MindSpore."""
import logging

import pytest

from glm_ms import device
from glm_ms.device import Platform, choose_jit, resolve_device_id
from glm_ms.errors import ConfigError

A910_272 = Platform("Ascend", "ascend910", "2.7.2")


@pytest.mark.parametrize("where, expected", [
    (A910_272, {"backend": "GE"}),
    (Platform("Ascend", "ascend910", "2.8.0"), {"backend": "GE"}),
    (Platform("Ascend", "ascend910", "2.10.0"), {"backend": "ms_backend", "jit_level": "O0"}),
    (Platform("Ascend", "ascend910", "2.9.0rc1"), {"backend": "ms_backend", "jit_level": "O0"}),
    (Platform("Ascend", "ascend910b", "2.7.2"), {"backend": "ms_backend", "jit_level": "O1"}),
    (Platform("Ascend", "ascend910b", "2.10.0"), {"backend": "ms_backend", "jit_level": "O1"}),
    (Platform("CPU", None, "2.10.0"), {"jit_level": "O0"}),
    (Platform("CPU", None, "2.7.2"), {"jit_level": "O0"}),
], ids=["910A-2.7.2", "910A-2.8", "910A-2.10", "910A-2.9rc", "910B-2.7.2", "910B-2.10", "CPU-2.10", "CPU-2.7.2"])
def test_jit_choice_per_chip_and_version(where, expected):
    assert choose_jit(where) == expected


@pytest.fixture
def on(monkeypatch):
    """Pretend jit_config runs on the given Platform (with a fresh once-only log)."""
    monkeypatch.delenv("GLM_MS_JIT_BACKEND", raising=False)
    monkeypatch.delenv("GLM_MS_JIT_LEVEL", raising=False)
    monkeypatch.setattr(device, "_logged", set())

    def pretend(where):
        monkeypatch.setattr(device, "platform", lambda: where)
    return pretend


def test_environment_overrides_the_choice(on, monkeypatch):
    on(A910_272)
    monkeypatch.setenv("GLM_MS_JIT_BACKEND", "ms_backend")
    assert device.jit_config() == {"backend": "ms_backend", "jit_level": "O0"}
    monkeypatch.setenv("GLM_MS_JIT_LEVEL", "O1")
    assert device.jit_config() == {"backend": "ms_backend", "jit_level": "O1"}
    monkeypatch.setenv("GLM_MS_JIT_BACKEND", "GE")
    assert device.jit_config() == {"backend": "GE"}  # GE ignores jit_level
    on(Platform("CPU", None, "2.10.0"))
    with pytest.raises(ConfigError, match="GE needs an Ascend"):
        device.jit_config()
    monkeypatch.setenv("GLM_MS_JIT_BACKEND", "O2")
    with pytest.raises(ConfigError, match="GLM_MS_JIT_BACKEND='O2'"):
        device.jit_config()
    monkeypatch.delenv("GLM_MS_JIT_BACKEND")
    monkeypatch.setenv("GLM_MS_JIT_LEVEL", "O3")
    with pytest.raises(ConfigError, match="GLM_MS_JIT_LEVEL='O3'"):
        device.jit_config()


def test_the_choice_is_logged_once_with_versions_and_chip(on, caplog):
    on(Platform("Ascend", "ascend910", "2.8.0", cann="8.3.RC1"))
    with caplog.at_level(logging.INFO, logger="glm_ms.device"):
        for _ in range(3):
            device.jit_config()
    lines = [r.getMessage() for r in caplog.records if r.name == "glm_ms.device"]
    assert lines == ["compiled graphs: backend=GE on Ascend (chip ascend910, MindSpore 2.8.0, CANN 8.3.RC1)"]


def test_cpu_platform_here_keeps_mindspores_default():
    where = device.platform()
    assert (where.device, where.chip) == ("CPU", None) and where.mindspore
    assert device.jit_config() == {"jit_level": "O0"}
    assert device.ascend_available() is False


def test_device_id_argument_then_environment(monkeypatch):
    monkeypatch.delenv("DEVICE_ID", raising=False)
    assert resolve_device_id() is None
    monkeypatch.setenv("DEVICE_ID", "3")
    assert resolve_device_id() == 3
    assert resolve_device_id(1) == 1
    monkeypatch.setenv("DEVICE_ID", "first")
    with pytest.raises(ConfigError, match="DEVICE_ID.*'first'"):
        resolve_device_id()
    with pytest.raises(ConfigError, match="-2"):
        resolve_device_id(-2)


def test_cli_flag_reaches_select_device(monkeypatch):
    import argparse
    from glm_ms import loading
    args = loading.add_model_arguments(argparse.ArgumentParser()).parse_args(["--device-id", "2"])
    seen = []
    monkeypatch.setattr(device, "select_device", lambda *a: seen.append(a) or "CPU")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: ("model", "tokenizer"))
    assert loading.load_from_args(args) == ("model", "tokenizer")
    assert seen == [(None, 2)]
