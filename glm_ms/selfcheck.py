"""`python -m glm_ms.selfcheck` (`glm-ms-selfcheck`): is this machine's MindSpore computing ChatGLM right?

Runs on whatever device MindSpore sees (an Ascend NPU when present): the bundled demo model's logits in float32
and float16 against golden values, greedy / beam / batch ids, compiled == eager, seeded sampling, the number of
graphs compiled, and decode milliseconds per token on a random model of ChatGLM-6B's width. Prints a table and
one JSON line (versions, chip, jit backend chosen, results) to paste into a bug report; exit status 0 when every
check passes, 1 otherwise.

The goldens (`selfcheck_golden.npz`) are a subset of tests/fixtures/tiny-chatglm-6b/golden.npz, the bundled demo
model's outputs from the upstream THUDM/chatglm-6b code in torch float32.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).with_name("selfcheck_golden.npz")
FP32_TOLERANCE = 1e-4   # max|Δ| / max|golden|, as the parity tests
FP16_TOLERANCE = 0.1    # float16 compute: close, and the same argmax where the golden's top two are apart
FP16_AGREEMENT = 0.95
SAMPLING = dict(do_sample=True, top_k=5, top_p=0.7, temperature=0.95, seed=7)
CHATGLM_6B_WIDTH = dict(hidden_size=4096, num_attention_heads=32, inner_hidden_size=16384, vocab_size=130528)


@dataclass
class Check:
    """One row of the report."""
    name: str
    ok: bool
    detail: str


@dataclass
class Context:
    """What the checks share: the goldens, the demo model in float32 and its tokenizer."""
    golden: dict
    model: object
    tokenizer: object
    folder: Path


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def _same_ids(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape == want.shape and (got == want).all():
        return True, f"{want.shape[-1]} tokens equal"
    first = next((i for i in range(min(got.shape[-1], want.shape[-1])) if (got[..., i] != want[..., i]).any()),
                 min(got.shape[-1], want.shape[-1]))
    return False, f"differ from token {first} (got shape {list(got.shape)}, golden {list(want.shape)})"


# ----------------------------------------------------------------------------- the checks


def check_logits_fp32(ctx: Context) -> Check:
    """Float32 logits of two prompts against the golden."""
    errors = [_rel_err(ctx.model(ctx.golden[f"fwd{i}_input_ids"]).logits.asnumpy(), ctx.golden[f"fwd{i}_logits"])
              for i in (0, 1)]
    return Check("logits float32", max(errors) <= FP32_TOLERANCE, f"max rel err {max(errors):.2e} "
                 f"(limit {FP32_TOLERANCE:g})")


def check_logits_fp16(ctx: Context) -> Check:
    """Float16 logits: close to the golden, and the same argmax where the golden's top two are clearly apart."""
    from .api import AutoModel
    half = AutoModel.from_pretrained(ctx.folder, dtype="float16")
    worst, checked, agree = 0.0, 0, 0
    for i in (0, 1):
        logits = half(ctx.golden[f"fwd{i}_input_ids"]).logits.asnumpy()[0]
        ref = ctx.golden[f"fwd{i}_logits"][0]
        worst = max(worst, _rel_err(logits, ref) if np.isfinite(logits).all() else np.inf)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.01 * np.abs(ref).max()
        checked += int(clear.sum())
        agree += int((logits.argmax(-1) == ref.argmax(-1))[clear].sum())
    share = agree / max(checked, 1)
    return Check("logits float16", worst <= FP16_TOLERANCE and share >= FP16_AGREEMENT,
                 f"max rel err {worst:.2e} (limit {FP16_TOLERANCE:g}), argmax agrees {share:.0%}")


