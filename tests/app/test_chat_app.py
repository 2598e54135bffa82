"""`glm-ms-web`: the transcript, arguments, and the running app driven with gradio_client.

The app tests start `python -m glm_ms.chat_app --model demo` on a free port (the real console path) and compare
what streams out with `model.chat` on the same bundled model and settings; the Stop/concurrency/error tests use an
in-process app around a scripted fake service (the `fake_app` fixture), so they are fast and deterministic.
"""
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from glm_ms.chat_app import Turn, launch_kwargs, parse_args, render_transcript
from tests.app.pages import MAX_LENGTH, ROOT, TEMPERATURE, TOP_P, running_app

# ----------------------------------------------------------------------------- transcript


def test_transcript_shows_errors_and_pending_answers():
    turns = [Turn("a", "b"), Turn("c", error="too <long>")]
    html = render_transcript(turns)
    assert html.count("glm-user") == 2 and html.count("glm-bot") == 1
    assert "⚠ too &lt;long&gt;" in html and "glm-pending" not in html
    assert "glm-pending" in render_transcript(turns[:1], pending=True)


# ----------------------------------------------------------------------------- arguments, import


def test_defaults_bind_localhost_without_share():
    args = parse_args([])
    assert args.model == "demo" and args.mirror is None and args.dtype is None
    kwargs = launch_kwargs(args)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7860 and kwargs["share"] is False
    kwargs = launch_kwargs(parse_args(["--share", "--host", "0.0.0.0", "--port", "8000", "--model", "m",
                                       "--mirror", "modelscope", "--dtype", "float16"]))
    assert (kwargs["server_name"], kwargs["server_port"], kwargs["share"]) == ("0.0.0.0", 8000, True)


