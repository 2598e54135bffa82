"""The public classes: each family's model (network + generation + chat), and MindNLP-style Auto entry points.

`from_pretrained` reads the folder's config.json once (glm_ms.families) and builds the model class of the family
found there; the ChatGLM2/3 classes load their own generation (`family=` overrides the detection).
"""
from __future__ import annotations

import os
from pathlib import Path

from .adapters import resolve_adapter
from .adapters.lora import is_lora
from .chat import ChatGLM2Chat, ChatGLM3Chat, ChatGLMChat
from .errors import ConfigError
from .families import detect, tokenizer_family
from .generation import GenerationMixin
from .hub.resolve import resolve_model, resolve_tokenizer_folder
from .models.chatglm import ChatGLMCausalLM
from .models.chatglm2 import ChatGLM2CausalLM


class _FromPretrained:
    """`from_pretrained` shared by every public model class."""

    family: str | None = None  # None: the folder's config.json decides

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, dtype: str | None = None, mirror: str | None = None,
                        revision: str = "master", cache_dir: str | os.PathLike | None = None,
                        endpoint: str | None = None, family: str | None = None, adapter: str | os.PathLike | None = None,
                        adapter_revision: str = "master", quantize: int | None = None,
                        quantize_embeddings: bool = False, fast: bool = False, **unexpected):
        """Load a glm-ms-convert folder, a MindNLP MindSpore-checkpoint folder, an upstream folder (torch or
        safetensors shards, read in place) or a model id with `mirror="modelscope"` (downloaded and converted
        once into the cache; later calls make no request). `cache_dir` defaults to $GLM_MS_CACHE, else
        ~/.cache/glm_ms; `endpoint` to $MODELSCOPE_ENDPOINT, else https://modelscope.cn.

        `adapter`: a fine-tuning of that base — a peft LoRA folder (merged into the weights) or a P-tuning v2
        checkpoint (its prefix), local or a model id fetched from the same mirror at `adapter_revision`.
        `quantize` 8 or 4 quantizes the weights to int8/int4 as they are read (upstream's int checkpoints load
        quantized without it); `quantize_embeddings` also the embeddings and output layer; `fast` computes
        with the CPU kernels' integer dot products (see README, Quantization); a LoRA is merged first."""
        if unexpected:  # upstream habits such as trust_remote_code=True: there is no remote code to trust
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unexpected))}")
        if adapter is not None:  # first: a bad adapter fails before the base is downloaded or built
            adapter = resolve_adapter(adapter, mirror=mirror, revision=adapter_revision, cache_dir=cache_dir,
                                      endpoint=endpoint)
        if is_lora(Path(os.fspath(path_or_id)).expanduser()):
            raise ConfigError(f"{path_or_id}: is a LoRA adapter, not a model: load its base model with "
                              f"adapter={str(path_or_id)!r}")
        weights = resolve_model(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir, endpoint=endpoint)
        found = detect(weights.path, family=family or cls.family)
        return found.family.load("model").from_folder(weights, dtype=dtype, config=found.config, adapter=adapter,
                                                      quantize=quantize, quantize_embeddings=quantize_embeddings,
                                                      fast=fast)


class ChatGLMForConditionalGeneration(_FromPretrained, ChatGLMChat, GenerationMixin, ChatGLMCausalLM):
    """ChatGLM-6B with `generate`, `stream_generate`, `chat`, `stream_chat` and `from_pretrained`.

    Upstream names the model class of every generation so: its `from_pretrained` loads whichever family the
    folder holds, as `AutoModel` does.
    """


class ChatGLM2ForConditionalGeneration(_FromPretrained, ChatGLM2Chat, GenerationMixin, ChatGLM2CausalLM):
    """ChatGLM2-6B with `generate`, `stream_generate`, `chat`, `stream_chat` (history: (query, response) pairs)."""

    family = "chatglm2"


class ChatGLM3ForConditionalGeneration(_FromPretrained, ChatGLM3Chat, GenerationMixin, ChatGLM2CausalLM):
    """ChatGLM3-6B with `generate`, `stream_generate`, `chat`, `stream_chat` (history: role messages, tools)."""

    family = "chatglm3"


class AutoModel(_FromPretrained):
    """`from_pretrained` returns the model class of the folder's family (ChatGLM-6B, ChatGLM2-6B or ChatGLM3-6B)."""


AutoModelForSeq2SeqLM = AutoModel


class AutoTokenizer:
    """`from_pretrained` returns the tokenizer of the folder's family (ChatGLM-6B, ChatGLM2-6B or ChatGLM3-6B)."""

    @staticmethod
    def from_pretrained(path_or_id: str | os.PathLike, mirror: str | None = None, revision: str = "master",
                        cache_dir: str | os.PathLike | None = None, endpoint: str | None = None,
                        family: str | None = None, **options):
        """A local folder, or a model id with `mirror="modelscope"`; other keywords go to the tokenizer."""
        folder = resolve_tokenizer_folder(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                          endpoint=endpoint)
        return tokenizer_family(folder, family).load("tokenizer").from_pretrained(folder, **options)
