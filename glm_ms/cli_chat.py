"""Terminal chat (`glm-ms-chat`), like upstream `cli_demo.py`: streamed answers, `clear`, `stop`.

Ctrl-C while an answer streams stops that answer (the part shown stays in the history, as on the web page);
Ctrl-C at the prompt gives a fresh prompt; `stop` or end of input (Ctrl-D, or the end of piped stdin) exits.
A line that is not text in the input's encoding is skipped with a message; when the reader of the output goes
away (`glm-ms-chat | head`) the program ends quietly.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO, TypeVar

from . import families
from .errors import GlmMsError
from .loading import DEMO_NOTE, add_model_arguments, chat_defaults, is_demo, load_from_args, response_text
from .render import has_lone_surrogates

USER = "用户："
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE (128 + 13)
# Characters a later step may still change: a half-decoded UTF-8 sequence, and the punctuation that
# `process_response` turns full-width once a CJK character follows.
_UNSETTLED = set("\ufffd,!:;?")


def family_title(model) -> str:
    """What users call the model's family ("ChatGLM2-6B")."""
    return families.get(model.config.family).title


def bot_label(title: str) -> str:
    """The prefix of an answer ("ChatGLM2-6B：")."""
    return f"{title}："


def welcome_text(title: str) -> str:
    """The text shown at the start and after `clear`."""
    return (f"欢迎使用 {title} 模型，输入内容即可进行对话，clear 清空对话历史，stop 终止程序\n"
            "Type a message to chat; 'clear' clears the history, 'stop' exits, Ctrl-C stops the current answer.")


class StreamPrinter:
    """Shows an answer that is re-decoded as a whole at every step.

    While the new text extends what is on screen only the new characters are written; when earlier text
    changed, the answer is written again on a new line after `label`.
    """

    def __init__(self, out: TextIO, label: str):
        self.out, self.label, self.shown = out, label, ""

    def update(self, text: str, final: bool = False) -> None:
        """Show `text`, the whole answer so far; `final` also writes characters a later step could change."""
        settled = text
        while not final and settled and settled[-1] in _UNSETTLED:
            settled = settled[:-1]
        if settled.startswith(self.shown):
            self.out.write(settled[len(self.shown):])
        else:
            self.out.write("\n" + self.label + settled)
        self.shown = settled
        self.out.flush()


class CtrlC:
    """Ctrl-C that stops an answer, not the program (and, for the web page, SIGTERM too: `signals`).

    MindSpore's runtime installs its own SIGINT handler that SIGTERMs the process, re-installed on every model
    run, so a Python handler cannot be relied on. Instead the signals stay blocked in every thread (`block` runs
    before MindSpore starts its threads, which inherit the mask): between tokens a pending Ctrl-C is consumed
    and stops the answer; at the prompt the main thread unblocks it with Python's handler (KeyboardInterrupt);
    a server waits for them with `wait`. Disabled outside the main thread or where POSIX signal masks do not exist.
    """

    def __init__(self, enabled: bool = True, signals: tuple[int, ...] = (signal.SIGINT,)):
        self.enabled = (enabled and hasattr(signal, "pthread_sigmask")
                        and threading.current_thread() is threading.main_thread())
        self.signals = set(signals)

    def block(self) -> CtrlC:
        """Block the signals in this thread and the threads it starts."""
        if self.enabled:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        return self

    def pressed(self) -> bool:
        """Consume a pending Ctrl-C; True if there was one."""
        if self.enabled and signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
            return True
        return False

    def wait(self, timeout: float | None) -> int:
        """Wait up to `timeout` seconds (None: for ever) for one of the signals; its number, 0 if none came."""
        if not self.enabled:
            return 0
        if timeout is None:
            return int(signal.sigwait(self.signals))
        info = signal.sigtimedwait(self.signals, timeout)
        return info.si_signo if info else 0

    @contextlib.contextmanager
    def at_prompt(self) -> Iterator[None]:
        """While the block runs, Ctrl-C raises KeyboardInterrupt (in the main thread)."""
        if not self.enabled:
            yield
            return
        self.pressed()  # a Ctrl-C that came as the answer ended has done its job
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def answer(model, tokenizer, query: str, history: list, settings: dict, out: TextIO = sys.stdout,
           ctrl_c: CtrlC | None = None) -> list:
    """Stream one answer to `out`; returns the new history (unchanged if nothing was generated)."""
    ctrl_c = ctrl_c or CtrlC(enabled=False)
    label = bot_label(family_title(model))
    printer = StreamPrinter(out, label)
    out.write("\n" + label)
    out.flush()
    response, new_history, stopped = None, history, False
    stream = model.stream_chat(tokenizer, query, history, include_last=True, **settings)
    try:
        for response, new_history in stream:
            response = response_text(response)  # a ChatGLM3 tool call arrives as a dict
            printer.update(response)
            if ctrl_c.pressed():
                stopped = True
                break
    except BrokenPipeError:  # the reader went away: not the model's failure, `main` ends quietly
        raise
    # ValueError: the checks in generation and chat that are not GenerationError yet
    except GlmMsError as err:  # too long for max_length, or a setting out of range
        out.write(f"[cannot answer: {err}]")
    except Exception as err:  # stay in the chat; the user may try again
        out.write(f"[generation failed: {type(err).__name__}: {err}]")
    finally:
        stream.close()
    if response is not None:
        printer.update(response, final=True)
    if stopped:
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    return new_history