def test_import_does_no_work():
    code = ("import sys, glm_ms.chat_app, glm_ms.cli_chat; "
            "print(sorted(m for m in ('gradio', 'mindspore', 'mdtex2html', 'latex2mathml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]"


def test_load_model_passes_mirror_keywords_only_when_given(monkeypatch):
    from glm_ms import api, loading
    calls = []
    loaded = types.SimpleNamespace(set_train=lambda mode: None)
    monkeypatch.setattr(api.AutoModel, "from_pretrained",
                        classmethod(lambda cls, path, dtype=None, **kw: calls.append(("model", path, dtype, kw))
                                    or loaded))
    monkeypatch.setattr(api.AutoTokenizer, "from_pretrained",
                        staticmethod(lambda path, **kw: calls.append(("tokenizer", path, kw))))
    loading.load_model("demo")
    loading.load_model("ZhipuAI/ChatGLM-6B", mirror="modelscope", dtype="float16", revision="v1.1.0")
    assert calls == [
        ("model", str(loading.DEMO_MODEL_DIR), None, {}), ("tokenizer", str(loading.DEMO_MODEL_DIR), {}),
        ("model", "ZhipuAI/ChatGLM-6B", "float16", {"mirror": "modelscope", "revision": "v1.1.0"}),
        ("tokenizer", "ZhipuAI/ChatGLM-6B", {"mirror": "modelscope", "revision": "v1.1.0"})]


# ----------------------------------------------------------------------------- in-process app, scripted model


@pytest.mark.server
def test_stop_ends_generation_keeps_the_partial_answer_and_frees_the_row(fake_app):
    model, c = fake_app.service, fake_app.client()
    job = c.submit("long", 2000, TOP_P, TEMPERATURE, None, api_name="/chat")
    end = time.monotonic() + 30
    while model.active == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    assert job.cancel()  # what the Stop button does (cancels=)
    end = time.monotonic() + 30
    while model.active and time.monotonic() < end:
        time.sleep(0.05)
    assert model.active == 0  # the generator was closed: its row is free
    html, history = c.predict(api_name="/redraw")
    assert len(history) == 1 and history[0][0] == "long" and history[0][1].startswith("long0")
    assert "glm-pending" not in html
    # the next message is answered at once, after the stopped one
    _, html, history = c.predict("next", 3, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert history[-1] == ["next", "next0 next1 next2"]


@pytest.mark.server
def test_generation_error_is_shown_and_the_app_stays_up(fake_app):
    c = fake_app.client()
    query, html, history = c.predict("boom", 8, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert "Generation failed (RuntimeError: kaboom)" in html and history == []
    _, html, history = c.predict("ok", 2, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert history == [["ok", "ok0 ok1"]]
    assert html.count("glm-error") == 1  # the failed turn stays visible, out of the model's history


@pytest.mark.server
def test_concurrent_sessions_are_answered_together_and_keep_separate_histories(fake_app):
    model, a, b = fake_app.service, fake_app.client(), fake_app.client()
    jobs = [a.submit("a", 20, TOP_P, TEMPERATURE, None, api_name="/chat"),
            b.submit("b", 20, TOP_P, TEMPERATURE, None, api_name="/chat")]
    results = [job.result(timeout=60) for job in jobs]
    assert [r[2] for r in results] == [[["a", " ".join(f"a{i}" for i in range(20))]],
                                       [["b", " ".join(f"b{i}" for i in range(20))]]]
    assert model.most_active == 2  # both answers were generated at the same time, not one after the other


# ----------------------------------------------------------------------------- the real app on the demo model


@pytest.fixture(scope="module")
def demo_model():
    from glm_ms.loading import load_model
    return load_model("demo")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app")) as (url, proc):
        yield url, proc


def reference(demo_model, query, history=(), seed=None):
    model, tokenizer = demo_model
    return model.chat(tokenizer, query, history=list(history), max_length=MAX_LENGTH, top_p=TOP_P,
                      temperature=TEMPERATURE, do_sample=True, seed=seed)[0]


@pytest.mark.server
def test_app_binds_localhost_only(app_url):
    psutil = pytest.importorskip("psutil")
    _, proc = app_url
    port = int(app_url[0].rstrip("/").rsplit(":", 1)[1])
    listening = [c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


@pytest.mark.server
def test_streams_partials_final_equals_chat_then_clear(app_url, demo_model):
    from gradio_client import Client
    client = Client(app_url[0], verbose=False)
    job = client.submit("你好", MAX_LENGTH, TOP_P, TEMPERATURE, 11, api_name="/chat")
    outputs = list(job)
    final = job.outputs()[-1]
    expected = reference(demo_model, "你好", seed=11)
    partials = [history[-1][1] for _, _, history in job.outputs() if history and history[-1][1]]
    assert len(set(partials)) > 1, partials  # the answer grew in several updates
    assert final[2] == [["你好", expected]]
    assert final[0] == ""  # the input box was cleared
    assert outputs
    # the session keeps its history: the next answer is the model's with that history
    second = client.predict("再见", MAX_LENGTH, TOP_P, TEMPERATURE, 12, api_name="/chat")[2]
    assert second == [["你好", expected], ["再见", reference(demo_model, "再见", [("你好", expected)], seed=12)]]
    # Clear History empties it: the same question gets the history-free answer again
    cleared = client.predict(api_name="/clear")
    assert cleared[0] == "" and cleared[2] == [] and "No messages yet" in cleared[1]
    again = client.predict("再见", MAX_LENGTH, TOP_P, TEMPERATURE, 12, api_name="/chat")[2]
    assert again == [["再见", reference(demo_model, "再见", seed=12)]]


@pytest.mark.server
def test_two_concurrent_clients_get_their_own_complete_answers(app_url, demo_model):
    from gradio_client import Client
    a, b = Client(app_url[0], verbose=False), Client(app_url[0], verbose=False)
    job_a = a.submit("你好", MAX_LENGTH, TOP_P, TEMPERATURE, 1, api_name="/chat")
    job_b = b.submit("写一首诗", MAX_LENGTH, TOP_P, TEMPERATURE, 2, api_name="/chat")
    history_a, history_b = job_a.result(timeout=300)[2], job_b.result(timeout=300)[2]
    assert history_a == [["你好", reference(demo_model, "你好", seed=1)]]
    assert history_b == [["写一首诗", reference(demo_model, "写一首诗", seed=2)]]


@pytest.mark.server
def test_too_long_message_is_a_visible_message_not_a_crash(app_url):
    from gradio_client import Client
    client = Client(app_url[0], verbose=False)
    long_query = "很长的问题" * 20
    query, html, history = client.predict(long_query, MAX_LENGTH, TOP_P, TEMPERATURE, 3, api_name="/chat")
    assert history == []
    assert "Cannot answer: query is" in html and f"max_length {MAX_LENGTH}" in html
    assert query == long_query  # kept in the box to shorten it
    assert client.predict("你好", 8, TOP_P, TEMPERATURE, 3, api_name="/chat")[2][0][0] == "你好"  # still up


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_an_answer_shuts_the_page_down_with_exit_0(tmp_path, signum):
    # MindSpore re-installs its own SIGINT handler (which SIGTERMs the process) when it runs the model: once an
    # answer has been generated, Ctrl-C used to end the page with 143
    from gradio_client import Client
    with running_app(tmp_path) as (url, proc):
        history = Client(url, verbose=False).predict("你好", MAX_LENGTH, TOP_P, TEMPERATURE, 1, api_name="/chat")[2]
        assert history[0][0] == "你好" and history[0][1]
        proc.send_signal(signum)
        assert proc.wait(60) == 0
    log = next(tmp_path.glob("app-*.log")).read_text()
    assert f"{signal.Signals(signum).name}: shutting down" in log
