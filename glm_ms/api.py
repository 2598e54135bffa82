"""The public classes: the model with generation and chat, the tokenizer, and MindNLP-style Auto aliases."""
from .chat import ChatMixin
from .generation import GenerationMixin
from .model import ChatGLMCausalLM
from .tokenizer import ChatGLMTokenizer


class ChatGLMForConditionalGeneration(ChatMixin, GenerationMixin, ChatGLMCausalLM):
    """ChatGLM-6B with `generate`, `stream_generate`, `chat`, `stream_chat` and `from_pretrained`."""

    @classmethod
    def from_pretrained(cls, path, dtype=None, **kwargs):
        """Load from a local folder in the upstream layout (config.json + torch or safetensors shards)."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        return cls.from_folder(path, dtype=dtype)


AutoModelForSeq2SeqLM = ChatGLMForConditionalGeneration
AutoModel = ChatGLMForConditionalGeneration
AutoTokenizer = ChatGLMTokenizer