def read_line(inp: TextIO, out: TextIO) -> str:
    """One line with its newline, "" at end of input; a terminal gets `input()`'s line editing."""
    if inp is sys.stdin and out is sys.stdout and inp.isatty():
        try:
            return input("\n" + USER) + "\n"
        except EOFError:
            return ""
    out.write("\n" + USER)
    out.flush()
    return inp.readline()


def chat_loop(model, tokenizer, settings: dict, inp: TextIO = sys.stdin, out: TextIO = sys.stdout,
              banner: str | None = None, ctrl_c: CtrlC | None = None) -> int:
    """Read messages until `stop` or end of input; returns the exit status."""
    echo = not inp.isatty()  # piped input is not echoed by the terminal: show it so the transcript reads well
    greeting = welcome_text(family_title(model)) + "\n" + (banner + "\n" if banner else "")

    def welcome():
        if out.isatty():
            out.write("\x1b[2J\x1b[H")  # clear the screen, as upstream's os.system("clear")
        out.write(greeting)
        out.flush()

    ctrl_c = ctrl_c or CtrlC(enabled=False)
    welcome()
    history = []
    while True:
        try:
            with ctrl_c.at_prompt():
                line = read_line(inp, out)
        except KeyboardInterrupt:  # at the prompt: a fresh prompt, like a shell
            out.write("\n")
            continue
        if not line:  # end of input
            out.write("\n")
            return 0
        query = line.rstrip("\r\n")
        if has_lone_surrogates(query):  # bytes `surrogateescape` kept (see `run`): they are not text
            out.write(f"\n[this line is not valid {getattr(inp, 'encoding', None) or 'UTF-8'} text and was skipped; "
                      "check the terminal's encoding]\n")
            continue
        if echo:
            out.write(query + "\n")
        command = query.strip()
        if not command:
            continue
        if command == "stop":
            return 0
        if command == "clear":
            history = []
            welcome()
            continue
        history = answer(model, tokenizer, query, history, settings, out, ctrl_c)


T = TypeVar("T")


def run_interruptibly(load: Callable[[], T], ctrl_c: CtrlC) -> T:
    """`load()` in a worker thread, so that Ctrl-C (blocked, see `CtrlC`) can still abort a long model load."""
    if not ctrl_c.enabled:
        return load()
    result = {}

    def work():
        try:
            result["value"] = load()
        except BaseException as err:  # handed to the main thread
            result["error"] = err

    worker = threading.Thread(target=work, name="glm-ms-load", daemon=True)
    worker.start()
    while worker.is_alive():
        received = ctrl_c.wait(0.2)
        if received:
            print("\ninterrupted while loading", file=sys.stderr, flush=True)
            os._exit(128 + received)  # the loader is inside MindSpore: no clean way to unwind it
    if "error" in result:
        raise result["error"]
    return result["value"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `glm-ms-chat`."""
    rows = families.FAMILIES.values()
    parser = argparse.ArgumentParser(prog="glm-ms-chat", description="Chat in the terminal with "
                                     + ", ".join(row.title for row in rows) + ".")
    add_model_arguments(parser)
    gen = parser.add_argument_group("generation (defaults: the model family's, as upstream: " + ", ".join(
        f"{row.title} {row.chat.max_length} / {row.chat.top_p} / {row.chat.temperature}" for row in rows) + ")")
    gen.add_argument("--max-length", type=int, default=None, help="prompt + answer tokens")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    gen.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    gen.add_argument("--seed", type=int, default=None, help="fixed seed for reproducible answers (default: random)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`glm-ms-chat`: returns the exit status (1 with a one-line error when the model cannot be loaded)."""
    args = parse_args(argv)
    try:
        return run(args)
    except BrokenPipeError:
        # The reader of stdout is gone (`glm-ms-chat | head`): end quietly, as tools ended by SIGPIPE do. stdout
        # now points at /dev/null, so that Python's last flush at exit does not fail the same way again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except GlmMsError as err:
        print(f"glm-ms-chat: error: {err}", file=sys.stderr)
        return 1


WARMUP_LONGEST_PROMPT = 256  # prompt buckets compiled at start-up; longer prompts compile when they come


def warm_up(model, max_length: int) -> None:
    """On Ascend, compile the first turns' graphs before the prompt shows (each takes minutes on GE)."""
    from .device import select_device
    if select_device() == "Ascend":
        print("Compiling graphs for the first answers ...", file=sys.stderr, flush=True)
        model.warmup(max_length=max_length, longest_prompt=WARMUP_LONGEST_PROMPT)


def run(args: argparse.Namespace) -> int:
    """Load the model and chat on stdin / stdout; returns the exit status."""
    ctrl_c = CtrlC().block()  # before MindSpore starts any thread
    if isinstance(sys.stdin, io.TextIOWrapper):  # undecodable bytes: a message from chat_loop, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    model, tokenizer = run_interruptibly(lambda: load_from_args(args), ctrl_c)
    settings = chat_defaults(model)
    given = dict(max_length=args.max_length, top_p=args.top_p, temperature=args.temperature)
    settings.update({key: value for key, value in given.items() if value is not None}, do_sample=True, seed=args.seed)
    warm_up(model, settings["max_length"])
    return chat_loop(model, tokenizer, settings, banner="⚠ " + DEMO_NOTE if is_demo(args.model) else None,
                     ctrl_c=ctrl_c)


if __name__ == "__main__":
    sys.exit(main())