def check_greedy(ctx: Context) -> Check:
    """Greedy ids of two prompts (the default decode path) against the golden."""
    results = []
    for i in (0, 1):
        ids = ctx.golden[f"fwd{i}_input_ids"]
        want = ctx.golden[f"greedy{i}_output_ids"]
        results.append(_same_ids(ctx.model.generate(ids, max_length=want.shape[1], do_sample=False), want))
    return Check("greedy ids", all(ok for ok, _ in results), "; ".join(detail for _, detail in results))


def check_beam(ctx: Context) -> Check:
    """Beam search (4 beams) against the golden."""
    ids = ctx.golden["fwd1_input_ids"]
    ok, detail = _same_ids(ctx.model.generate(ids, max_length=ids.shape[1] + 16, num_beams=4),
                           ctx.golden["beam4_output_ids"])
    return Check("beam search ids", ok, detail)


def check_batch(ctx: Context) -> Check:
    """A left-padded batch of two prompts against the golden."""
    enc = ctx.tokenizer([str(p) for p in ctx.golden["batch_prompts"]], padding=True)
    out = ctx.model.generate(**enc, max_length=enc["input_ids"].shape[1] + 16, do_sample=False)
    ok, detail = _same_ids(out, ctx.golden["batch_output_ids"])
    return Check("batch ids", ok, detail)


def check_compiled_equals_eager(ctx: Context) -> Check:
    """Greedy ids from compiled graphs and from the eager Cells."""
    ids = ctx.golden["fwd1_input_ids"]
    fast, eager = (ctx.model.generate(ids, max_length=ids.shape[1] + 16, do_sample=False, compiled=c)
                   for c in (True, False))
    ok, detail = _same_ids(fast, eager)
    return Check("compiled == eager", ok, detail)


def check_sampling(ctx: Context) -> Check:
    """Seeded top-k/top-p sampling: the graph's draws equal the eager warpers'."""
    ids = ctx.golden["fwd1_input_ids"]
    fast, eager = (ctx.model.generate(ids, max_length=ids.shape[1] + 16, compiled=c, **SAMPLING)
                   for c in (True, False))
    ok, detail = _same_ids(fast, eager)
    return Check("seeded sampling", ok, detail)


def check_compile_count(ctx: Context) -> Check:
    """Three prompt buckets compile at most one graph each plus one decode graph, and nothing when repeated."""
    from .api import AutoModel
    from .decoding import bucket, graph_compilations
    fresh = AutoModel.from_pretrained(ctx.folder, dtype="float32")
    prompts = [ctx.golden[f"fwd{i}_input_ids"] for i in (0, 1)] + [np.tile(ctx.golden["fwd1_input_ids"], 3)]
    buckets = {bucket(p.shape[1]) for p in prompts}
    for p in prompts:
        fresh.generate(p, max_length=60, compiled=True)
    first = graph_compilations(fresh)
    for p in prompts:
        fresh.generate(p, max_length=60, compiled=True, **SAMPLING)
    again = graph_compilations(fresh) - first
    ok = 0 < first <= len(buckets) + 1 and again <= len(buckets) + 1
    return Check("graph compilations", ok, f"greedy: {first} for {len(buckets)} prompt buckets (limit "
                 f"{len(buckets) + 1}); sampling: {again} more")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_logits_fp32, check_logits_fp16, check_greedy, check_beam, check_batch, check_compiled_equals_eager,
    check_sampling, check_compile_count)


# ----------------------------------------------------------------------------- decode speed


def decode_ms_per_token(layers: int, tokens: int) -> float:
    """Milliseconds per decoded token (batch 1, greedy, compiled) on a random model of ChatGLM-6B's width."""
    from .families import detect, get
    from .loading import DEMO_MODEL_DIR
    config = dataclasses.replace(detect(DEMO_MODEL_DIR).config, num_layers=layers, **CHATGLM_6B_WIDTH)
    model = get(config.family).load("model")(config)  # zero weights: the same work as real ones
    ids = model.check_ids([[20, 21, 22, 23, config.gmask_token_id, config.bos_token_id]])
    model.generate(ids, max_new_tokens=tokens + 1, do_sample=False, eos_token_id=[])  # compiles both graphs
    marks = [time.perf_counter() for _ in model.stream_generate(ids, max_new_tokens=tokens + 1, do_sample=False,
                                                                eos_token_id=[], include_last=True)]
    # The time between consecutive tokens, never a difference of two runs (which load can make negative).
    return float(np.median(np.diff(marks))) * 1000


