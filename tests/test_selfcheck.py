"""`glm-ms-selfcheck` on this machine's CPU: every check passes, the table and one JSON line come out; a wrong
result is reported as a failed check with exit status 1."""
import json

import numpy as np
import mindspore as ms

from glm_ms import selfcheck


def json_line(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_selfcheck_passes_on_cpu_and_prints_the_json_line(capsys):
    assert selfcheck.main(["--layers", "1", "--tokens", "2"]) == 0
    out = capsys.readouterr().out
    report = json_line(out)
    assert report["ok"] is True and report["device"] == "CPU" and report["chip"] is None
    assert report["mindspore"] == ms.__version__ and report["jit"] == {"jit_level": "O0"}
    assert set(report["checks"]) == {"logits float32", "logits float16", "greedy ids", "beam search ids",
                                     "batch ids", "compiled == eager", "seeded sampling", "graph compilations"}
    assert all(report["checks"].values())
    assert report["decode_ms_per_token"] > 0 and report["decode_model"] == "ChatGLM-6B width, 1 layers"
    table = [line for line in out.splitlines() if not line.startswith("{")]
    assert sum(line.startswith("PASS") for line in table) == len(report["checks"])
    assert any("ms/token" in line for line in table)


def test_a_wrong_result_fails_its_check_and_the_exit_status(tmp_path, monkeypatch, capsys):
    golden = dict(np.load(selfcheck.GOLDEN))
    golden["greedy1_output_ids"] = golden["greedy1_output_ids"].copy()
    golden["greedy1_output_ids"][0, -3] += 1
    np.savez(tmp_path / "golden.npz", **golden)
    monkeypatch.setattr(selfcheck, "GOLDEN", tmp_path / "golden.npz")
    monkeypatch.setattr(selfcheck, "CHECKS", (selfcheck.check_greedy, selfcheck.check_logits_fp32))
    assert selfcheck.main(["--layers", "0"]) == 1
    out = capsys.readouterr().out
    report = json_line(out)
    assert report["ok"] is False and report["decode_ms_per_token"] is None
    assert report["checks"] == {"greedy ids": False, "logits float32": True}
    width = golden["greedy1_output_ids"].shape[1]
    assert "FAIL  greedy ids" in out and f"differ from token {width - 3}" in out
