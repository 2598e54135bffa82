"""Decode benchmark on random weights: prints one JSON object.

Default shape: ChatGLM-6B's width (hidden 4096, 32 heads, inner 16384, vocab 130528) with 2 layers, so it fits
and runs in minutes on a small CPU box. Times are reported next to `bandwidth_bound_ms_per_token`: the time
numpy takes, in the same run, to stream the same number of weight bytes through matrix-vector products, so
the figures read as ratios rather than machine-dependent absolutes.

    python3 scripts/bench.py --layers 2
    python3 scripts/bench.py --layers 2 --quantize 4 --quantize-embeddings [--fast]   # weight-only int4
    python3 scripts/bench.py --checkpoint DIR --dtype float16 --new-tokens 4   # a real (or synthetic) model
    python3 scripts/bench.py --family chatglm2 --layers 2 --prompt-len 32768   # long context, ChatGLM2 width

With `--family chatglm2` (ChatGLM2-6B-32K's width: hidden 4096, 32 heads in 2 key/value groups, kv_channels
128, ffn 13696, vocab 65024) it measures long context instead: a prompt of `--prompt-len` tokens and one of
SHORT_CONTEXT tokens are each prefilled once and decoded for CONTEXT_STEPS tokens; the record holds the
prefill time and peak resident memory of each next to the weights' and the KV cache's bytes, and the decode
ms/token at both positions.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

POSITIONS = (16, 128, 512)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def build_model(args: argparse.Namespace) -> tuple:
    """A ChatGLM-6B-architecture model of the requested shape with small random weights."""
    from glm_ms import ChatGLMConfig, ChatGLMForConditionalGeneration
    vocab = args.vocab
    if vocab >= 130528:  # the real special ids
        special = dict(mask_token_id=130000, gmask_token_id=130001, bos_token_id=130004, eos_token_id=130005)
    else:
        special = dict(mask_token_id=vocab - 4, gmask_token_id=vocab - 3, bos_token_id=vocab - 2,
                       eos_token_id=vocab - 1)
    config = ChatGLMConfig(vocab_size=vocab, hidden_size=args.hidden, num_layers=args.layers,
                           num_attention_heads=args.heads, inner_hidden_size=args.inner, pad_token_id=3,
                           max_sequence_length=max(2048, args.prompt_len + args.new_tokens + 1), **special)
    model = ChatGLMForConditionalGeneration(config, dtype=args.dtype)
    fill_random(model, args.seed)
    if args.quantize:
        model.quantize(args.quantize, embeddings=args.quantize_embeddings, fast=args.fast)
    return model, config


def fill_random(model, seed: int) -> None:
    """Small random weights (norm weights around 1), filled one tensor at a time."""
    import mindspore as ms
    from mindspore import Tensor
    rng = np.random.default_rng(seed)
    for name, param in model.weight_parameters().items():
        values = rng.standard_normal(param.shape, dtype=np.float32)
        values *= np.float32(0.02)
        if name.endswith("layernorm.weight"):
            values += 1
        # from_numpy shares the array: no extra copy of a 2 GB matrix while filling.
        data = Tensor.from_numpy(values) if param.dtype == ms.float32 else Tensor(values).astype(param.dtype)
        param.set_data(data)
        del values, data


def current_rss_gb() -> float | None:
    """Resident memory of this process now, in GiB (None where /proc is absent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return None


def load_model(args: argparse.Namespace) -> tuple:
    """A model loaded from a folder (glm-ms-convert output or upstream shards), and its config."""
    from glm_ms import ChatGLMForConditionalGeneration
    model = ChatGLMForConditionalGeneration.from_folder(args.checkpoint, dtype=args.dtype, quantize=args.quantize,
                                                        quantize_embeddings=args.quantize_embeddings, fast=args.fast)
    return model, model.config


def streamed_matrices(model) -> list[tuple[int, int, int]]:
    """(rows, cols, bytes per element) of every weight matrix a decode step reads once, as stored (int8, int4
    packed two per byte, float16 or float32; the float16 scales of quantized layers are a rounding error)."""
    import mindspore as ms
    size = {ms.int8: 1, ms.float16: 2, ms.float32: 4}
    # lm_head shares the embedding matrix, which the output projection reads whole once per token.
    return [(p.shape[0], p.shape[1], size[p.dtype]) for p in model.weight_parameters().values() if len(p.shape) == 2]


BOUND_WINDOW = 512 << 20  # bytes the bound reads before coming back to memory it has read: far beyond any L3


def bound_offsets(sizes: list[int], window: int) -> list[int]:
    """Where in a buffer of `window` elements each matrix of `sizes` elements is read: one after another,
    starting over only when the next would run past the end (so no matrix is read from a cache that the
    previous ones have just filled, as the model's own weights are not)."""
    offsets, at = [], 0
    for size in sizes:
        if at + size > window:
            at = 0
        offsets.append(at)
        at += size
    return offsets


def bandwidth_bound_ms(mats: list[tuple[int, int, int]], repeats: int = 5) -> tuple[float, int]:
    """Best time of numpy fp32 `x @ W.T` over matrices holding the same bytes as the model's, each read from
    memory the others have not just read (a buffer of the model's bytes, at most BOUND_WINDOW, read in turn)."""
    shapes = [(max(1, rows * size // 4), cols) for rows, cols, size in mats]
    sizes = [r * c for r, c in shapes]
    window = min(sum(sizes), max(max(sizes), BOUND_WINDOW // 4))
    offsets = bound_offsets(sizes, window)
    buffer = np.ones(window, dtype=np.float32)
    xs = {cols: np.ones(cols, dtype=np.float32) for _, cols in shapes}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for (rows, cols), at in zip(shapes, offsets):
            w = buffer[at:at + rows * cols].reshape(rows, cols)
            (xs[cols] @ w.T).sum()
        best = min(best, time.perf_counter() - start)
    del buffer
    return best * 1e3, sum(sizes) * 4


def timed_stream(model, prompt: np.ndarray, new_tokens: int, stop_after: int | None = None,
                 compiled: bool | None = None) -> tuple[float, np.ndarray]:
    """Seconds to the first token, then per decode step (time between consecutive tokens)."""
    start = time.perf_counter()
    marks = []
    gen = model.stream_generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=[],
                                include_last=True, compiled=compiled)
    for _ in gen:
        marks.append(time.perf_counter())
        if stop_after and len(marks) >= stop_after:
            gen.close()
            break
    return marks[0] - start, np.diff(marks)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The random model's shape: ChatGLM-6B's width with 2 layers unless told otherwise."""
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--inner", type=int, default=16384)
    parser.add_argument("--vocab", type=int, default=130528)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(parser)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or float16 (Ascend default)")
    parser.add_argument("--quantize", type=int, choices=(8, 4), default=None,
                        help="weight-only int8/int4 for the layers upstream quantizes")
    parser.add_argument("--quantize-embeddings", action="store_true",
                        help="with --quantize: the embeddings and lm_head too (every 2-D weight)")
    parser.add_argument("--fast", action="store_true", help="with --quantize: the kernels' fast (integer) mode")
    parser.add_argument("--device", default=None, help="CPU or Ascend (default: Ascend when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-tokens", type=int, default=0,
                        help="stop the first generate (it compiles) after this many tokens; 0 (default): run it "
                             "full length, so every cache-prefix width's decode graph is compiled before timing")
    parser.add_argument("--eager-tokens", type=int, default=6, help="eager decode steps timed for comparison")
    parser.add_argument("--checkpoint", default=None, help="load this model folder instead of random weights "
                        "(shape flags are then ignored)")
    add_long_context_arguments(parser)
    args = parser.parse_args(argv)
    if (args.quantize_embeddings or args.fast) and not args.quantize:
        parser.error("--quantize-embeddings and --fast need --quantize 8 or 4")
    return args


def add_long_context_arguments(parser: argparse.ArgumentParser) -> None:
    """`--family chatglm2` and the ChatGLM2 width it builds (--hidden, --heads and --layers are shared)."""
    parser.add_argument("--family", choices=("chatglm-6b", "chatglm2"), default="chatglm-6b",
                        help="chatglm2: the long-context measurement on a ChatGLM2-6B-32K-shaped model")
    parser.add_argument("--groups", type=int, default=2, help="ChatGLM2 key/value groups (multi_query_group_num)")
    parser.add_argument("--kv-channels", type=int, default=128, help="ChatGLM2 head size")
    parser.add_argument("--ffn", type=int, default=13696, help="ChatGLM2 ffn_hidden_size")
    parser.add_argument("--padded-vocab", type=int, default=65024, help="ChatGLM2 padded_vocab_size")


def random_prompt(config, length: int, seed: int) -> np.ndarray:
    """int64 [1, length]: random plain-text ids, then [gMASK] <sop> as a ChatGLM-6B prompt ends."""
    rng = np.random.default_rng(seed)
    specials = {config.mask_token_id, config.gmask_token_id, config.bos_token_id, config.eos_token_id}
    high = min(specials) if min(specials) > 100 else config.vocab_size  # plain text ids sit below the specials
    body = [t for t in rng.integers(20, high, size=4 * length) if t not in specials][:length - 2]
    return np.concatenate([body, [config.gmask_token_id, config.bos_token_id]])[None].astype(np.int64)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return its JSON record."""
    # Kept whole: one measurement run read top to bottom, ending in the flat record it prints.
    args = parse_args(argv)
    from glm_ms.device import default_dtype, select_device
    device = select_device(args.device)
    args.dtype = args.dtype or default_dtype()
    if args.family == "chatglm2":
        return long_context(args, device)
    from glm_ms.decoding import graph_compilations
    from glm_ms.device import compiled_by_default

    t0 = time.perf_counter()
    model, config = load_model(args) if args.checkpoint else build_model(args)
    build_s = time.perf_counter() - t0
    loaded = {"rss_gb": round(current_rss_gb(), 2), "peak_rss_gb": round(peak_rss_gb(), 2), "s": round(build_s, 1)}
    if args.checkpoint:
        args.layers, args.hidden, args.heads = config.num_layers, config.hidden_size, config.num_attention_heads
        args.inner, args.vocab = config.inner_hidden_size, config.vocab_size

    prompt = random_prompt(config, args.prompt_len, args.seed)
    seq = prompt.shape[1]

    c0 = graph_compilations(model)
    t1 = time.perf_counter()
    timed_stream(model, prompt, args.new_tokens, stop_after=args.warmup_tokens or None)
    first_s = time.perf_counter() - t1
    c1 = graph_compilations(model)
    prefill_s, steps = timed_stream(model, prompt, args.new_tokens)
    c2 = graph_compilations(model)

    def at(position: int) -> float | None:
        """Median step time (ms) around the token at `position`."""
        k = position - seq  # step k feeds the token at cache slot seq + k
        window = steps[max(k - 8, 0):k + 9]  # median of 17 steps: one step is at the mercy of other processes
        return round(float(np.median(window)) * 1e3, 2) if 0 <= k < len(steps) else None

    generate_peak = peak_rss_gb()  # before the numpy buffers of the bound below
    eager_ms = None
    if args.eager_tokens:
        _, eager_steps = timed_stream(model, prompt, args.eager_tokens + 1, compiled=False)
        eager_ms = round(float(np.mean(eager_steps[1:] if len(eager_steps) > 1 else eager_steps)) * 1e3, 2)
    bound_ms, streamed_bytes = bandwidth_bound_ms(streamed_matrices(model))
    decode_ms = float(np.mean(steps)) * 1e3
    result = {
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "inner": args.inner,
                  "vocab": args.vocab},
        "dtype": args.dtype,
        "quantize": args.quantize,
        "quantize_embeddings": args.quantize_embeddings,
        "fast": args.fast,
        "decode_path": "compiled" if model.compiled_decode and compiled_by_default(model.compute_dtype) else "eager",
        "device": device,
        "prompt_len": int(seq),
        "new_tokens": args.new_tokens,
        "prefill_ms": round(prefill_s * 1e3, 2),
        "decode_ms_per_token": round(decode_ms, 2),
        "decode_ms_at": {p: at(p) for p in POSITIONS},
        "tokens_per_s": round(1e3 / decode_ms, 3),
        "compiles_first": c1 - c0,
        "compiles_second": c2 - c1,
        "peak_rss_gb": round(generate_peak, 2),
        "bandwidth_bound_ms_per_token": round(bound_ms, 2),
        "decode_vs_bound": round(decode_ms / bound_ms, 3),
        "weight_bytes_per_token": streamed_bytes,
        "eager_decode_ms_per_token": eager_ms,
        "first_generate_s": round(first_s, 2),
        "build_s": round(build_s, 2),
        "after_load": loaded,
        "checkpoint": args.checkpoint,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


# ----------------------------------------------------------------------------- long context (--family chatglm2)

SHORT_CONTEXT = 1000  # the "position 1k" the long prompt's decode speed is compared with
CONTEXT_STEPS = 24    # decode steps timed after each prefill; the first few (graph compiles) are left out
WARM_STEPS = 4


def build_chatglm2_model(args: argparse.Namespace) -> tuple:
    """A ChatGLM2-6B-32K-shaped model (rope_ratio 16, seq_length covering the run) with small random weights."""
    from glm_ms import ChatGLM2Config, ChatGLM2ForConditionalGeneration
    config = ChatGLM2Config(padded_vocab_size=args.padded_vocab, hidden_size=args.hidden, num_layers=args.layers,
                            num_attention_heads=args.heads, kv_channels=args.kv_channels,
                            multi_query_group_num=args.groups, ffn_hidden_size=args.ffn, rope_ratio=16,
                            seq_length=max(32768, args.prompt_len + CONTEXT_STEPS + 1))
    model = ChatGLM2ForConditionalGeneration(config, dtype=args.dtype)
    fill_random(model, args.seed)
    return model, config


def reset_peak_rss() -> bool:
    """Start a new resident-memory high-water mark (Linux: /proc/self/clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_gb() -> float:
    """The resident-memory high-water mark (VmHWM) in GiB: since `reset_peak_rss`, else since the start."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return peak_rss_gb()


def context_run(model, config, length: int, seed: int) -> dict:
    """Prefill a random prompt of `length` tokens once, decode CONTEXT_STEPS tokens: times and memory."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(20, min(config.padded_vocab_size, 64000), size=(1, length)).astype(np.int64)
    import gc
    gc.collect()
    rss_before = current_rss_gb()
    tracked = reset_peak_rss()
    start = time.perf_counter()
    prefill_s, steps = timed_stream(model, prompt, CONTEXT_STEPS)
    weights = sum(p.nbytes for p in model.weight_parameters().values())
    capacity = model.attention_layers()[0].kv_cache.capacity
    kv = sum(a.kv_cache.key.nbytes + a.kv_cache.value.nbytes for a in model.attention_layers())
    peak = peak_rss_since_reset_gb() if tracked else peak_rss_gb()
    return {"prompt_len": length, "prefill_s": round(prefill_s, 2), "total_s": round(time.perf_counter() - start, 2),
            "decode_ms_per_token": round(float(np.median(steps[WARM_STEPS:])) * 1e3, 2),
            "cache_capacity": int(capacity), "rss_before_gb": round(rss_before, 2), "peak_rss_gb": round(peak, 2),
            "weights_gb": round(weights / 2**30, 3), "kv_cache_gb": round(kv / 2**30, 3),
            "peak_over_weights_and_kv_gb": round(peak - (weights + kv) / 2**30, 2),
            "peak_tracked_per_run": tracked}


def long_context(args: argparse.Namespace, device: str) -> dict:
    """The --family chatglm2 measurement: position SHORT_CONTEXT, then --prompt-len; prints one JSON record."""
    from glm_ms.decoding import PREFILL_CHUNK
    t0 = time.perf_counter()
    model, config = build_chatglm2_model(args)
    build_s = time.perf_counter() - t0
    short = context_run(model, config, SHORT_CONTEXT, args.seed)
    long = context_run(model, config, args.prompt_len, args.seed + 1)
    result = {
        "family": "chatglm2",
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "groups": args.groups,
                  "kv_channels": args.kv_channels, "ffn": args.ffn, "vocab": args.padded_vocab},
        "dtype": args.dtype, "device": device, "prefill_chunk": PREFILL_CHUNK,
        "short": short, "long": long,
        "decode_long_vs_short": round(long["decode_ms_per_token"] / short["decode_ms_per_token"], 3),
        "build_s": round(build_s, 2), "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
