"""`ChatService.submit_turn`: turns as `model.chat` takes them (the chat page's way in), answered by the engine."""
import pytest

from glm_ms.errors import GenerationError
from glm_ms.serve.engine import Engine
from glm_ms.serve.sampling import Sampling
from glm_ms.serve.service import ChatService
from tests.serve.servers import fresh_model
from tests.support import tiny

MAX_LENGTH = 40


@pytest.fixture(scope="module", params=["chatglm-6b", "chatglm2", "chatglm3"])
def service(request):
    engine = Engine(fresh_model(request.param), slots=2, capacity=128)
    yield ChatService(engine, tiny(request.param).tokenizer, request.param)
    engine.shutdown()


def test_concurrent_turns_each_equal_model_chat_greedy(service):
    t = tiny(service.engine.model.config.family)
    turns = [("什么是机器学习？", []), ("天气不错", [("你好", "你好👋！有什么可以帮你的？")] * 3)]
    streams = [service.submit_turn(query, history, MAX_LENGTH, Sampling()) for query, history in turns]
    for stream in streams:  # both are in the engine before either is read
        "".join(stream)
    for (query, history), stream in zip(turns, streams):
        # the long history does not fit MAX_LENGTH: the oldest turns are left out of the prompt, as chat does
        assert stream.chat_result() == t.model.chat(t.tokenizer, query, history=history, max_length=MAX_LENGTH,
                                                    do_sample=False)


def test_a_turn_without_room_for_an_answer_is_refused(service):
    with pytest.raises(GenerationError, match=f"max_length {MAX_LENGTH}"):
        service.submit_turn("很长的问题" * 40, [], MAX_LENGTH, Sampling())
    stream = service.submit_turn("你好", [], MAX_LENGTH, Sampling())
    with pytest.raises(GenerationError, match="finished"):
        stream.chat_result()
    stream.cancel()
