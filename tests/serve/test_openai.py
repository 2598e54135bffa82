"""The official `openai` client against a real server: answers equal the model's own chat / generate."""
import openai
import pytest

from glm_ms.generation import InvalidScoreLogitsProcessor
from tests.serve.servers import HANG_S
from tests.support import FAMILIES, tiny

pytestmark = pytest.mark.server
N = 12  # new tokens per answer

# Each family's own single-turn prompt, written out here independently of glm_ms.serve.
PROMPT_IDS = {
    "chatglm-6b": lambda tok, q: tok.encode(q),
    "chatglm2": lambda tok, q: list(tok([tok.build_prompt(q)])["input_ids"][0]),
    "chatglm3": lambda tok, q: tok.build_chat_input(q)["input_ids"][0].tolist(),
}


def client(server, **options):
    return openai.OpenAI(base_url=server.url, api_key="unused", timeout=HANG_S, max_retries=0, **options)


def chat_reference(family, query, new_tokens, history=(), prompt_tokens=None):
    """`model.chat`, greedy, given room for `new_tokens` answer tokens after a prompt of `prompt_tokens`."""
    t = tiny(family)
    if prompt_tokens is None:
        prompt_tokens = len(PROMPT_IDS[family](t.tokenizer, query))
    # ChatGLM3's chat drops the last token also when max_length cuts the answer: leave room for one more.
    extra = 1 if getattr(t.model, "drops_last_token", False) else 0
    return t.model.chat(t.tokenizer, query, history=list(history), do_sample=False,
                        max_length=prompt_tokens + new_tokens + extra)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_streamed_and_not_equal_model_chat(servers, family):
    server, _ = servers(family)
    expected = chat_reference(family, "你好", N)
    c = client(server)
    messages = [{"role": "user", "content": "你好"}]
    reply = c.chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=N, temperature=0,
                                      extra_body={"return_token_ids": True})
    choice = reply.choices[0]
    assert choice.message.content == expected
    assert choice.message.role == "assistant"
    prompt = PROMPT_IDS[family](tiny(family).tokenizer, "你好")
    ids = choice.model_extra["token_ids"]
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(ids) and 1 <= len(ids) <= N
    assert reply.usage.total_tokens == len(prompt) + len(ids)
    assert choice.finish_reason == ("length" if len(ids) == N else "stop")

    chunks = list(c.chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=N,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == choice.finish_reason
    assert sum((ch.choices[0].model_extra["token_ids"] for ch in chunks if ch.choices), []) == ids
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    assert chunks[-1].usage.prompt_tokens == len(prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_history_and_system_message(servers, family):
    server, service = servers(family)
    t = tiny(family)
    if getattr(t.model, "roles", ()):
        history = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "早"},
                   {"role": "assistant", "metadata": "", "content": "早上好"}]
        messages = [{k: v for k, v in m.items() if k != "metadata"} for m in history]
        query = "天气"
    else:  # system folded into the query, as upstream's OpenAI demo does
        history = [("早", "早上好")]
        messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "早"},
                    {"role": "assistant", "content": "早上好"}]
        query = "你是助手天气"
    messages.append({"role": "user", "content": "天气"})
    reply = client(server).chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=N,
                                                   temperature=0)
    expected = chat_reference(family, query, N, history, reply.usage.prompt_tokens)
    assert reply.choices[0].message.content == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_cuts_exactly(servers, family):
    server, _ = servers(family)
    c = client(server)
    messages = [{"role": "user", "content": "你好"}]
    full = c.chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=24,
                                     temperature=0).choices[0].message.content
    middle = len(full) // 2
    stop = full[middle:middle + 2]
    assert stop.strip() and len(full) > 4
    expected = full[:full.index(stop)]
    cut = c.chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=24, temperature=0,
                                    stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(model=f"tiny-{family}", messages=messages, max_tokens=24,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_with_seed_is_reproducible_and_matches_generate(servers):
    family = "chatglm2"
    server, service = servers(family)
    c = client(server)
    ask = dict(model=f"tiny-{family}", messages=[{"role": "user", "content": "讲个故事"}], max_tokens=N, n=2,
               seed=1234, temperature=0.9, top_p=0.8, extra_body={"return_token_ids": True})
    first, second = c.chat.completions.create(**ask), c.chat.completions.create(**ask)
    ids = [ch.model_extra["token_ids"] for ch in first.choices]
    assert ids == [ch.model_extra["token_ids"] for ch in second.choices]
    assert [ch.message.content for ch in first.choices] == [ch.message.content for ch in second.choices]
    assert first.usage.completion_tokens == sum(len(i) for i in ids)
    t = tiny(family)
    prompt = PROMPT_IDS[family](t.tokenizer, "讲个故事")
    for index, choice_ids in enumerate(ids):  # choice i samples with seed + i, as generate's eager loop does
        out = t.model.generate([prompt], max_new_tokens=N, do_sample=True, temperature=0.9, top_p=0.8, top_k=50,
                               seed=1234 + index, compiled=False, logits_processor=[InvalidScoreLogitsProcessor()])
        assert out[0, len(prompt):].tolist() == choice_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_completions_equal_generate_decoded(servers, family):
    server, _ = servers(family)
    t = tiny(family)
    ids = t.tokenizer.encode("从前有座山")
    out = t.model.generate([ids], max_new_tokens=N, do_sample=False)[0, len(ids):].tolist()
    eos = t.model.config.eos_token_id
    text = t.tokenizer.decode(out[:out.index(eos)] if eos in out else out)
    c = client(server)
    reply = c.completions.create(model=f"tiny-{family}", prompt="从前有座山", max_tokens=N, temperature=0)
    assert reply.choices[0].text == text
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(out)
    chunks = list(c.completions.create(model=f"tiny-{family}", prompt="从前有座山", max_tokens=N, temperature=0,
                                       stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == ("stop" if eos in out else "length")


def test_models_lists_the_model_and_its_length(servers):
    server, service = servers("chatglm-6b")
    models = client(server).models.list().data
    assert [m.id for m in models] == ["tiny-chatglm-6b"]
    assert models[0].model_extra["max_model_len"] == service.engine.capacity
    assert client(server).models.retrieve("tiny-chatglm-6b").id == "tiny-chatglm-6b"