# ----------------------------------------------------------------------------- the run


def _run(check: Callable[[Context], Check], ctx: Context) -> Check:
    try:
        return check(ctx)
    except Exception as err:  # a broken device must still give the whole report
        return Check(check.__name__[len("check_"):].replace("_", " "), False, f"{type(err).__name__}: {err}"[:300])


def report_line(results: list[Check], speed: float | None, layers: int) -> dict:
    """The JSON object of the report: versions, chip, jit choice, results."""
    from .device import jit_config, platform
    where = platform()
    return {"glm_ms_selfcheck": 1, "ok": all(r.ok for r in results), "device": where.device, "chip": where.chip,
            "mindspore": where.mindspore, "cann": where.cann, "driver": where.driver, "jit": jit_config(),
            "checks": {r.name: r.ok for r in results},
            "decode_ms_per_token": None if speed is None else round(speed, 2),
            "decode_model": f"ChatGLM-6B width, {layers} layers" if speed is not None else None}


def print_table(results: list[Check], speed: float | None, layers: int, out=None) -> None:
    """The readable report (on `out`, default stdout)."""
    out = out or sys.stdout
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}", file=out)
    if speed is not None:
        print(f"      {'decode speed':<{width}}  {speed:.1f} ms/token (ChatGLM-6B width, {layers} layers, "
              "batch 1, greedy, compiled)", file=out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="glm-ms-selfcheck", description="Check glm_ms on the device MindSpore "
                                     "sees: golden logits and ids of the bundled demo model, compiled == eager, "
                                     "seeded sampling, graph compilations, decode speed. Ends with one JSON line "
                                     "to paste into a bug report; exit status 1 if a check fails.")
    parser.add_argument("--device", choices=("CPU", "Ascend"), default=None,
                        help="MindSpore device (default: $GLM_MS_DEVICE, else Ascend when present, else CPU)")
    parser.add_argument("--device-id", type=int, default=None, metavar="N",
                        help="which NPU on Ascend (default: $DEVICE_ID, else 0)")
    parser.add_argument("--layers", type=int, default=2, metavar="N",
                        help="layers of the ChatGLM-6B-width random model timed for decode speed (0: skip; "
                             "about 0.8 GB of float32 or 0.4 GB of float16 weights per layer plus 1 GB embeddings)")
    parser.add_argument("--tokens", type=int, default=16, metavar="N", help="tokens decoded for the timing")
    args = parser.parse_args(argv)
    if args.layers < 0 or args.tokens < 1:
        parser.error("--layers must be >= 0 and --tokens >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every check, print the table and the JSON line; 0 if all pass."""
    args = parse_args(argv)
    from .api import AutoModel, AutoTokenizer
    from .device import select_device
    from .loading import DEMO_MODEL_DIR
    select_device(args.device, args.device_id)
    golden = dict(np.load(GOLDEN, allow_pickle=False))
    ctx = Context(golden, AutoModel.from_pretrained(DEMO_MODEL_DIR, dtype="float32"),
                  AutoTokenizer.from_pretrained(DEMO_MODEL_DIR), DEMO_MODEL_DIR)
    results = [_run(check, ctx) for check in CHECKS]
    speed = None
    if args.layers:
        try:
            speed = decode_ms_per_token(args.layers, args.tokens)
        except Exception as err:  # reported, as a failed check
            results.append(Check("decode speed", False, f"{type(err).__name__}: {err}"[:300]))
    print_table(results, speed, args.layers)
    print(json.dumps(report_line(results, speed, args.layers)), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
