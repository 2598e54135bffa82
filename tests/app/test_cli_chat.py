"""`glm-ms-chat` with piped stdin: answers equal `model.chat`, `clear` forgets, `stop`/EOF exit 0,
Ctrl-C stops an answer, not the program; undecodable input and a closed output pipe end in no traceback."""
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from glm_ms import families
from glm_ms.cli_chat import EXIT_BROKEN_PIPE, USER, StreamPrinter, bot_label

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH, SEED = 24, 7
BOT = bot_label(families.get("chatglm-6b").title)  # the demo model's family


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "glm_ms.cli_chat", "--model", "demo", *args], env


@pytest.fixture(scope="module")
def demo():
    from glm_ms.loading import load_model
    return load_model("demo")


def reference(demo, query, history=()):
    model, tokenizer = demo
    return model.chat(tokenizer, query, history=list(history), max_length=MAX_LENGTH, top_p=0.7, temperature=0.95,
                      do_sample=True, seed=SEED)


def test_stream_printer_writes_only_new_characters_and_reprints_changes():
    out = io.StringIO()
    printer = StreamPrinter(out, BOT)
    printer.update("你好")
    printer.update("你好,")        # ',' may still turn full-width: held back
    printer.update("你好，世界")   # it did: still an extension of what is on screen
    printer.update("你好，世界\ufffd")
    printer.update("你好，世界！")
    assert out.getvalue() == "你好，世界！"
    printer.update("重来")         # earlier text changed: written again on a new line
    printer.update("重来了", final=True)
    assert out.getvalue() == "你好，世界！\n" + BOT + "重来了"


def test_piped_chat_answers_clears_and_stops(demo):
    first, history = reference(demo, "你好")
    second, _ = reference(demo, "再见", history)
    command, env = cli("--max-length", str(MAX_LENGTH), "--seed", str(SEED))
    proc = subprocess.run(command, input="你好\n再见\nclear\n你好\nstop\n不会被读到\n", capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert first and second != first
    assert out.count(BOT) == 3, out
    answers = [part.split("\n" + USER)[0].strip("\n") for part in out.split(BOT)[1:]]
    # Each answer is shown in full; after `clear` the same question gets the history-free answer again.
    assert answers == [first, second, first], out
    assert out.count("clear 清空对话历史") == 2  # the welcome text again after `clear`
    assert "不会被读到" not in out  # `stop` ended the program


def test_ctrl_c_stops_only_the_answer_and_eof_exits_cleanly():
    command, env = cli("--max-length", "4000", "--seed", "3")
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, bufsize=0)
    chunks = queue.Queue()
    threading.Thread(target=lambda: [chunks.put(c) for c in iter(lambda: proc.stdout.read(1), "")],
                     daemon=True).start()
    seen = []

    def wait_for(predicate, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                seen.append(chunks.get(timeout=0.2))
            except queue.Empty:
                continue
            if predicate("".join(seen)):
                return "".join(seen)
        proc.kill()
        raise AssertionError("timed out; output so far:\n" + "".join(seen))

    try:
        wait_for(lambda text: text.endswith(USER), 300)
        proc.stdin.write("写一个很长的故事\n")
        proc.stdin.flush()
        wait_for(lambda text: len(text.split(BOT)[-1]) > 5 if BOT in text else False, 120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the answer streams
        text = wait_for(lambda text: text.endswith(USER) and text.count(USER) == 2, 60)
        assert "[stopped]" in text
        assert proc.poll() is None  # still running, back at the prompt
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C at the prompt: a fresh prompt
        wait_for(lambda text: text.endswith(USER) and text.count(USER) == 3, 60)
        assert proc.poll() is None
        proc.stdin.close()  # end of input
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_undecodable_input_is_skipped_with_a_message(demo):
    first, _ = reference(demo, "你好")
    command, env = cli("--max-length", str(MAX_LENGTH), "--seed", str(SEED))
    proc = subprocess.run(command, input="坏".encode("gbk") + "\n你好\nstop\n".encode(), capture_output=True, env=env,
                          timeout=600)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "[this line is not valid utf-8 text and was skipped" in out.lower()
    assert out.count(BOT) == 1 and out.split(BOT)[1].split("\n" + USER)[0].strip("\n") == first


def test_a_closed_output_pipe_ends_quietly():
    # `glm-ms-chat | head`: the reader goes away while the program still has answers to write
    command, env = cli("--max-length", str(MAX_LENGTH), "--seed", str(SEED))
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    while USER.encode() not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "glm-ms-chat ended before its first prompt"
        seen += chunk
    proc.stdout.close()
    try:
        _, err = proc.communicate("你好\n再见\nstop\n".encode(), timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err.decode("utf-8", "replace"), err.decode()[-3000:]
    assert "BrokenPipeError" not in err.decode("utf-8", "replace")
    assert proc.returncode == EXIT_BROKEN_PIPE
