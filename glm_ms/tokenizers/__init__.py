"""The ChatGLM tokenizers on sentencepiece alone (no mindspore, torch or transformers)."""
