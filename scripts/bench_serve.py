"""Serving benchmark: aggregate tokens/s and per-token latency at 1, 2, 4, 8 concurrent streams; prints JSON.

Each level submits that many greedy requests at once to one `glm_ms.serve.engine.Engine` with `--slots` rows
(the engine the HTTP server runs; no HTTP in the loop) and times every token as its consumer receives it. The
model is ChatGLM-6B's width with random weights (scripts/bench.py's `build_model`), `--layers` deep. The CPU
kernels are chosen as glm-ms-serve chooses them for that many slots (`cli.prefer_batched_kernels`).
`--baseline` adds one stream on a 1-slot engine with glm_ms's single-stream kernels, run in a subprocess.

    python3 scripts/bench_serve.py --layers 2 --baseline

`per_token_ms`: time between two consecutive tokens of one stream, p50 / p99 over every gap of the level (a
gap that waited for another request's prefill included); `time_per_output_token_ms`: vLLM's TPOT, each stream's
(last - first token) / (tokens - 1), p50 / p99 over the streams; `tokens_per_s`: every token of the level over
the wall time from submitting to the last token.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import add_shape_arguments, build_model, peak_rss_gb, random_prompt  # noqa: E402  (the sibling script)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per stream (no eos: all are made)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--slots", type=int, default=None, help="rows of the engine (default: the most streams)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time 1 stream on a 1-slot engine with single-stream kernels (a subprocess)")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (Ascend default)")
    parser.add_argument("--device", default=None, help="CPU or Ascend (default: Ascend when present)")
    parser.add_argument("--eager", action="store_true", help="eager Cells instead of compiled graphs")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per level; the one with the median tokens/s is reported (other processes "
                             "sharing the CPU make single runs noisy)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def run_level(engine, prompts: list[list[int]], new_tokens: int) -> dict:
    """Submit every prompt at once; time each token where its consumer receives it."""
    marks: list[list[float]] = [[] for _ in prompts]

    def consume(i: int, handle) -> None:
        for event in handle:
            if hasattr(event, "token"):
                marks[i].append(time.perf_counter())

    start = time.perf_counter()
    handles = [engine.submit(p, new_tokens, stop_ids=()) for p in prompts]
    threads = [threading.Thread(target=consume, args=(i, h)) for i, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(m[-1] for m in marks) - start
    gaps = np.concatenate([np.diff(m) for m in marks]) * 1e3
    first = np.array([m[0] - start for m in marks]) * 1e3
    # vLLM's time per output token: each stream's (last - first) / (tokens - 1), so a stall counts once.
    tpot = np.array([(m[-1] - m[0]) / (len(m) - 1) for m in marks if len(m) > 1]) * 1e3
    tokens = sum(len(m) for m in marks)
    return {"streams": len(prompts), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 3),
            "per_token_ms": {"p50": round(float(np.percentile(gaps, 50)), 2),
                             "p99": round(float(np.percentile(gaps, 99)), 2)},
            "time_per_output_token_ms": {"p50": round(float(np.percentile(tpot, 50)), 2),
                                         "p99": round(float(np.percentile(tpot, 99)), 2)},
            "time_to_first_token_ms": {"p50": round(float(np.percentile(first, 50)), 2),
                                       "max": round(float(first.max()), 2)}}


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s, and every run's tokens/s."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return dict(ranked[len(ranked) // 2], tokens_per_s_runs=[r["tokens_per_s"] for r in runs])


def baseline(args: argparse.Namespace) -> dict:
    """The 1-stream level of this script run on a 1-slot engine in a fresh process (its own CPU kernels)."""
    flags = ["--streams", "1", "--slots", "1", "--layers", str(args.layers), "--hidden", str(args.hidden),
             "--heads", str(args.heads), "--inner", str(args.inner), "--vocab", str(args.vocab),
             "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--seed", str(args.seed),
             "--repeats", str(args.repeats)]
    flags += ["--dtype", args.dtype] + (["--device", args.device] if args.device else [])
    flags += ["--eager"] if args.eager else []
    out = subprocess.run([sys.executable, os.path.abspath(__file__)] + flags, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out[out.index("{"):])["levels"]["1"]


def main(argv: list[str] | None = None) -> dict:
    """Run every level; print and return the JSON record."""
    # Kept whole: one measurement run read top to bottom, ending in the flat record it prints.
    args = parse_args(argv)
    args.slots = args.slots or max(args.streams)
    from glm_ms.serve.cli import prefer_batched_kernels
    prefer_batched_kernels(args.slots)  # before MindSpore starts, as glm-ms-serve does
    from glm_ms.device import default_dtype, select_device
    from glm_ms.serve.engine import Engine
    device = select_device(args.device)
    args.dtype = args.dtype or default_dtype()
    model, config = build_model(args)
    capacity = args.prompt_len + args.new_tokens
    prompts = [random_prompt(config, args.prompt_len, args.seed + i)[0].tolist() for i in range(max(args.streams))]
    t0 = time.perf_counter()
    engine = Engine(model, slots=args.slots, max_queue=max(args.streams), capacity=capacity,
                    compiled=False if args.eager else None)
    engine.submit(prompts[0], 2, stop_ids=()).tokens()  # compiles the prefill and decode graphs
    start_s = time.perf_counter() - t0
    levels = {str(n): median_run([run_level(engine, prompts[:n], args.new_tokens) for _ in range(args.repeats)])
              for n in args.streams}
    engine.shutdown()
    result = {
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "inner": args.inner,
                  "vocab": args.vocab},
        "dtype": args.dtype, "device": device, "decode_path": "compiled" if engine.compiled else "eager",
        "cpu_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA") if device == "CPU" else None,
        "slots": args.slots, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "capacity": engine.capacity, "engine_start_s": round(start_s, 1), "levels": levels,
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    one, four = levels.get("1"), levels.get("4")
    if one and four:
        result["tokens_per_s_4_over_1"] = round(four["tokens_per_s"] / one["tokens_per_s"], 2)
        result["p99_at_4_over_p50_at_1"] = round(four["per_token_ms"]["p99"] / one["per_token_ms"]["p50"], 2)
        result["tpot_p99_at_4_over_p50_at_1"] = round(four["time_per_output_token_ms"]["p99"]
                                                      / one["time_per_output_token_ms"]["p50"], 2)
    if args.baseline:
        base = result["baseline_1_slot"] = baseline(args)
        if four:
            result["tokens_per_s_4_over_baseline"] = round(four["tokens_per_s"] / base["tokens_per_s"], 2)
            result["p99_at_4_over_baseline_p50"] = round(four["per_token_ms"]["p99"] / base["per_token_ms"]["p50"], 2)
            result["tpot_p99_at_4_over_baseline_p50"] = round(four["time_per_output_token_ms"]["p99"]
                                                              / base["time_per_output_token_ms"]["p50"], 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
