"""glm_ms: ChatGLM-6B on MindSpore (Ascend NPUs first, CPU for development).

Importing the package is cheap; MindSpore loads when a model class is first used.
"""
__version__ = "0.1.0"

_PUBLIC = {
    "ChatGLMForConditionalGeneration": "api",
    "ChatGLM2ForConditionalGeneration": "api",
    "ChatGLM3ForConditionalGeneration": "api",
    "AutoModelForSeq2SeqLM": "api",
    "AutoModel": "api",
    "AutoTokenizer": "api",
    "ChatGLMTokenizer": "tokenizers.chatglm",
    "ChatGLM2Tokenizer": "tokenizers.chatglm2",
    "ChatGLM3Tokenizer": "tokenizers.chatglm2",
    "ChatGLMConfig": "config",
    "ChatGLM2Config": "config",
    "GlmMsError": "errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'glm_ms' has no attribute {name!r}")
