"""Write a ChatGLM-6B-shaped checkpoint with random float16 weights (13.7 GB), laid out like the real one.

Same tensor names, shapes, dtype, shard split and `pytorch_model.bin.index.json` as the published
repository (taken from `tests/fixtures/chatglm-6b-real-manifest/`), the real `config.json` and
`tokenizer_config.json`, and a stand-in `ice_text.model` (the tiny fixture's: enough for tokenizer
plumbing, not the real vocabulary). Shards are torch zip files written without torch, one tensor at a
time, so memory stays at one chunk of random numbers however large the shard.

    python3 scripts/make_synthetic_checkpoint.py /tmp/chatglm-6b-synthetic
"""
import argparse
import json
import os
import re
import shutil
import sys
import time
import zipfile
import zlib

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tests.torchfile import PickleBuilder, aligned_info  # noqa: E402  (the torch-format writer the tests use)

MANIFEST = os.path.join(ROOT, "tests", "fixtures", "chatglm-6b-real-manifest")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tiny-chatglm-6b", "ice_text.model")
CHUNK = 1 << 24  # random numbers generated per write (64 MiB of float32)


def tensor_shape(name, config):
    """Shape of a ChatGLM-6B checkpoint tensor, from its name and config.json."""
    h, inner, vocab = config["hidden_size"], config["inner_hidden_size"], config["vocab_size"]
    head_dim = h // config["num_attention_heads"]
    base = re.sub(r"^transformer\.layers\.\d+\.", "", name)
    shapes = {
        "lm_head.weight": (vocab, h), "transformer.word_embeddings.weight": (vocab, h),
        "transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,),
        "input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
        "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
        "attention.query_key_value.weight": (3 * h, h), "attention.query_key_value.bias": (3 * h,),
        "attention.dense.weight": (h, h), "attention.dense.bias": (h,),
        # upstream's RotaryEmbedding(head_dim // 2) keeps inv_freq over every other of those dims
        "attention.rotary_emb.inv_freq": (head_dim // 4,),
        "mlp.dense_h_to_4h.weight": (inner, h), "mlp.dense_h_to_4h.bias": (inner,),
        "mlp.dense_4h_to_h.weight": (h, inner), "mlp.dense_4h_to_h.bias": (h,),
    }
    if base not in shapes:
        raise KeyError(f"unknown ChatGLM-6B tensor {name!r}")
    return shapes[base]


def tensor_chunks(name, shape, seed, std):
    """float16 values of one tensor, as byte chunks (deterministic per name; lm_head equals the embeddings)."""
    if name.endswith("inv_freq"):
        dim = 2 * shape[0]  # the values upstream stores: its own formula, in float16
        yield (1.0 / (10000 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float16).tobytes()
        return
    source = "transformer.word_embeddings.weight" if name == "lm_head.weight" else name
    rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
    total = int(np.prod(shape))
    offset = 1.0 if name.endswith("layernorm.weight") else 0.0
    for start in range(0, total, CHUNK):
        n = min(CHUNK, total - start)
        values = rng.standard_normal(n, dtype=np.float32)
        values *= np.float32(std)
        values += np.float32(offset)
        yield values.astype(np.float16).tobytes()


def write_shard(path, names, config, seed, std):
    """One torch zip shard: data.pkl first (it only needs names and shapes), then each storage streamed."""
    archive = os.path.basename(path)[:-4]
    shapes = [tensor_shape(n, config) for n in names]
    pkl = PickleBuilder(2)
    pkl.ordered_dict().mark()
    for key, (name, shape) in enumerate(zip(names, shapes)):
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        pkl.str_(name).rebuild_tensor_v2("HalfStorage", str(key), int(np.prod(shape)), 0, shape, stride)
    pkl.setitems()
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_STORED) as zf:
        for entry, data in (("data.pkl", pkl.stop()), (".format_version", b"1"), (".storage_alignment", b"64"),
                            ("byteorder", b"little")):
            zf.writestr(aligned_info(zf, f"{archive}/{entry}"), data)
        for key, (name, shape) in enumerate(zip(names, shapes)):
            info = aligned_info(zf, f"{archive}/data/{key}")
            info.file_size = int(np.prod(shape)) * 2
            with zf.open(info, "w") as out:
                for chunk in tensor_chunks(name, shape, seed, std):
                    out.write(chunk)
        zf.writestr(aligned_info(zf, f"{archive}/version"), b"3\n")
        zf.writestr(aligned_info(zf, f"{archive}/.data/serialization_id"), b"0" * 40)
    os.replace(path + ".tmp", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write (created)")
    parser.add_argument("--manifest", default=MANIFEST, help="folder with the real index, config and tokenizer config")
    parser.add_argument("--tokenizer-model", default=TOKENIZER, help="ice_text.model to copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--std", type=float, default=0.02, help="standard deviation of the random weights")
    args = parser.parse_args(argv)

    with open(os.path.join(args.manifest, "pytorch_model.bin.index.json"), encoding="utf-8") as f:
        index = json.load(f)
    with open(os.path.join(args.manifest, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    shards = {}
    for name, shard in index["weight_map"].items():
        shards.setdefault(shard, []).append(name)
    total = sum(int(np.prod(tensor_shape(n, config))) * 2 for n in index["weight_map"])
    # The published index's total_size (13,744,473,856) is stale: the published shards hold 13.417 GB with the
    # pickles, which is what these shapes give. Compare with the published file sizes instead, if listed.
    published = {}
    listing = os.path.join(args.manifest, "files.json")
    if os.path.isfile(listing):
        with open(listing, encoding="utf-8") as f:
            published = {e["path"]: e["size"] for e in json.load(f)["files"]}
    start = time.perf_counter()
    for k, shard in enumerate(sorted(shards), 1):
        write_shard(os.path.join(args.out, shard), shards[shard], config, args.seed, args.std)
        size = os.path.getsize(os.path.join(args.out, shard))
        real = f" (published: {published[shard]:,} bytes)" if shard in published else ""
        print(f"[{k}/{len(shards)}] {shard}: {len(shards[shard])} tensors, {size:,} bytes{real}, "
              f"{time.perf_counter() - start:.0f}s", flush=True)
    for name in ("pytorch_model.bin.index.json", "config.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.manifest, name), os.path.join(args.out, name))
    shutil.copy(args.tokenizer_model, os.path.join(args.out, "ice_text.model"))
    print(f"wrote {total / 1e9:.2f} GB of float16 weights to {args.out}")


if __name__ == "__main__":
    main()
