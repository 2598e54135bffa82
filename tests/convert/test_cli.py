"""glm-ms-convert: converts, one-line errors of the project's own types, usage errors, the script, no MindSpore."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from glm_ms.convert.cli import main as cli_main
from glm_ms.convert.converted import is_converted, read_manifest
from tests.convert.upstream import FIXTURE, SHARDS, copy_fixture

ROOT = Path(__file__).resolve().parents[2]


def test_cli_converts(tmp_path, capsys):
    assert cli_main(["--src", str(FIXTURE), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert is_converted(tmp_path / "out")
    assert f"{len(SHARDS)} shard(s), float16" in capsys.readouterr().out
    assert cli_main(["--src", str(FIXTURE), "--out", str(tmp_path / "o32"), "--dtype", "float32", "-q"]) == 0
    assert read_manifest(tmp_path / "o32")["dtype"] == "float32"


def test_cli_expected_errors_are_one_line(tmp_path, capsys):
    src = copy_fixture(tmp_path / "src")
    (src / SHARDS[2]).unlink()
    assert cli_main(["--src", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glm-ms-convert: error: ") and SHARDS[2] in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_output_naming_the_source_in_one_line(tmp_path, capsys):
    src = copy_fixture(tmp_path / "m")
    before = {s: hashlib.sha256((src / s).read_bytes()).hexdigest() for s in SHARDS}
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    for out in (tmp_path / "link" / "m", tmp_path / "m" / ".." / "m"):
        assert cli_main(["--src", str(src), "--out", str(out), "--overwrite", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "must not be (or contain) the source folder" in err[0]
    assert {s: hashlib.sha256((src / s).read_bytes()).hexdigest() for s in SHARDS} == before


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    src = copy_fixture(tmp_path / "src")
    (src / "config.json").write_text('{"num_layers": 100000000, "position_encoding_2d": true}')
    assert cli_main(["--src", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glm-ms-convert: error: ") and "config.json" in err[0]


def test_cli_usage_errors(tmp_path, capsys):
    for argv in (["--out", "x"], ["--model-id", "ZhipuAI/ChatGLM-6B", "--out", "x"],
                 ["--src", "a", "--model-id", "b/c", "--out", "x"], ["--src", "a", "--out", "x", "--dtype", "int8"],
                 ["--src", "a", "--out", "x", "--revision", "v1"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model-id needs --mirror modelscope" in err and "--revision apply to --model-id, not --src" in err


def test_script_help_and_errors(tmp_path):
    script = ROOT / "scripts" / "convert_weights.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--src", "--model-id", "--mirror", "--revision", "--cache-dir", "--endpoint", "--dtype", "--out"):
        assert flag in proc.stdout
    proc = subprocess.run([sys.executable, str(script), "--src", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("glm-ms-convert: error: ")


def test_converting_and_resolving_import_no_mindspore(tmp_path):
    # The converter, the readers of upstream folders and the resolver never need MindSpore (nor torch).
    code = ("import sys, glm_ms, glm_ms.convert, glm_ms.hub.resolve, glm_ms.convert.cli, glm_ms.hub.modelscope; "
            "from glm_ms.convert.driver import convert_checkpoint; from glm_ms.convert.readers import open_weights; "
            f"convert_checkpoint({str(FIXTURE)!r}, {str(tmp_path / 'out')!r}, progress=False); "
            f"[None for _ in open_weights({str(FIXTURE)!r}).tensors()]; "
            f"[None for _ in open_weights({str(tmp_path / 'out')!r}).tensors()]; "
            "bad = [m for m in ('torch', 'mindspore') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
