"""Model loading for the web page and the terminal chat: `--model` (folder, model id or `demo`) → (model, tokenizer).

The one place that decides which classes load a `--model`; other model families plug in here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from . import families

DEMO = "demo"
DEMO_MODEL_DIR = Path(__file__).with_name("demo_model")
DEMO_NOTE = ("Demo model: a tiny ChatGLM-6B with random weights, bundled so glm_ms runs offline. "
             "It talks nonsense; it exists to show the pipeline (tokenizer → MindSpore model → streaming → page). "
             "For real answers start with --model ZhipuAI/ChatGLM-6B --mirror modelscope, or a local folder.")
MIRRORS = ("modelscope",)
DTYPES = ("float16", "float32")


def is_demo(model) -> bool:
    """True when `model` names the bundled random-weight demo model."""
    return str(model) == DEMO


def load_model(model, mirror: str | None = None, dtype: str | None = None, revision: str | None = None,
               cache_dir=None, adapter=None, quantize: int | None = None, quantize_embeddings: bool = False,
               fast: bool = False) -> tuple:
    """Load (model, tokenizer) from a local folder, a model id (with `mirror`) or `demo`.

    The mirror, adapter and quantization keywords are passed on only when given, so a local folder loads without
    any hub code. `adapter`: a LoRA or P-tuning v2 folder (or model id, from the same mirror) applied to it;
    `quantize` (8 or 4), `quantize_embeddings`, `fast`: see `AutoModel.from_pretrained`.
    """
    from .api import AutoModel, AutoTokenizer
    source = str(DEMO_MODEL_DIR) if is_demo(model) else os.fspath(model)
    hub = {key: value for key, value in (("mirror", mirror), ("revision", revision), ("cache_dir", cache_dir))
           if value is not None}
    extras = {key: value for key, value in (("adapter", adapter), ("quantize", quantize),
              ("quantize_embeddings", quantize_embeddings), ("fast", fast)) if value}
    lm = AutoModel.from_pretrained(source, dtype=dtype, **hub, **extras)
    lm.set_train(False)
    tokenizer = AutoTokenizer.from_pretrained(source, **hub)
    return lm, tokenizer


def chat_defaults(model) -> dict:
    """The family's own chat defaults {max_length, top_p, temperature} (its row of glm_ms.families)."""
    return dataclasses.asdict(families.get(model.config.family).chat)


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model-choice flags shared by `glm-ms-web` and `glm-ms-chat`."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEMO, metavar="PATH_OR_ID",
                       help="local folder, model id (e.g. ZhipuAI/ChatGLM-6B, with --mirror) or 'demo' "
                            "(bundled random-weight model that talks nonsense; default)")
    group.add_argument("--mirror", choices=MIRRORS, default=None, help="download a model id from this mirror")
    group.add_argument("--revision", default=None, help="model revision on the mirror (default: master)")
    group.add_argument("--cache-dir", default=None, help="download cache folder for model ids")
    group.add_argument("--dtype", choices=DTYPES, default=None,
                       help="weights/compute dtype (default: float16 on Ascend, float32 on CPU)")
    group.add_argument("--adapter", default=None, metavar="PATH_OR_ID",
                       help="a fine-tuning of --model: a peft LoRA folder (merged into the weights) or a P-tuning v2 "
                            "checkpoint folder (its prefix); a model id comes from --mirror too")
    group.add_argument("--device", choices=("CPU", "Ascend"), default=None,
                       help="MindSpore device (default: $GLM_MS_DEVICE, else Ascend when present, else CPU)")
    group.add_argument("--device-id", type=int, default=None, metavar="N",
                       help="which NPU on Ascend (default: $DEVICE_ID, else 0)")
    add_quantization_arguments(parser)
    return parser


def add_quantization_arguments(parser: argparse.ArgumentParser) -> None:
    """--quantize, --quantize-embeddings and --fast (weight-only int8/int4; README, Quantization)."""
    group = parser.add_argument_group(
        "quantization", "weight-only int8/int4 (README: Quantization): the weights of a 6B model take about half "
        "(int8) or a third (int4) of float16's memory; upstream's -int8/-int4 checkpoints load quantized without "
        "these flags")
    group.add_argument("--quantize", type=int, choices=(8, 4), default=None,
                       help="quantize the attention and MLP weights to int8 or int4 while loading, with the "
                            "arithmetic of upstream's published int checkpoints (default: as stored)")
    group.add_argument("--quantize-embeddings", action="store_true",
                       help="also quantize the word embeddings and output layer (needs --quantize or an int "
                            "checkpoint)")
    group.add_argument("--fast", action="store_true",
                       help="CPU: integer dot products on activations rounded to int16 per row (columns with "
                            "outliers stay float32): faster, with results slightly off upstream's exact float32 "
                            "arithmetic (needs --quantize or an int checkpoint)")


def load_from_args(args: argparse.Namespace) -> tuple:
    """`load_model` driven by the flags of `add_model_arguments`."""
    device_id = getattr(args, "device_id", None)
    if args.device or device_id is not None:
        from .device import select_device
        select_device(args.device, device_id)
    return load_model(args.model, mirror=args.mirror, dtype=args.dtype, revision=args.revision,
                      cache_dir=args.cache_dir, adapter=args.adapter, quantize=args.quantize,
                      quantize_embeddings=args.quantize_embeddings, fast=args.fast)


def response_text(response: str | dict) -> str:
    """A reply as text for display: ChatGLM3 tool calls ({name, parameters|content}) become `name: …` lines."""
    if isinstance(response, dict):
        body = response.get("parameters", response.get("content", ""))
        body = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        return f"{response.get('name', '')}: {body}"
    return response
