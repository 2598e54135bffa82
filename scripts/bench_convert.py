#!/usr/bin/env python3
"""Converter benchmark: peak RSS and throughput on a generated ChatGLM-6B-shaped torch checkpoint.

The checkpoint has the real names (28-layer layout scaled down: fewer layers, smaller hidden size and
vocabulary), float16 weights, and is sharded the way transformers shards (tensors in state-dict order,
a new shard when the next tensor would pass --shard-mb), written without torch by tests/torchfile.py.
The conversion runs in a fresh child process, so its ru_maxrss is the converter's own:

    python3 scripts/bench_convert.py                     # ~3 shards of ~100 MB
    python3 scripts/bench_convert.py --shard-mb 40 --shards 3 --dtype float32

Prints one JSON object: peak_rss_mb (child high-water mark), baseline_rss_mb (the same child after its
imports, before converting), conversion_rss_mb (peak - baseline), largest_shard_mb, largest_tensor_mb,
total_mb, seconds, mb_per_s (source MB per second), mindspore_import_rss_mb (what `import mindspore`
alone costs a fresh process; the converter does not import it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

MB = 1 << 20

CHILD = r"""
import json, resource, sys, time
from glm_ms.convert.driver import convert_checkpoint
import safetensors, tqdm.auto  # everything the conversion imports, before the baseline is taken
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
baseline = rss_mb()
t = time.perf_counter()
convert_checkpoint(sys.argv[1], sys.argv[2], dtype=sys.argv[3], progress=False)
seconds = time.perf_counter() - t
print(json.dumps({"baseline_rss_mb": baseline, "peak_rss_mb": rss_mb(), "seconds": seconds}))
"""


def layer_shapes(hidden: int, inner: int):
    """Per-layer upstream names and shapes of ChatGLM-6B, in the state-dict order upstream saves them."""
    return [
        ("input_layernorm.weight", (hidden,)), ("input_layernorm.bias", (hidden,)),
        ("attention.rotary_emb.inv_freq", (32,)),  # head_dim 128 → 32
        ("attention.query_key_value.weight", (3 * hidden, hidden)), ("attention.query_key_value.bias", (3 * hidden,)),
        ("attention.dense.weight", (hidden, hidden)), ("attention.dense.bias", (hidden,)),
        ("post_attention_layernorm.weight", (hidden,)), ("post_attention_layernorm.bias", (hidden,)),
        ("mlp.dense_h_to_4h.weight", (inner, hidden)), ("mlp.dense_h_to_4h.bias", (inner,)),
        ("mlp.dense_4h_to_h.weight", (hidden, inner)), ("mlp.dense_4h_to_h.bias", (hidden,)),
    ]


def auto_hidden(shard_mb: float) -> int:
    """Hidden size that keeps ChatGLM-6B's proportions: the embedding is ~5.5 blocks and ~60% of shard 1."""
    block = 0.6 * shard_mb * MB / 5.5  # bytes of one fp16 block = 24 * hidden^2
    return max(int((block / 24) ** 0.5) // 128 * 128, 128)


def plan(shard_mb: float, shards: int, hidden: int | None = None):
    """(config, [(name, shape)]) with ChatGLM-6B's proportions, about `shards` shards of `shard_mb` MB."""
    hidden = hidden or auto_hidden(shard_mb)
    inner = 4 * hidden
    heads = max(hidden // 128, 1)
    per_layer = 12 * hidden * hidden * 2  # bytes of one block in fp16 (biases are noise)
    # Real ChatGLM-6B: embeddings ~ 5.5 blocks each (130528 x 4096 vs 12 x 4096^2). Keep that ratio.
    vocab = max(int(5.5 * 12 * hidden) // 8 * 8, 1024)
    embed = vocab * hidden * 2
    total = shard_mb * MB * shards
    layers = max(int((total - 2 * embed) // per_layer), 1)
    config = {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "vocab_size": vocab, "hidden_size": hidden,
        "inner_hidden_size": inner, "num_layers": layers, "num_attention_heads": heads,
        "bos_token_id": 4, "eos_token_id": 5, "mask_token_id": 1, "gmask_token_id": 2, "pad_token_id": 3,
        "max_sequence_length": 2048, "position_encoding_2d": True, "layernorm_epsilon": 1e-5,
        "torch_dtype": "float16",
    }
    names = [("transformer.word_embeddings.weight", (vocab, hidden))]
    for i in range(layers):
        names += [(f"transformer.layers.{i}.{n}", s) for n, s in layer_shapes(hidden, inner)]
    names += [("transformer.final_layernorm.weight", (hidden,)), ("transformer.final_layernorm.bias", (hidden,)),
              ("lm_head.weight", (vocab, hidden))]
    return config, names


def generate(folder: str, shard_mb: float, shards: int, hidden: int | None, seed: int = 0) -> dict:
    """Write the checkpoint one shard at a time (this process never holds more than one shard)."""
    import numpy as np
    from tests.torchfile import save_torch_file

    config, names = plan(shard_mb, shards, hidden)
    limit = shard_mb * MB
    groups, current, size = [], [], 0
    for name, shape in names:  # transformers' rule: start a new shard when this tensor would overflow
        nbytes = int(np.prod(shape)) * 2
        if current and size + nbytes > limit:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map, n = {}, len(groups)
    embedding = None
    for k, group in enumerate(groups, 1):
        shard = f"pytorch_model-{k:05d}-of-{n:05d}.bin"
        tensors = {}
        for name, shape in group:
            if name == "lm_head.weight" and embedding is not None:
                tensors[name] = embedding  # tied, as in the real checkpoint (equal copies)
                continue
            tensors[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
            if name == "transformer.word_embeddings.weight":
                embedding = tensors[name].copy()
        for name, _ in group:
            weight_map[name] = shard
        save_torch_file(os.path.join(folder, shard), tensors, archive_name=shard[:-4])
        del tensors
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(int(np.prod(s)) * 2 for _, s in names)},
                   "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return config


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def mindspore_import_mb() -> float | None:
    code = "import resource, mindspore; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env())
    try:
        return round(float(proc.stdout.strip().splitlines()[-1]), 1)
    except (ValueError, IndexError):
        return None


def run(shard_mb: float, shards: int, hidden: int | None, dtype: str, workdir: str | None, keep: bool,
        measure_mindspore: bool) -> dict:
    root = tempfile.mkdtemp(prefix="glm_ms-bench-", dir=workdir)
    try:
        src, out = os.path.join(root, "src"), os.path.join(root, "out")
        gen = subprocess.run([sys.executable, os.path.abspath(__file__), "--generate-only", src,
                              "--shard-mb", str(shard_mb), "--shards", str(shards)]
                             + (["--hidden", str(hidden)] if hidden else []),
                             env=_child_env(), capture_output=True, text=True)
        if gen.returncode:
            raise RuntimeError(f"generating the checkpoint failed:\n{gen.stderr}")
        sizes = {n: os.path.getsize(os.path.join(src, n)) for n in os.listdir(src) if n.endswith(".bin")}
        proc = subprocess.run([sys.executable, "-c", CHILD, src, out, dtype], env=_child_env(),
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"conversion failed:\n{proc.stderr}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
        total = sum(sizes.values())
        largest_tensor = config["vocab_size"] * config["hidden_size"] * 2
        result = {
            "shards": len(sizes),
            "num_layers": config["num_layers"], "hidden_size": config["hidden_size"],
            "vocab_size": config["vocab_size"], "dtype": dtype,
            "largest_shard_mb": round(max(sizes.values()) / MB, 1),
            "largest_tensor_mb": round(largest_tensor / MB, 1),
            "total_mb": round(total / MB, 1),
            "peak_rss_mb": round(child["peak_rss_mb"], 1),
            "baseline_rss_mb": round(child["baseline_rss_mb"], 1),
            "conversion_rss_mb": round(child["peak_rss_mb"] - child["baseline_rss_mb"], 1),
            "seconds": round(child["seconds"], 2),
            "mb_per_s": round(total / MB / child["seconds"], 1),
        }
        if measure_mindspore:
            result["mindspore_import_rss_mb"] = mindspore_import_mb()
        if keep:
            result["folder"] = root
        return result
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-mb", type=float, default=100.0, help="target source shard size (default 100)")
    parser.add_argument("--shards", type=int, default=3, help="about this many shards (default 3)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="hidden size of the scaled-down model (default: from --shard-mb, keeping "
                             "ChatGLM-6B's embedding/block/shard proportions)")
    parser.add_argument("--dtype", choices=("float16", "float32", "keep"), default="float16")
    parser.add_argument("--workdir", default=None, help="where the temporary folders go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the generated and converted folders")
    parser.add_argument("--no-mindspore", dest="mindspore", action="store_false",
                        help="skip measuring what `import mindspore` costs")
    parser.add_argument("--generate-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_only:
        generate(args.generate_only, args.shard_mb, args.shards, args.hidden)
        return 0
    print(json.dumps(run(args.shard_mb, args.shards, args.hidden, args.dtype, args.workdir, args.keep,
                         args.mindspore), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
