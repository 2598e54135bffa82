"""ChatGLM2-6B and ChatGLM3-6B tokenizers on `sentencepiece` alone, with the upstream code's behaviour under
transformers 4.33 (what the golden fixtures record).

- The sentencepiece model (`tokenizer.model`, BPE with byte fallback) is used as it is: no whitespace
  substitution, `<unk>` 0 doubles as pad, `<s>` 1, `</s>` 2 is eos.
- Special tokens are appended after the sentencepiece vocabulary, in this order: `[MASK] [gMASK] [sMASK] sop eop`,
  and for ChatGLM3 the role tokens `<|system|> <|user|> <|assistant|> <|observation|>`. Their ids are never
  hard-coded: they follow from the sentencepiece model's size.
- Every prompt starts `[gMASK] sop`; padding is on the left with attention 0 and position 0.
- Text is never split on special tokens written in it (transformers registers none for these tokenizers), except
  ChatGLM3's role tokens when the tokenizer is loaded with `encode_special_tokens=True`.
- Decoding: ChatGLM2 turns every special id (and `<s> </s> <unk>`) into "", ChatGLM3 prints its special tokens
  literally; no clean-up of spaces.

numpy and sentencepiece only: no mindspore, torch or transformers.
"""
import json
import os
import re

import numpy as np
import sentencepiece as spm

from ..errors import NotFoundError, TokenizerError, UnknownTokenError
from ..prompts import as_pairs, chatglm2_prompt
from .base import BatchEncoding, TokenizerBase, checked_text, clean_up_tokenization

VOCAB_FILE = "tokenizer.model"


