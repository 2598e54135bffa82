"""The public classes: the model with generation and chat, the tokenizer, and MindNLP-style Auto aliases."""
from .chat import ChatMixin
from .generation import GenerationMixin
from .model import ChatGLMCausalLM
from .tokenizer import ChatGLMTokenizer


class ChatGLMForConditionalGeneration(ChatMixin, GenerationMixin, ChatGLMCausalLM):
    """ChatGLM-6B with `generate`, `stream_generate`, `chat`, `stream_chat` and `from_pretrained`."""

    @classmethod
    def from_pretrained(cls, path_or_id, dtype=None, mirror=None, revision="master", cache_dir=None, endpoint=None,
                        **kwargs):
        """Load a glm-ms-convert folder, a MindNLP MindSpore-checkpoint folder, an upstream folder (torch or
        safetensors shards, read in place) or a model id with `mirror="modelscope"` (downloaded and converted
        once into the cache; later calls make no request). `cache_dir` defaults to $GLM_MS_CACHE, else
        ~/.cache/glm_ms; `endpoint` to $MODELSCOPE_ENDPOINT, else https://modelscope.cn."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        from .convert.hub import resolve_model_folder
        folder = resolve_model_folder(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                      endpoint=endpoint)
        return cls.from_folder(folder, dtype=dtype)


AutoModelForSeq2SeqLM = ChatGLMForConditionalGeneration
AutoModel = ChatGLMForConditionalGeneration
AutoTokenizer = ChatGLMTokenizer
