"""Every prompt template and the fit rule, against the goldens of each family."""
import pytest

from glm_ms.errors import GenerationError
from glm_ms.prompts import (as_messages, as_pairs, chatglm2_continuation, chatglm2_prompt, chatglm_prompt,
                            fill_training_date, fit_to_length)
from tests.support import tiny


def test_chatglm_template():
    assert chatglm_prompt("你好", []) == "你好"
    assert chatglm_prompt("c", [("a", "b")]) == "[Round 0]\n问：a\n答：b\n[Round 1]\n问：c\n答："


def test_chatglm2_template_matches_the_golden_prompts():
    for case in tiny("chatglm2").golden_json["build_prompt_cases"]:
        assert chatglm2_prompt(case["query"], as_pairs(case["history"])) == case["prompt"]
    assert chatglm2_continuation("q", [("a", "b")]) == "\n\n[Round 2]\n\n问：q\n\n答："


def test_history_normalisation():
    assert as_pairs([["a", "b"]]) == [("a", "b")]
    with pytest.raises(GenerationError, match="pairs"):
        as_pairs([("a", "b", "c")])
    messages = as_messages([("q", "r"), {"role": "system", "content": "s"}])
    assert messages == [{"role": "user", "content": "q"}, {"role": "assistant", "metadata": "", "content": "r"},
                        {"role": "system", "content": "s"}]
    with pytest.raises(GenerationError, match="ChatGLM3 history"):
        as_messages([42])


def test_fit_keeps_the_first_entries_and_drops_the_oldest_others():
    history = [[1] * 5, [2] * 5, [3] * 5]
    build = lambda h: [x for item in h for x in item] + [9]
    assert fit_to_length(build, history, max_length=12, keep=1) == [1] * 5 + [3] * 5 + [9]
    assert fit_to_length(build, history, max_length=100) == build(history)
    with pytest.raises(GenerationError, match="max_length 1 "):
        fit_to_length(build, history, max_length=1)


def test_training_date_placeholder():
    assert fill_training_date("截至[[训练时间]]") == "截至2023年"
