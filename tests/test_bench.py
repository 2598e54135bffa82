"""scripts/bench.py on a small shape: the JSON record names what ran, and the bound streams the stored bytes."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--layers", "1", "--hidden", "64", "--heads", "4", "--inner", "128", "--vocab", "512", "--prompt-len", "6",
         "--new-tokens", "20", "--warmup-tokens", "2", "--eager-tokens", "1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stored_bytes(hidden, inner, vocab, layers, bits, embeddings):
    """Bytes of every 2-D weight as stored: quantized layers int8 (int4 two per byte), the others float32."""
    per = {8: 1.0, 4: 0.5, None: 4.0}
    linears = layers * (hidden * 3 * hidden + hidden * hidden + 2 * hidden * inner)
    table = 2 * vocab * hidden  # word_embeddings and lm_head (tied: one Parameter, counted once per read)
    table_bytes = per[bits if embeddings else None] * table / 2
    return int(per[bits] * linears + table_bytes)


@pytest.mark.parametrize("bits, embeddings, fast", [(4, True, True), (8, False, False)])
def test_quantized_record(bench, capsys, bits, embeddings, fast):
    flags = SMALL + ["--quantize", str(bits)] + (["--quantize-embeddings"] if embeddings else []) \
        + (["--fast"] if fast else [])
    record = bench.main(flags)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(record))
    assert (record["quantize"], record["quantize_embeddings"], record["fast"]) == (bits, embeddings, fast)
    assert record["dtype"] == "float32" and record["decode_path"] == "compiled"
    assert record["compiles_second"] == 0 and record["new_tokens"] == 20
    assert record["weight_bytes_per_token"] == stored_bytes(64, 128, 512, 1, bits, embeddings)
    assert record["bandwidth_bound_ms_per_token"] > 0 and record["decode_ms_per_token"] > 0


def test_float16_record(bench, capsys):
    record = bench.main(SMALL + ["--dtype", "float16"])
    assert record["dtype"] == "float16" and record["quantize"] is None
    assert record["decode_path"] == "compiled"  # through the float16 kernel, no float32 copy of any weight
    assert record["weight_bytes_per_token"] == stored_bytes(64, 128, 512, 1, None, False) // 2


def test_the_bound_reads_each_matrix_from_fresh_memory(bench):
    # One after another through the window, starting over only when the next would not fit: a layer's matrix is
    # never read from where the one before it was (which a large L3 would still hold).
    assert bench.bound_offsets([40, 30, 20, 50, 10], window=100) == [0, 40, 70, 0, 50]
    assert bench.bound_offsets([100, 100], window=100) == [0, 0]
    mats = [(6, 8, 4), (12, 8, 1), (4, 16, 2)]
    ms, streamed = bench.bandwidth_bound_ms(mats, repeats=1)
    assert streamed == sum(r * c * s for r, c, s in mats) and ms > 0


@pytest.mark.parametrize("flags", [["--fast"], ["--quantize-embeddings"], ["--quantize", "3"]])
def test_quantization_flags_are_checked(bench, flags):
    with pytest.raises(SystemExit):
        bench.parse_args(flags)


def test_long_context_record(bench, capsys):
    prompt = bench.SHORT_CONTEXT + 100
    record = bench.main(["--family", "chatglm2", "--layers", "1", "--hidden", "64", "--heads", "4", "--groups", "2",
                         "--kv-channels", "16", "--ffn", "128", "--padded-vocab", "256", "--prompt-len", str(prompt)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(record))
    short, long = record["short"], record["long"]
    assert (short["prompt_len"], long["prompt_len"]) == (bench.SHORT_CONTEXT, prompt)
    assert short["cache_capacity"] >= bench.SHORT_CONTEXT + bench.CONTEXT_STEPS
    assert long["cache_capacity"] >= prompt + bench.CONTEXT_STEPS
    kv_per_token = 2 * 1 * 2 * 16 * 4  # keys and values, 1 layer, 2 groups of 16, float32
    assert long["kv_cache_gb"] == round(long["cache_capacity"] * kv_per_token / 2**30, 3)
    assert record["decode_long_vs_short"] == round(long["decode_ms_per_token"] / short["decode_ms_per_token"], 3)


def test_attention_bench_record(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "scripts" / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    # MindSpore's jit resolves a compiled function's globals through sys.modules, as for an imported script
    monkeypatch.setitem(sys.modules, "bench_attention", module)
    spec.loader.exec_module(module)
    module.main(["--groups", "2", "--rows", "3", "--head-dim", "16", "--widths", "8", "100", "--repeats", "2"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["kernel_available"] is True  # the CI machine builds the kernels (scripts/test.sh installs g++)
    assert sorted(record["widths"]) == ["100", "8"]
    assert all(set(entry) == {"kernel", "mindspore_ops"} and entry["kernel"]["best_ms"] > 0
               for entry in record["widths"].values())


def test_ops_bench_record(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # bench_ops imports bench_kernels, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "scripts" / "bench_ops.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_ops", module)
    spec.loader.exec_module(module)
    module.main(["--repeat", "2", "--calls", "2", "--trials", "1"])
    record = json.loads(capsys.readouterr().out)
    assert record["repeat"] == 2
    rows = {(r["step"], r["dtype"]): r for r in record["results"]}
    assert set(rows) == {(step, dtype) for step in ("gelu_16384", "rotary_32x128", "residual_4096")
                         for dtype in ("float16", "float32")}
    assert all(r["kernel_us_per_call"] > 0 and r["mindspore_ops_us_per_call"] > 0 for r in rows.values())
