"""The public classes: the model with generation and chat, the tokenizer, and MindNLP-style Auto aliases.

`ChatGLMForConditionalGeneration.from_pretrained` and `AutoTokenizer.from_pretrained` look at the folder's
config.json and return ChatGLM-6B, ChatGLM2-6B or ChatGLM3-6B classes accordingly (`family=` overrides).
"""
from .chat import ChatMixin
from .chat_glm2 import ChatGLM2ChatMixin, ChatGLM3ChatMixin
from .generation import GenerationMixin
from .models.chatglm import ChatGLMCausalLM
from .models.chatglm2 import ChatGLM2CausalLM


class ChatGLMForConditionalGeneration(ChatMixin, GenerationMixin, ChatGLMCausalLM):
    """ChatGLM-6B with `generate`, `stream_generate`, `chat`, `stream_chat` and `from_pretrained`."""

    @classmethod
    def from_pretrained(cls, path_or_id, dtype=None, mirror=None, revision="master", cache_dir=None, endpoint=None,
                        **kwargs):
        """Load a glm-ms-convert folder, a MindNLP MindSpore-checkpoint folder, an upstream folder (torch or
        safetensors shards, read in place) or a model id with `mirror="modelscope"` (downloaded and converted
        once into the cache; later calls make no request). `cache_dir` defaults to $GLM_MS_CACHE, else
        ~/.cache/glm_ms; `endpoint` to $MODELSCOPE_ENDPOINT, else https://modelscope.cn."""
        family = kwargs.pop("family", None)
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        from .families import detect
        from .hub.resolve import resolve_model
        weights = resolve_model(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                endpoint=endpoint)
        found = detect(weights.path, family=family)
        return found.family.load("model").from_folder(weights, dtype=dtype, config=found.config)


class _FamilyLoader:
    """`from_pretrained` of the ChatGLM2/3 classes: the class, not the folder, decides the generation."""

    family = None

    @classmethod
    def from_pretrained(cls, path_or_id, dtype=None, mirror=None, revision="master", cache_dir=None, endpoint=None):
        """As `ChatGLMForConditionalGeneration.from_pretrained`, loaded as this class's generation."""
        from .families import detect
        from .hub.resolve import resolve_model
        weights = resolve_model(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                endpoint=endpoint)
        return cls.from_folder(weights, dtype=dtype, config=detect(weights.path, family=cls.family).config)


class ChatGLM2ForConditionalGeneration(_FamilyLoader, ChatGLM2ChatMixin, GenerationMixin, ChatGLM2CausalLM):
    """ChatGLM2-6B with `generate`, `stream_generate`, `chat`, `stream_chat` (history: (query, response) pairs)."""

    family = "chatglm2"


class ChatGLM3ForConditionalGeneration(_FamilyLoader, ChatGLM3ChatMixin, GenerationMixin, ChatGLM2CausalLM):
    """ChatGLM3-6B with `generate`, `stream_generate`, `chat`, `stream_chat` (history: role messages, tools)."""

    family = "chatglm3"



class AutoTokenizer:
    """`from_pretrained` returns the tokenizer of the folder's family (ChatGLM-6B, ChatGLM2-6B or ChatGLM3-6B)."""

    @staticmethod
    def from_pretrained(path_or_id, mirror=None, revision="master", cache_dir=None, endpoint=None, family=None,
                        **options):
        """A local folder, or a model id with `mirror="modelscope"`; other keywords go to the tokenizer."""
        from .families import tokenizer_family
        from .hub.resolve import resolve_tokenizer_folder
        folder = resolve_tokenizer_folder(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                          endpoint=endpoint)
        return tokenizer_family(folder, family).load("tokenizer").from_pretrained(folder, **options)


AutoModelForSeq2SeqLM = ChatGLMForConditionalGeneration
AutoModel = ChatGLMForConditionalGeneration