class GLM2FamilyTokenizer(TokenizerBase):
    """What ChatGLM2 and ChatGLM3 tokenizers share: `[gMASK] sop` prefix, left padding, special ids after the pieces."""

    family = None
    special_token_names = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
    vocab_files_names = {"vocab_file": VOCAB_FILE}
    vocab_file_name = VOCAB_FILE
    config_required = False
    model_input_names = ["input_ids", "attention_mask", "position_ids"]
    padding_side = "left"
    # What upstream's properties return (its tokenizer_config.json sets none of them).
    eos_token = "</s>"
    pad_token = "<unk>"
    unk_token = "<unk>"

    def __init__(self, vocab_file, padding_side="left", clean_up_tokenization_spaces=False, do_lower_case=False,
                 remove_space=False):
        if padding_side != "left":
            # Upstream asserts this in `_pad`: the model's masks assume left padding.
            raise TokenizerError(f"{type(self).__name__} pads on the left only, got padding_side={padding_side!r}")
        vocab_file = os.fspath(vocab_file)
        if not os.path.isfile(vocab_file):
            raise NotFoundError(f"sentencepiece model not found: {vocab_file}")
        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # Accepted because tokenizer_config.json carries them; upstream ignores both as well.
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.name_or_path = os.path.dirname(vocab_file)
        self._extra_config = {}

        self.num_text_tokens = self.sp_model.vocab_size()
        self.bos_id = self.sp_model.bos_id()
        self.eos_id = self.sp_model.eos_id()
        self.pad_id = self.sp_model.unk_id()
        self.special_tokens = {token: self.num_text_tokens + i for i, token in enumerate(self.special_token_names)}
        self.index_special_tokens = {i: token for token, i in self.special_tokens.items()}
        # Upstream's get_command names for the sentencepiece control pieces.
        self._commands = {"<bos>": self.bos_id, "<eos>": self.eos_id, "<unk>": self.pad_id, "<pad>": self.pad_id}

    # ---- construction / saving ---------------------------------------------------------------------------------

    def _init_config(self):
        return dict(padding_side=self.padding_side, clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
                    do_lower_case=self.do_lower_case, remove_space=self.remove_space)

    def __repr__(self):
        return f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size})"

    # ---- vocabulary --------------------------------------------------------------------------------------------

    @property
    def vocab_size(self):
        """Sentencepiece pieces plus the special tokens appended after them."""
        return self.num_text_tokens + len(self.special_tokens)

    def __len__(self):
        return self.vocab_size

    def get_command(self, token):
        """Id of a special token (`[gMASK]`, `sop`, …) or of `<bos>` / `<eos>` / `<pad>` / `<unk>`."""
        if token in self._commands:
            return self._commands[token]
        if token not in self.special_tokens:
            raise UnknownTokenError(f"{token!r} is not a special token of {type(self).__name__}")
        return self.special_tokens[token]

    eos_token_id = property(lambda self: self.eos_id, doc="Id of `</s>`: generation stops here.")
    pad_token_id = property(lambda self: self.pad_id, doc="Id used for left padding (`<unk>`).")
    unk_token_id = property(lambda self: self.pad_id, doc="Id of `<unk>`.")
    bos_token_id = property(lambda self: self.bos_id, doc="Id of `<s>` (prompts do not use it).")

    @property
    def all_special_ids(self):
        """`<unk>`/pad and `</s>` — the ids transformers would drop with skip_special_tokens (both decode to "")."""
        return [self.eos_id, self.pad_id]

    def get_vocab(self):
        """Token → id for every id (upstream's view: sentencepiece control pieces show as "")."""
        return {self._convert_id_to_token(i): i for i in range(self.vocab_size)}

    def _convert_id_to_token(self, index):
        if index in self.index_special_tokens or index in (self.eos_id, self.bos_id, self.pad_id) or index < 0:
            return ""
        if index >= self.num_text_tokens:
            return ""  # ids that only pad the output matrix; upstream's sentencepiece call would raise here
        return self.sp_model.IdToPiece(index)

    def convert_tokens_to_ids(self, tokens):
        """Token(s) → id(s): special tokens first, else the sentencepiece piece (unknown → `<unk>` 0)."""
        if isinstance(tokens, str):
            return self.special_tokens[tokens] if tokens in self.special_tokens else self.sp_model.PieceToId(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """Id(s) → token(s); a single int gives a single token."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self._convert_id_to_token(self._check_id(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._convert_id_to_token(i) for i in self._as_id_list(ids) if i not in skip]

    # ---- encoding ----------------------------------------------------------------------------------------------

    def tokenize(self, text):
        """Text → sentencepiece pieces (the whole text at once: special tokens written in it are plain text)."""
        return self.sp_model.EncodeAsPieces(checked_text(text))

    def get_prefix_tokens(self):
        """`[gMASK] sop`: every ChatGLM2/3 prompt starts with them."""
        return [self.get_command("[gMASK]"), self.get_command("sop")]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """`[gMASK] sop ids_0` (then `ids_1 </s>` for a pair), as upstream."""
        ids = self.get_prefix_tokens() + list(token_ids_0)
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_id]
        return ids

    def pad(self, sequences, padding=True, max_length=None):
        """Left-pad id lists → numpy input_ids, attention_mask (0 on pads) and position_ids (0 on pads), int64 [b, L]."""
        lengths = [len(s) for s in sequences]
        if padding == "max_length":
            if max_length is None:
                raise TokenizerError("padding='max_length' needs max_length")
            too_long = [n for n in lengths if n > max_length]
            if too_long:
                raise TokenizerError(f"sequence of length {too_long[0]} exceeds max_length={max_length}; "
                                 "truncation is not supported")
            target = max_length
        else:
            target = max(lengths, default=0)
        ids = np.full((len(sequences), target), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(sequences), target), dtype=np.int64)
        positions = np.zeros((len(sequences), target), dtype=np.int64)
        for row, seq in enumerate(sequences):
            n = len(seq)
            if n:
                ids[row, target - n:] = seq
                mask[row, target - n:] = 1
                positions[row, target - n:] = np.arange(n)
        return BatchEncoding(input_ids=ids, attention_mask=mask, position_ids=positions)

    def __call__(self, text, padding=False, max_length=None, return_tensors=None, add_special_tokens=True):
        """Encode a str or list of str into input_ids, attention_mask (1 = token, 0 = pad) and position_ids.

        padding: False/"do_not_pad", True/"longest", or "max_length" (needs max_length; no truncation). With
        padding or return_tensors="np" the three are int64 numpy arrays [b, L]; otherwise lists (of lists for a batch).
        """
        batched, texts = self._call_texts(text, return_tensors)
        if padding not in (False, None, "do_not_pad", True, "longest", "max_length"):
            raise TokenizerError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        ids = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        return self._encoded(ids, batched, padding, max_length, return_tensors)

    def _encoded(self, ids, batched, padding=False, max_length=None, return_tensors=None):
        if padding in (False, None, "do_not_pad") and return_tensors is None:
            rows = [BatchEncoding(input_ids=x, attention_mask=[1] * len(x), position_ids=list(range(len(x))))
                    for x in ids]
            if batched:
                return BatchEncoding({k: [r[k] for r in rows] for k in self.model_input_names})
            return rows[0]
        if padding in (False, None, "do_not_pad") and len({len(x) for x in ids}) > 1:
            raise TokenizerError(f"sequences have different lengths {[len(x) for x in ids]}; pass padding=True to "
                             "build a numpy batch")
        return self.pad(ids, padding=padding if padding == "max_length" else True, max_length=max_length)

    # ---- decoding ----------------------------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Ids (int, list, numpy array) → text, through sentencepiece's piece decoder as upstream."""
        tokens = self.convert_ids_to_tokens(self._as_id_list(ids), skip_special_tokens=skip_special_tokens)
        text = self.sp_model.DecodePieces(tokens) if tokens else ""
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """`decode` over each row of a list of sequences or a 2-D array."""
        if hasattr(sequences, "asnumpy"):
            sequences = sequences.asnumpy()
        return [self.decode(s, skip_special_tokens=skip_special_tokens,
                            clean_up_tokenization_spaces=clean_up_tokenization_spaces) for s in sequences]



class ChatGLM2Tokenizer(GLM2FamilyTokenizer):
    """ChatGLM2-6B tokenizer (special ids decode to "") with its text prompt template."""

    family = "chatglm2"

    def build_prompt(self, query, history=None):
        """ChatGLM2's text prompt for `query` after `history` [(query, response), ...] (see glm_ms.prompts)."""
        return chatglm2_prompt(query, as_pairs(history))


class ChatGLM3Tokenizer(GLM2FamilyTokenizer):
    """ChatGLM3-6B tokenizer: ChatGLM2's plus role tokens, literal special tokens in decoded text, chat inputs."""

    family = "chatglm3"
    role_token_names = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
    special_token_names = GLM2FamilyTokenizer.special_token_names + role_token_names
    roles = ("system", "user", "assistant", "observation")

    def __init__(self, vocab_file, padding_side="left", clean_up_tokenization_spaces=False, encode_special_tokens=False,
                 do_lower_case=False, remove_space=False):
        super().__init__(vocab_file, padding_side=padding_side, clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                         do_lower_case=do_lower_case, remove_space=remove_space)
        # With encode_special_tokens, role tokens written in the text become their ids (never the other specials).
        self.encode_special_tokens = encode_special_tokens
        self._role_re = re.compile("|".join(re.escape(t) for t in self.role_token_names))

    def _init_config(self):
        return dict(super()._init_config(), encode_special_tokens=self.encode_special_tokens)

    def _convert_id_to_token(self, index):
        if index in self.index_special_tokens:
            return self.index_special_tokens[index]
        if index in (self.eos_id, self.bos_id, self.pad_id) or index < 0 or index >= self.num_text_tokens:
            return ""
        return self.sp_model.IdToPiece(index)

    def tokenize(self, text):
        """Text → pieces; with `encode_special_tokens`, role tokens in the text are kept whole (each gap encoded alone)."""
        if not self.encode_special_tokens:
            return self.sp_model.EncodeAsPieces(checked_text(text))
        checked_text(text)
        tokens, last = [], 0
        for match in self._role_re.finditer(text):
            if last < match.start():
                tokens.extend(self.sp_model.EncodeAsPieces(text[last:match.start()]))
            tokens.append(match.group())
            last = match.end()
        if last < len(text):
            tokens.extend(self.sp_model.EncodeAsPieces(text[last:]))
        return tokens

    def build_single_message(self, role, metadata, message):
        """`<|role|> {metadata}\\n {message}` as ids (each part through sentencepiece on its own, as upstream)."""
        if role not in self.roles:
            raise TokenizerError(f"role must be one of {', '.join(self.roles)}, got {role!r}")
        role_tokens = [self.get_command(f"<|{role}|>")] + self.sp_model.encode(checked_text(f"{metadata}\n"))
        return role_tokens + self.sp_model.encode(checked_text(message))

    def build_chat_input(self, query, history=None, role="user"):
        """Model inputs for a chat turn: `[gMASK] sop`, every history message, the query as `role`, then `<|assistant|>`.

        history: [{"role", "content"[, "metadata"][, "tools"]}, ...]; a system message's tools are appended to
        its content as indented JSON, as upstream. Returns numpy input_ids, attention_mask, position_ids [1, n].
        """
        ids = []
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids.extend(self.build_single_message(item["role"], item.get("metadata", ""), content))
        ids.extend(self.build_single_message(role, "", query))
        ids.append(self.get_command("<|assistant|>"))
        return self.pad([self.build_inputs_with_special_tokens(ids)])
