"""ChatGLM-6B chat: the prompt template, response clean-up, history fitting, `chat` and `stream_chat`."""
import re

from .generation import InvalidScoreLogitsProcessor


def build_prompt(query, history):
    """The upstream prompt: the bare query without history, else numbered rounds from 0."""
    if not history:
        return query
    prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


_PUNCT = [(",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？")]


def process_response(response):
    """Strip, fill the training-date placeholder, and make , ! : ; ? next to CJK characters full-width."""
    response = response.strip().replace("[[训练时间]]", "2023年")
    for half, full in _PUNCT:
        response = re.sub(r"([\u4e00-\u9fff])%s" % half, r"\1%s" % full, response)
        response = re.sub(r"%s([\u4e00-\u9fff])" % half, r"%s\1" % full, response)
    return response


def fit_prompt(tokenizer, query, history, max_length):
    """Prompt ids for `query` with as many recent rounds as leave room for one new token under max_length."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query is empty")
    history = [tuple(turn) for turn in (history or [])]
    for start in range(len(history) + 1):
        ids = tokenizer.encode(build_prompt(query, history[start:]))
        if len(ids) < max_length:
            return ids
    raise ValueError(f"query is {len(ids)} tokens with the prompt markers; max_length {max_length} leaves no room "
                     "for an answer (shorten the message or raise max_length)")


class ChatMixin:
    """`chat` and `stream_chat` with upstream's call shape and defaults."""

    def chat(self, tokenizer, query, history=None, max_length=2048, num_beams=1, do_sample=True, top_p=0.7,
             temperature=0.95, logits_processor=None, **kwargs):
        """Answer `query` given `history` [(query, response), ...]; returns (response, history + new turn)."""
        history = [tuple(turn) for turn in (history or [])]
        ids = fit_prompt(tokenizer, query, history, max_length)
        processors = list(logits_processor or []) + [InvalidScoreLogitsProcessor()]
        out = self.generate([ids], max_length=max_length, num_beams=num_beams, do_sample=do_sample, top_p=top_p,
                            temperature=temperature, logits_processor=processors, **kwargs)
        response = process_response(tokenizer.decode(out[0, len(ids):].tolist()))
        return response, history + [(query, response)]

    def stream_chat(self, tokenizer, query, history=None, max_length=2048, do_sample=True, top_p=0.7,
                    temperature=0.95, logits_processor=None, include_last=False, **kwargs):
        """Yield (partial response, history) as tokens arrive; the whole answer is re-decoded each time.

        Upstream never yields the step that ends generation; `include_last=True` adds it, so the final yield
        equals what `chat` returns with the same settings.
        """
        history = [tuple(turn) for turn in (history or [])]
        ids = fit_prompt(tokenizer, query, history, max_length)
        processors = list(logits_processor or []) + [InvalidScoreLogitsProcessor()]
        for out in self.stream_generate([ids], max_length=max_length, do_sample=do_sample, top_p=top_p,
                                        temperature=temperature, logits_processor=processors,
                                        include_last=include_last, **kwargs):
            response = process_response(tokenizer.decode(out[0, len(ids):].tolist()))
            yield response, history + [(query, response)]
