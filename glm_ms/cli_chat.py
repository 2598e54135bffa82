"""Terminal chat (`glm-ms-chat`), like upstream `cli_demo.py`: streamed answers, `clear`, `stop`.

Ctrl-C while an answer streams stops that answer (the part shown stays in the history, as on the web page);
Ctrl-C at the prompt gives a fresh prompt; `stop` or end of input (Ctrl-D, or the end of piped stdin) exits.
"""
import argparse
import contextlib
import os
import signal
import sys
import threading

from .loading import DEMO_NOTE, add_model_arguments, chat_defaults, is_demo, load_from_args, response_text

WELCOME = ("欢迎使用 ChatGLM-6B 模型，输入内容即可进行对话，clear 清空对话历史，stop 终止程序\n"
           "Type a message to chat; 'clear' clears the history, 'stop' exits, Ctrl-C stops the current answer.")
USER, BOT = "用户：", "ChatGLM-6B："
# Characters a later step may still change: a half-decoded UTF-8 sequence, and the punctuation that
# `process_response` turns full-width once a CJK character follows.
_UNSETTLED = set("\ufffd,!:;?")


class StreamPrinter:
    """Shows an answer that is re-decoded as a whole at every step.

    While the new text extends what is on screen only the new characters are written; when earlier text
    changed, the answer is written again on a new line.
    """

    def __init__(self, out):
        self.out, self.shown = out, ""

    def update(self, text, final=False):
        settled = text
        while not final and settled and settled[-1] in _UNSETTLED:
            settled = settled[:-1]
        if settled.startswith(self.shown):
            self.out.write(settled[len(self.shown):])
        else:
            self.out.write("\n" + BOT + settled)
        self.shown = settled
        self.out.flush()


class CtrlC:
    """Ctrl-C that stops an answer, not the program.

    MindSpore's runtime installs its own SIGINT handler that SIGTERMs the process, re-installed on every model
    run, so a Python handler cannot be relied on. Instead SIGINT stays blocked in every thread (`block` runs
    before MindSpore starts its threads, which inherit the mask): between tokens a pending Ctrl-C is consumed
    and stops the answer; at the prompt the main thread unblocks it with Python's handler (KeyboardInterrupt).
    Disabled outside the main thread or where POSIX signal masks do not exist.
    """

    def __init__(self, enabled=True):
        self.enabled = (enabled and hasattr(signal, "pthread_sigmask")
                        and threading.current_thread() is threading.main_thread())

    def block(self):
        if self.enabled:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        return self

    def pressed(self):
        """Consume a pending Ctrl-C; True if there was one."""
        if self.enabled and signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})
            return True
        return False

    def wait(self, timeout):
        """Wait up to `timeout` seconds for Ctrl-C; True if it came."""
        return bool(self.enabled and signal.sigtimedwait({signal.SIGINT}, timeout))

    @contextlib.contextmanager
    def at_prompt(self):
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


def answer(model, tokenizer, query, history, settings, out=sys.stdout, ctrl_c=None):
    """Stream one answer to `out`; returns the new history (unchanged if nothing was generated)."""
    ctrl_c = ctrl_c or CtrlC(enabled=False)
    printer = StreamPrinter(out)
    out.write("\n" + BOT)
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
    except ValueError as err:  # too long for max_length, or a setting out of range
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


def read_line(inp, out):
    """One line with its newline, "" at end of input; a terminal gets `input()`'s line editing."""
    if inp is sys.stdin and out is sys.stdout and inp.isatty():
        try:
            return input("\n" + USER) + "\n"
        except EOFError:
            return ""
    out.write("\n" + USER)
    out.flush()
    return inp.readline()


def chat_loop(model, tokenizer, settings, inp=sys.stdin, out=sys.stdout, banner=None, ctrl_c=None):
    """Read messages until `stop` or end of input; returns the exit status."""
    echo = not inp.isatty()  # piped input is not echoed by the terminal: show it so the transcript reads well

    def welcome():
        if out.isatty():
            out.write("\x1b[2J\x1b[H")  # clear the screen, as upstream's os.system("clear")
        out.write(WELCOME + "\n" + (banner + "\n" if banner else ""))
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


def load_interruptibly(args, ctrl_c):
    """`load_from_args` in a worker thread, so that Ctrl-C (blocked, see `CtrlC`) can still abort a long load."""
    if not ctrl_c.enabled:
        return load_from_args(args)
    result = {}

    def work():
        try:
            result["value"] = load_from_args(args)
        except BaseException as err:  # handed to the main thread
            result["error"] = err

    worker = threading.Thread(target=work, name="glm-ms-load", daemon=True)
    worker.start()
    while worker.is_alive():
        if ctrl_c.wait(0.2):
            print("\ninterrupted while loading", file=sys.stderr, flush=True)
            os._exit(130)  # the loader is inside MindSpore: no clean way to unwind it
    if "error" in result:
        raise result["error"]
    return result["value"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="glm-ms-chat", description="Chat with ChatGLM-6B in the terminal.")
    add_model_arguments(parser)
    gen = parser.add_argument_group("generation (defaults: the model family's, as upstream: ChatGLM-6B 2048 / 0.7 / "
                                    "0.95, ChatGLM2/3 8192 / 0.8 / 0.8)")
    gen.add_argument("--max-length", type=int, default=None, help="prompt + answer tokens")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    gen.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    gen.add_argument("--seed", type=int, default=None, help="fixed seed for reproducible answers (default: random)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ctrl_c = CtrlC().block()  # before MindSpore starts any thread
    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    model, tokenizer = load_interruptibly(args, ctrl_c)
    settings = chat_defaults(model)
    given = dict(max_length=args.max_length, top_p=args.top_p, temperature=args.temperature)
    settings.update({key: value for key, value in given.items() if value is not None}, do_sample=True, seed=args.seed)
    return chat_loop(model, tokenizer, settings, banner="⚠ " + DEMO_NOTE if is_demo(args.model) else None,
                     ctrl_c=ctrl_c)


if __name__ == "__main__":
    sys.exit(main())
