"""`glm-ms-convert`: upstream ChatGLM weights (a local folder or a ModelScope model id) → MindSpore safetensors."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
examples:
  glm-ms-convert --src ./chatglm-6b --out ./chatglm-6b-ms
  glm-ms-convert --model-id ZhipuAI/ChatGLM-6B --mirror modelscope --out ./chatglm-6b-ms
  glm-ms-convert --model-id ZhipuAI/ChatGLM-6B --mirror modelscope --revision v1.1.0 --out ./chatglm-6b-ms \\
                 --cache-dir /data/glm_ms --endpoint https://modelscope.cn
  glm-ms-convert --src ./chatglm-6b --out ./chatglm-6b-int4-ms --quantize 4

The output folder holds mindspore_model-0000k-of-0000n.safetensors (MindSpore's safetensors format:
mindspore.load_checkpoint(path, format="safetensors") reads each), mindspore_model.safetensors.index.json,
config.json, the tokenizer files and glm_ms_manifest.json (source, dtype, sha256 of every file).
Load it with ChatGLMForConditionalGeneration.from_pretrained(OUT) and ChatGLMTokenizer.from_pretrained(OUT).
Weight-only quantized checkpoints (THUDM's -int8/-int4, or --quantize) keep their int8 weights and float16
scales, as upstream stores them; with --quantize, config.json gets quantization_bit.

Work happens in OUT.tmp-glm_ms, renamed to OUT only when complete; an interrupted run resumes
from its finished shards when run again with the same arguments.
Environment: MODELSCOPE_ENDPOINT (mirror URL), GLM_MS_CACHE (download cache, default ~/.cache/glm_ms).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-ms-convert",
        description="Convert ChatGLM weights (PyTorch .bin or safetensors shards) into a folder of MindSpore "
                    "safetensors checkpoints, one shard in memory at a time.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("source (one of)")
    what = source.add_mutually_exclusive_group(required=True)
    what.add_argument("--src", metavar="DIR", help="local folder with config.json, tokenizer files and "
                                                   "pytorch_model*.bin or model*.safetensors (+ index)")
    what.add_argument("--model-id", metavar="OWNER/NAME", help="model id to download, e.g. ZhipuAI/ChatGLM-6B")
    source.add_argument("--mirror", choices=("modelscope",), default=None,
                        help="where --model-id is downloaded from (required with --model-id)")
    source.add_argument("--revision", default=None, help="revision (branch or tag) of --model-id "
                                                         "(default: master)")
    source.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="download cache (default: $GLM_MS_CACHE, else ~/.cache/glm_ms)")
    source.add_argument("--endpoint", metavar="URL", default=None,
                        help="mirror base URL (default: $MODELSCOPE_ENDPOINT, else https://modelscope.cn)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", required=True, help="output folder (created)")
    output.add_argument("--dtype", choices=("float16", "float32", "keep"), default="float16",
                        help="dtype of the floating-point weights written (default: float16, as published; "
                             "keep: each tensor's source dtype)")
    output.add_argument("--quantize", type=int, choices=(8, 4), default=None,
                        help="write the layers upstream quantizes as int8 or int4 weights with float16 scales "
                             "(the arithmetic of THUDM's published int8/int4 checkpoints)")
    output.add_argument("--quantize-embeddings", action="store_true",
                        help="with --quantize: the word embeddings and output layer too")
    output.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it holds something else (another conversion, other files)")
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    output.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return parser


def _convert(args: argparse.Namespace, progress: bool) -> Path:
    from .driver import convert_checkpoint

    options = {"dtype": args.dtype, "overwrite": args.overwrite, "progress": progress, "quantize": args.quantize,
               "quantize_embeddings": args.quantize_embeddings}
    if args.src:
        return convert_checkpoint(args.src, args.out, **options)
    from ..hub.modelscope import resolve_endpoint, snapshot_download

    revision = args.revision or "master"
    snapshot = snapshot_download(args.model_id, revision=revision, cache_dir=args.cache_dir, endpoint=args.endpoint,
                                 progress=progress)
    return convert_checkpoint(snapshot, args.out, **options, source={"model_id": args.model_id, "revision": revision,
                                                                    "endpoint": resolve_endpoint(args.endpoint)})


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns 0 on success, 1 on an expected error (one line on stderr), 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_id and args.mirror is None:
        parser.error("--model-id needs --mirror modelscope")
    if args.quantize_embeddings and args.quantize is None:
        parser.error("--quantize-embeddings needs --quantize 8 or 4")
    if args.src:
        stray = [flag for flag, value in (("--mirror", args.mirror), ("--revision", args.revision),
                                          ("--cache-dir", args.cache_dir), ("--endpoint", args.endpoint)) if value]
        if stray:
            parser.error(f"{', '.join(stray)} apply to --model-id, not --src")
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    from ..errors import GlmMsError
    from .converted import read_manifest

    try:
        out = _convert(args, args.progress and not args.quiet)
        manifest = read_manifest(out)
    except (GlmMsError, OSError) as exc:
        # Expected failures (bad or missing files, mirror errors, disk full): one clear line, no traceback.
        print(f"glm-ms-convert: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glm-ms-convert: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if not args.quiet:
        shards = sum(1 for name in manifest["files"] if name.endswith(".safetensors"))
        quantized = manifest.get("quantization")
        bits = f", int{quantized['quantization_bit']} weights" if quantized else ""
        print(f"{out}: {shards} shard(s), {manifest['dtype']}, family {manifest['family']}{bits}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
