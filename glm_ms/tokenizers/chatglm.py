"""ChatGLM-6B tokenizer on `sentencepiece` alone: a port of upstream `tokenization_chatglm.py` as run by transformers 4.33.

Two layers, as upstream:
- `SPTokenizer`: the sentencepiece model plus ChatGLM's whitespace tokens (`<n>`, `<|tab|>`, `<|blank_N|>`) and the
  image-token id offset.
- `ChatGLMTokenizer`: the HF `PreTrainedTokenizer` behaviour users rely on (special-token splitting, `[gMASK] <sop>`
  suffix, decode clean-up, left padding with prefix-LM masks and 2D position ids).

numpy and sentencepiece only: no mindspore, torch or transformers.
"""
import os
import re

import numpy as np
import sentencepiece as spm

from ..positions import position_ids_2d, prefix_lm_mask
from ..errors import NotFoundError, TokenizerError
from .base import BatchEncoding, TokenizerBase, checked_text, clean_up_tokenization

VOCAB_FILE = "ice_text.model"


class SPTokenizer:
    """sentencepiece model with ChatGLM's whitespace tokens; ids are sentencepiece ids + `num_image_tokens`."""

    def __init__(self, vocab_file, num_image_tokens=0, max_blank_length=80):
        vocab_file = os.fspath(vocab_file)
        if not os.path.isfile(vocab_file):
            raise NotFoundError(f"sentencepiece model not found: {vocab_file}")
        self.vocab_file = vocab_file
        self.num_image_tokens = int(num_image_tokens)
        if self.num_image_tokens < 0:
            raise TokenizerError(f"num_image_tokens must be >= 0, got {num_image_tokens}")
        self.max_blank_length = max_blank_length
        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(vocab_file)

    @staticmethod
    def get_blank_token(length):
        """The piece standing for `length` (>= 2) consecutive spaces."""
        return f"<|blank_{length}|>"

    @staticmethod
    def get_tab_token():
        """The piece standing for a tab."""
        return "<|tab|>"

    @property
    def num_text_tokens(self):
        """Pieces in the sentencepiece model."""
        return self.sp.vocab_size()

    @property
    def num_tokens(self):
        """Image tokens plus sentencepiece pieces: the model's vocabulary size."""
        return self.num_image_tokens + self.num_text_tokens

    def _encode_whitespaces(self, text):
        text = text.replace("\t", self.get_tab_token())
        # Longest run first, so 90 spaces become blank_80 + blank_10 rather than 45 x blank_2.
        for n in range(self.max_blank_length, 1, -1):
            text = text.replace(" " * n, self.get_blank_token(n))
        return text

    def _preprocess(self, text, linebreak=True, whitespaces=True):
        if linebreak:
            text = text.replace("\n", "<n>")
        if whitespaces:
            text = self._encode_whitespaces(text)
        return text

    def postprocess(self, text):
        """Turn `<n>`, `<|tab|>` and `<|blank_N|>` back into whitespace."""
        text = text.replace("<n>", "\n")
        text = text.replace(self.get_tab_token(), "\t")
        for n in range(2, self.max_blank_length + 1):
            text = text.replace(self.get_blank_token(n), " " * n)
        return text

    def tokenize(self, text, linebreak=True, whitespaces=True, add_dummy_prefix=True):
        """Text -> sentencepiece pieces (after whitespace substitution)."""
        text = self._preprocess(checked_text(text), linebreak, whitespaces)
        if not add_dummy_prefix:
            # Upstream's trick: a leading `<n>` absorbs the dummy prefix; drop "▁" and "<n>" afterwards.
            return self.sp.EncodeAsPieces("<n>" + text)[2:]
        return self.sp.EncodeAsPieces(text)

    def encode(self, text, linebreak=True, whitespaces=True, add_dummy_prefix=True):
        """Text -> ids (offset by `num_image_tokens`)."""
        text = self._preprocess(checked_text(text), linebreak, whitespaces)
        if not add_dummy_prefix:
            text = "<n>" + text
        ids = [i + self.num_image_tokens for i in self.sp.EncodeAsIds(text)]
        return ids if add_dummy_prefix else ids[2:]

    def decode(self, ids):
        """Ids -> text; image-token ids (below the offset) are dropped."""
        ids = [int(i) - self.num_image_tokens for i in ids]
        ids = [i for i in ids if i >= 0]
        return self.postprocess(self.sp.DecodeIds(ids))

    def decode_tokens(self, tokens):
        """Pieces -> text."""
        return self.postprocess(self.sp.DecodePieces(list(tokens)))

    def __getitem__(self, key):
        """Id -> piece (`<image_N>` below the offset) or piece -> id (unknown pieces give the `<unk>` id)."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            key = int(key)
            if not 0 <= key < self.num_tokens:
                raise TokenizerError(f"token id {key} is outside the vocabulary [0, {self.num_tokens})")
            if key < self.num_image_tokens:
                return f"<image_{key}>"
            return self.sp.IdToPiece(key - self.num_image_tokens)
        if isinstance(key, str):
            if key.startswith("<image_") and key.endswith(">") and key[7:-1].isdigit():
                return int(key[7:-1])
            return self.sp.PieceToId(key) + self.num_image_tokens
        raise TypeError(f"key must be str or int, got {type(key).__name__}")


class ChatGLMTokenizer(TokenizerBase):
    """ChatGLM-6B tokenizer with transformers-4.33 semantics (encode, decode, left padding, masks, positions)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    vocab_file_name = VOCAB_FILE
    model_input_names = ["input_ids", "attention_mask", "position_ids"]
    padding_side = "left"

    def __init__(
        self,
        vocab_file,
        num_image_tokens=0,  # 0 for the current 130528-id vocabulary; 20000 for the older 150528 one
        bos_token="<sop>",
        eos_token="<eop>",
        end_token="</s>",
        mask_token="[MASK]",
        gmask_token="[gMASK]",
        pad_token="<pad>",
        unk_token="<unk>",
        do_lower_case=False,
        remove_space=False,
        padding_side="left",
        clean_up_tokenization_spaces=True,
    ):
        if padding_side != "left":
            # Upstream asserts this in `_pad`: prefix-LM masks and positions are built for left padding only.
            raise TokenizerError(f"ChatGLM-6B pads on the left only, got padding_side={padding_side!r}")
        self.sp_tokenizer = SPTokenizer(vocab_file, num_image_tokens=num_image_tokens)
        self.vocab_file = self.sp_tokenizer.vocab_file
        self.num_image_tokens = self.sp_tokenizer.num_image_tokens
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.end_token = end_token
        self.mask_token = mask_token
        self.gmask_token = gmask_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name_or_path = os.path.dirname(self.vocab_file)
        self._extra_config = {}

        self._special_ids = {}
        for attr in ("bos_token", "eos_token", "end_token", "mask_token", "gmask_token", "pad_token", "unk_token"):
            token = getattr(self, attr)
            if token is None:
                self._special_ids[attr] = None
                continue
            token_id = self.sp_tokenizer[token]
            # sentencepiece maps unknown pieces to <unk> silently; a special token missing from the model is a bug.
            if self.sp_tokenizer[token_id] != token:
                raise TokenizerError(f"{attr} {token!r} is not a piece of {self.vocab_file}")
            self._special_ids[attr] = token_id

        # transformers 4.33 never splits inside its "special tokens map" (bos/eos/unk/pad/mask, not gMASK/end).
        self._no_split_tokens = [
            t for t in dict.fromkeys([bos_token, eos_token, unk_token, pad_token, mask_token]) if t is not None
        ]
        pattern = "|".join(re.escape(t) for t in sorted(self._no_split_tokens, key=len, reverse=True))
        self._no_split_re = re.compile(f"({pattern})") if pattern else None

    # ---- construction / saving ---------------------------------------------------------------------------------

    def _init_config(self):
        """The constructor options that `save_pretrained` writes to tokenizer_config.json."""
        return dict(bos_token=self.bos_token, eos_token=self.eos_token, end_token=self.end_token,
                    gmask_token=self.gmask_token, mask_token=self.mask_token, pad_token=self.pad_token,
                    unk_token=self.unk_token, remove_space=self.remove_space, do_lower_case=self.do_lower_case,
                    num_image_tokens=self.num_image_tokens, padding_side=self.padding_side,
                    clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)

    def __repr__(self):
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"num_image_tokens={self.num_image_tokens}, padding_side={self.padding_side!r})"
        )

    # ---- vocabulary --------------------------------------------------------------------------------------------

    @property
    def vocab_size(self):
        """Image tokens plus sentencepiece pieces."""
        return self.sp_tokenizer.num_tokens

    def __len__(self):
        return self.vocab_size

    bos_token_id = property(lambda self: self._special_ids["bos_token"], doc="Id of `<sop>` (start of a reply).")
    eos_token_id = property(lambda self: self._special_ids["eos_token"], doc="Id of `<eop>` (end of a reply).")
    end_token_id = property(lambda self: self._special_ids["end_token"], doc="Id of `</s>`.")
    mask_token_id = property(lambda self: self._special_ids["mask_token"], doc="Id of `[MASK]`.")
    gmask_token_id = property(lambda self: self._special_ids["gmask_token"], doc="Id of `[gMASK]`.")
    pad_token_id = property(lambda self: self._special_ids["pad_token"], doc="Id of `<pad>`.")
    unk_token_id = property(lambda self: self._special_ids["unk_token"], doc="Id of `<unk>`.")

    @property
    def all_special_tokens(self):
        """The special-token strings decode(skip_special_tokens=True) drops: bos, eos, unk, pad, mask."""
        return list(self._no_split_tokens)

    @property
    def all_special_ids(self):
        """Ids of `all_special_tokens`."""
        return [self.sp_tokenizer[t] for t in self._no_split_tokens]

    def get_vocab(self):
        """Piece -> id for every id, `<image_N>` included."""
        return {self.sp_tokenizer[i]: i for i in range(self.vocab_size)}

    def convert_tokens_to_ids(self, tokens):
        """Piece(s) -> id(s); unknown pieces give the `<unk>` id, as upstream."""
        if isinstance(tokens, str):
            return self.sp_tokenizer[tokens]
        return [self.sp_tokenizer[t] for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """Id(s) -> piece(s); a single int gives a single piece."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self.sp_tokenizer[ids]
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.sp_tokenizer[i] for i in self._as_id_list(ids) if i not in skip]

    # ---- encoding ----------------------------------------------------------------------------------------------

    def _preprocess_text(self, text):
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.do_lower_case:
            text = text.lower()
        return text

    def _split_on_special_tokens(self, text):
        if self._no_split_re is None:
            return [text] if text else []
        chunks = [c for c in self._no_split_re.split(text) if c]
        no_split = set(self._no_split_tokens)
        # transformers strips whitespace on both sides of a special token that is a plain string (not AddedToken).
        for i, chunk in enumerate(chunks):
            if chunk in no_split:
                if i + 1 < len(chunks):
                    chunks[i + 1] = chunks[i + 1].lstrip()
                if i > 0:
                    chunks[i - 1] = chunks[i - 1].rstrip()
        return [c for c in chunks if c]

    def tokenize(self, text):
        """Text -> pieces: split on special tokens, each remaining chunk through sentencepiece on its own."""
        tokens = []
        for chunk in self._split_on_special_tokens(checked_text(text)):
            if chunk in self._no_split_tokens:
                tokens.append(chunk)
            else:
                tokens.extend(self.sp_tokenizer.tokenize(self._preprocess_text(chunk)))
        return tokens

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """`ids_0 [gMASK] <sop>` (then `ids_1 <eop>` for a pair), as upstream."""
        ids = list(token_ids_0) + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_token_id]
        return ids

    def _pad(self, ids, length):
        """One sequence -> (ids, mask [1, L, L], positions [2, L]), left-padded to `length`."""
        mask = prefix_lm_mask(ids, self.bos_token_id)
        positions = position_ids_2d(ids, self.bos_token_id, self.mask_token_id, self.gmask_token_id)
        diff = length - len(ids)
        # Pad rows/columns are fully masked and sit at position 0, exactly as upstream's `_pad`.
        mask = np.pad(mask, [(0, 0), (diff, 0), (diff, 0)], mode="constant", constant_values=True)
        positions = np.pad(positions, [(0, 0), (diff, 0)], mode="constant", constant_values=0)
        return [self.pad_token_id] * diff + list(ids), mask, positions

    def __call__(self, text, padding=False, max_length=None, return_tensors=None, add_special_tokens=True):
        """Encode a str or list of str; with padding or return_tensors="np", numpy arrays with a batch dimension.

        padding: False/"do_not_pad", True/"longest", or "max_length" (needs max_length; no truncation).
        Padded/tensor output: input_ids int64 [b, L], attention_mask bool [b, 1, L, L] (True = masked),
        position_ids int64 [b, 2, L]. Otherwise only input_ids, as a list (str) or list of lists (batch).
        """
        batched, texts = self._call_texts(text, return_tensors)
        if padding in (False, None, "do_not_pad"):
            strategy = "do_not_pad"
        elif padding in (True, "longest"):
            strategy = "longest"
        elif padding == "max_length":
            if max_length is None:
                raise TokenizerError("padding='max_length' needs max_length")
            strategy = "max_length"
        else:
            raise TokenizerError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")

        ids = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if strategy == "do_not_pad" and return_tensors is None:
            return BatchEncoding(input_ids=ids if batched else ids[0])

        lengths = [len(x) for x in ids]
        if strategy == "max_length":
            target = max_length
            too_long = [n for n in lengths if n > max_length]
            if too_long:
                raise TokenizerError(f"sequence of length {too_long[0]} exceeds max_length={max_length}; truncation is not supported")
        elif strategy == "longest":
            target = max(lengths, default=0)
        else:
            if len(set(lengths)) > 1:
                raise TokenizerError(
                    f"sequences have different lengths {lengths}; pass padding=True to build a numpy batch"
                )
            target = max(lengths, default=0)

        rows = [self._pad(x, target) for x in ids]
        return BatchEncoding(
            input_ids=np.array([r[0] for r in rows], dtype=np.int64).reshape(len(rows), target),
            attention_mask=np.array([r[1] for r in rows], dtype=bool).reshape(len(rows), 1, target, target),
            position_ids=np.array([r[2] for r in rows], dtype=np.int64).reshape(len(rows), 2, target),
        )

    # ---- decoding ----------------------------------------------------------------------------------------------

    def _check_id(self, i) -> int:
        i = super()._check_id(i)
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return i

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Ids (int, list, numpy array) -> text; pad is always dropped, bos/eos/unk/pad/mask too when skipping."""
        ids = self._as_id_list(ids)
        ids = [i for i in ids if i != self.pad_token_id]
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        text = self.sp_tokenizer.decode_tokens(tokens) if tokens else ""
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """`decode` over each row of a list of sequences or a 2-D array."""
        if hasattr(sequences, "asnumpy"):
            sequences = sequences.asnumpy()
        return [
            self.decode(s, skip_special_tokens=skip_special_tokens,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces)
            for s in sequences
        ]
