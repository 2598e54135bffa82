"""What every ChatGLM tokenizer shares: files, `encode`, argument checks, BatchEncoding (sentencepiece only)."""
import inspect
import json
import os
import re
import shutil

import numpy as np

from ..errors import NotFoundError, TokenizerError

CONFIG_FILE = "tokenizer_config.json"
_SURROGATE = re.compile("[\ud800-\udfff]")


def checked_text(text: str) -> str:
    """`text` itself, if it is a str that UTF-8 can hold; a lone surrogate (half an emoji) is a TokenizerError."""
    if not isinstance(text, str):
        raise TokenizerError(f"expected text (str), got {type(text).__name__}")
    bad = _SURROGATE.search(text)
    if bad:
        raise TokenizerError(f"text contains a lone surrogate U+{ord(bad.group()):04X} at index {bad.start()} "
                             "(half of a UTF-16 pair, not a character); fix the text's encoding")
    return text


class BatchEncoding(dict):
    """Dict of model inputs that also allows attribute access (`enc.input_ids`), like HF's BatchEncoding."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def clean_up_tokenization(text: str) -> str:
    """transformers' PreTrainedTokenizerBase.clean_up_tokenization, verbatim."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


class TokenizerBase:
    """What every ChatGLM tokenizer shares: its files (sentencepiece model + tokenizer_config.json), `encode` on top
    of the family's `tokenize` / `build_inputs_with_special_tokens`, and the checks of `__call__`'s arguments."""

    vocab_file_name = ""  # the family's sentencepiece file
    config_required = True  # ChatGLM2/3 folders may lack tokenizer_config.json; ChatGLM-6B needs num_image_tokens

    @classmethod
    def from_pretrained(cls, folder, mirror=None, revision="master", cache_dir=None, endpoint=None, **overrides):
        """Load from a folder holding the sentencepiece model and `tokenizer_config.json`, or from a model id with
        `mirror="modelscope"` (only the tokenizer files are fetched, once); keyword overrides win."""
        from ..hub.resolve import resolve_tokenizer_folder
        folder = os.fspath(resolve_tokenizer_folder(folder, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                                    endpoint=endpoint))
        vocab_file = os.path.join(folder, cls.vocab_file_name)
        config_file = os.path.join(folder, CONFIG_FILE)
        for path in (vocab_file, config_file) if cls.config_required else (vocab_file,):
            if not os.path.isfile(path):
                raise NotFoundError(f"tokenizer file not found: {path}")
        config = {}
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "vocab_file"}
        unknown = set(overrides) - params
        if unknown:
            raise TypeError(f"unknown tokenizer option(s): {sorted(unknown)}")
        kwargs = {k: v for k, v in config.items() if k in params}
        kwargs.update(overrides)
        tokenizer = cls(vocab_file, **kwargs)
        tokenizer.name_or_path = folder
        # Keep keys we do not use (auto_map, tokenizer_class, ...) so save_pretrained writes them back.
        tokenizer._extra_config = {k: v for k, v in config.items() if k not in params}
        return tokenizer

    def save_pretrained(self, folder):
        """Write the sentencepiece model and `tokenizer_config.json` into `folder`; returns the written paths."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        vocab_out = os.path.join(folder, self.vocab_file_name)
        if not (os.path.exists(vocab_out) and os.path.samefile(vocab_out, self.vocab_file)):
            shutil.copyfile(self.vocab_file, vocab_out)
        config = dict(self._extra_config)
        config.update(self._init_config())
        config.setdefault("tokenizer_class", "ChatGLMTokenizer")  # the class name upstream's remote code uses
        config_out = os.path.join(folder, CONFIG_FILE)
        with open(config_out, "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
            f.write("\n")
        return vocab_out, config_out

    def encode(self, text, add_special_tokens=True):
        """Text → ids, with the family's special tokens (`[gMASK] <sop>` after, or `[gMASK] sop` before) unless
        add_special_tokens=False."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    @staticmethod
    def _call_texts(text, return_tensors):
        """(batched, list of str) for `__call__`'s input; other types and return_tensors are clear errors."""
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected str or a list of str, got an element of type {type(t).__name__}")
        if return_tensors not in (None, "np"):
            raise TokenizerError(f"return_tensors must be None or 'np' (numpy only), got {return_tensors!r}")
        return batched, texts

    def _check_id(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token ids must be integers, got {i!r}")
        return int(i)

    def _as_id_list(self, ids) -> list[int]:
        """One sequence of ids (int, list, numpy array, framework tensor) as a checked list of ints."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return [self._check_id(ids)]
        if not isinstance(ids, (list, tuple)):
            if hasattr(ids, "asnumpy"):  # a framework tensor, without importing the framework
                ids = ids.asnumpy()
            arr = np.asarray(ids)
            if arr.ndim > 1:
                raise TokenizerError(f"expected one sequence of ids, got an array of shape {arr.shape}; use batch_decode")
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
            ids = arr.reshape(-1).tolist()
        return [self._check_id(i) for i in ids]
