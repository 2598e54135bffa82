"""The Gradio streaming chat page (`glm-ms-web`): upstream `web_demo.py`, rebuilt for Gradio 6.

Importing this module does no work: Gradio and the model load inside `build_demo` / `main`. Gradio 6's
`gr.Chatbot` would show rendered HTML as text, so the transcript is a `gr.HTML` block built here from messages
rendered by `glm_ms.render` (escaped, allow-listed, linear time); the handlers run in Gradio's worker threads, off
its event loop. A message longer than MAX_MESSAGE_CHARS, or one holding a lone surrogate, is refused with a message
in the chat before it is stored in the session.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import families
from .cli_chat import CtrlC, run_interruptibly
from .errors import GlmMsError
from .loading import DEMO_NOTE, add_model_arguments, chat_defaults, is_demo, load_from_args, response_text
from .render import has_lone_surrogates, render_message, repair_surrogates

if TYPE_CHECKING:  # the serving engine imports MindSpore; this module loads it only in `main`
    from .serve.sampling import Sampling
    from .serve.service import ChatService, TextStream

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only; binding 0.0.0.0 is an explicit choice (--host)
DEFAULT_PORT = 7860
DEFAULT_SLOTS = 4
MAX_MESSAGE_CHARS = 32_000  # more than a prompt that fits the models' context; rendering it stays instant
PREVIEW_CHARS = 500         # how much of a refused long message the transcript shows

# ----------------------------------------------------------------------------- the transcript


@dataclasses.dataclass
class Turn:
    """One exchange on the page: the user's message, the answer so far, and the error that ended it, if any."""
    query: str
    response: str = ""
    error: str | None = None


def history_of(turns: list[Turn]) -> list[tuple[str, str]]:
    """The model's history [(query, response)]: every turn that did not end in an error."""
    return [(turn.query, turn.response) for turn in turns if not turn.error]


def _bubble(kind: str, role: str, body: str) -> str:
    return f'<div class="glm-msg {kind}"><div class="glm-role">{role}</div><div class="glm-body">{body}</div></div>'


def render_transcript(turns: list[Turn], pending: bool = False) -> str:
    """The whole conversation as HTML; `pending` marks the last answer as still being written."""
    if not turns:
        return '<div class="glm-transcript"><div class="glm-empty">No messages yet.</div></div>'
    rows = []
    for i, turn in enumerate(turns):
        rows.append(_bubble("glm-user", "You", render_message(turn.query)))
        if pending and i == len(turns) - 1:
            rows.append(_bubble("glm-bot glm-pending", "ChatGLM", render_message(turn.response)))
        elif turn.response or not turn.error:
            body = render_message(turn.response) if turn.response else '<p class="glm-none">(no answer)</p>'
            rows.append(_bubble("glm-bot", "ChatGLM", body))
        if turn.error:
            rows.append(f'<div class="glm-msg glm-error" role="alert">⚠ {html.escape(turn.error)}</div>')
    return f'<div class="glm-transcript">{"".join(rows)}</div>'


def refusal(query: str) -> str | None:
    """Why the page does not pass `query` to the model (shown in the chat), or None."""
    if len(query) > MAX_MESSAGE_CHARS:
        return (f"Cannot answer: the message is {len(query):,} characters; this page takes at most "
                f"{MAX_MESSAGE_CHARS:,}. Shorten it and send it again.")
    if has_lone_surrogates(query):
        return ("Cannot answer: the message holds a lone surrogate (half of a character, e.g. a cut emoji), shown "
                "here as \ufffd. Remove it and send the message again.")
    return None


_CSS = """
.glm-transcript { display: flex; flex-direction: column; gap: 10px; padding: 8px; min-height: 360px;
  max-height: 65vh; overflow-y: auto; }
.glm-empty, .glm-none { color: #888; margin: auto; }
.glm-msg { max-width: 92%; padding: 8px 12px; border-radius: 10px; overflow-wrap: anywhere; }
.glm-user { align-self: flex-end; background: #e8f0fe; color: #111; }
.glm-bot { align-self: flex-start; background: #f3f4f6; color: #111; }
.glm-error { align-self: stretch; background: #fde8e8; color: #8a1c1c; border: 1px solid #f5b5b5; }
.glm-role { font-size: 0.75em; font-weight: 600; opacity: 0.6; margin-bottom: 2px; }
.glm-body p { margin: 0.25em 0; }
.glm-body pre { background: #1f2430; color: #e6e6e6; padding: 8px; border-radius: 6px; overflow-x: auto; }
.glm-body pre code { color: inherit; background: transparent; white-space: pre; }
.glm-body table { border-collapse: collapse; }
.glm-body th, .glm-body td { border: 1px solid #ccc; padding: 2px 6px; }
.glm-pending .glm-body::after { content: "▍"; animation: glm-blink 1s steps(1) infinite; }
@keyframes glm-blink { 50% { opacity: 0; } }
"""
_NOTE_CSS = """
.glm-demo-note { background: #fff4d6; color: #5c4300; border: 1px solid #e8c36a; border-radius: 8px;
  padding: 8px 12px; }
"""


# ----------------------------------------------------------------------------- the page

TOP_K = 50  # generate's default, which upstream's sampling chat inherits


@dataclasses.dataclass
class Running:
    """An answer being generated: its stream, and whether Clear History (not Stop) ended it."""
    stream: TextStream
    cleared: threading.Event = dataclasses.field(default_factory=threading.Event)


class Answers:
    """The answer each session is generating, so that Stop and Clear History end it at once, whoever asks (the
    page or an API client: the browser's own `cancels=` reaches only the browser's events, and only when the
    generator next yields)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.running: dict[str, Running] = {}

    @contextlib.contextmanager
    def start(self, session: str, stream: TextStream) -> Iterator[Running]:
        """Register `stream` as the answer of `session` while the block runs."""
        running = Running(stream)
        with self.guard:
            self.running[session] = running
        try:
            yield running
        finally:
            with self.guard:
                if self.running.get(session) is running:
                    del self.running[session]

    def stop(self, session: str, clear: bool = False) -> None:
        """End the answer `session` is generating, if any: its row is freed before the next decode step."""
        with self.guard:
            running = self.running.get(session)
        if running is not None:
            if clear:
                running.cleared.set()
            running.stream.cancel()


def new_session() -> str:
    """A fresh session id (the initial value of each session's `gr.State`)."""
    return uuid.uuid4().hex


class ChatHandlers:
    """What the page's events run: every session's answers go to one ChatService, whose engine decodes them
    together (each answer is one row of its batch)."""

    def __init__(self, service: ChatService):
        self.service = service
        self.answers = Answers()

    @staticmethod
    def sampling(top_p, temperature, seed) -> Sampling:
        """Upstream's `do_sample=True` with the sliders' top_p and temperature (and generate's top_k)."""
        from .serve.sampling import Sampling
        return Sampling(temperature=float(temperature), top_p=float(top_p), top_k=TOP_K,
                        seed=None if seed is None else int(seed))

    def generate(self, turns: list[Turn], history: list, session: str, max_length, top_p, temperature,
                 seed) -> Iterator[tuple]:
        """Stream the answer into the last turn, yielding page updates; returns (what the input box keeps,
        whether Clear History ended the answer)."""
        turn = turns[-1]
        cleared = False
        try:
            stream = self.service.submit_turn(turn.query, history, int(max_length),
                                              self.sampling(top_p, temperature, seed))
            with self.answers.start(session, stream) as running:
                try:
                    shown = None
                    for delta in stream.steps():
                        if delta or shown is None:
                            turn.response += delta
                            shown = ("", render_transcript(turns, pending=True), turns,
                                     history + [(turn.query, turn.response)])
                        # Every decode step yields, also without new text: a cancelled event (Stop) closes the
                        # generator at its next yield, and the `finally` frees the row.
                        yield shown
                    cleared = running.cleared.is_set()
                    if not cleared:
                        turn.response = response_text(stream.chat_result()[0])  # a ChatGLM3 tool call is a dict
                finally:
                    stream.cancel()
        except GlmMsError as err:  # too long for max_length, a setting out of range: the user can fix it
            turn.error = f"Cannot answer: {err}"
            return ("" if turn.response else turn.query), False
        except Exception as err:  # the page stays up; the traceback goes to the server log
            log.exception("generation failed")
            turn.error = f"Generation failed ({type(err).__name__}: {err}). The page is still running; try again."
        return "", cleared

    def respond(self, query, turns, max_length, top_p, temperature, seed, session) -> Iterator[tuple]:
        """Submit: (input box, transcript HTML, turns, history) after each step of the answer."""
        turns = [dataclasses.replace(turn) for turn in (turns or [])]
        query = query or ""
        problem = refusal(query)
        if problem or not query.strip():  # refused before anything of it is stored in the session
            if problem:
                shown = query if len(query) <= PREVIEW_CHARS else query[:PREVIEW_CHARS] + "…"
                turns.append(Turn(repair_surrogates(shown), error=problem))
            yield repair_surrogates(query), render_transcript(turns), turns, history_of(turns)
            return
        history = history_of(turns)
        turns.append(Turn(query))
        yield "", render_transcript(turns, pending=True), turns, history
        keep_query, cleared = yield from self.generate(turns, history, session, max_length, top_p, temperature,
                                                       seed)
        if cleared:  # cleared while answering: end on the empty page, whatever was shown last
            yield "", render_transcript([]), [], []
            return
        yield keep_query, render_transcript(turns), turns, history_of(turns)

    def stop(self, session: str) -> None:
        """Stop: end this session's answer now (the event's own cancellation closes the generator)."""
        self.answers.stop(session)

    def clear(self, session: str) -> tuple:
        """Clear History: stop this session's answer, empty its transcript."""
        self.answers.stop(session, clear=True)
        return "", render_transcript([]), [], []

    def redraw(self, turns: list[Turn] | None) -> tuple:
        """After Stop: the transcript without the pending cursor, and the history."""
        return render_transcript(turns or []), history_of(turns or [])


def build_demo(service: ChatService, *, title: str = "ChatGLM on MindSpore", demo_note: str | None = None,
               max_length: int = 2048, top_p: float = 0.7, temperature: float = 0.95):
    """The chat page: streaming answers, Stop, Clear History, sliders, history per browser session.

    Up to `service.engine.slots` answers stream at once, decoded together by the engine; later visitors wait
    in Gradio's queue. The max_length slider goes up to the engine's row length. Sampling is upstream's
    (`do_sample=True`); a seed in "Advanced" makes it reproducible.
    """
    import gradio as gr
    chat = ChatHandlers(service)
    longest = service.engine.capacity

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(f"<h2>{html.escape(title)}</h2>", js_on_load=None)
        if demo_note:
            gr.HTML(f'<div class="glm-demo-note" role="note">⚠ {html.escape(demo_note)}</div>',
                    css_template=_NOTE_CSS, js_on_load=None, elem_id="demo-note")
        transcript = gr.HTML(render_transcript([]), css_template=_CSS, js_on_load=None, autoscroll=True,
                             elem_id="transcript")
        turns_state = gr.State([])
        session = gr.State(new_session)  # called once per session: the key Stop and Clear History act on
        history_json = gr.JSON([], visible=False, label="history")  # the raw [(query, response)] for API clients
        with gr.Row():
            with gr.Column(scale=4):
                query_box = gr.Textbox(show_label=False, placeholder="Input... (Enter sends, Shift+Enter: new line)",
                                       lines=3, max_lines=12, elem_id="query")
            with gr.Column(scale=1, min_width=120):
                submit_btn = gr.Button("Submit", variant="primary", elem_id="submit")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Row():
            with gr.Column(scale=4):
                clear_btn = gr.Button("Clear History", elem_id="clear")
            with gr.Column(scale=1, min_width=120):
                max_length_slider = gr.Slider(1, longest, value=min(max_length, longest), step=1,
                                              label="Maximum length", interactive=True)
                top_p_slider = gr.Slider(0.01, 1, value=top_p, step=0.01, label="Top P", interactive=True)
                temperature_slider = gr.Slider(0.01, 1, value=temperature, step=0.01, label="Temperature",
                                               interactive=True)
        with gr.Accordion("Advanced", open=False):
            seed_box = gr.Number(None, precision=0, label="Seed (blank: random sampling; set: reproducible answers)")

        inputs = [query_box, turns_state, max_length_slider, top_p_slider, temperature_slider, seed_box, session]
        outputs = [query_box, transcript, turns_state, history_json]
        chat_args = dict(fn=chat.respond, inputs=inputs, outputs=outputs, show_progress="minimal",
                         concurrency_limit=service.engine.slots, concurrency_id="model")
        clicked = submit_btn.click(api_name="chat", **chat_args)
        entered = query_box.submit(api_visibility="private", **chat_args)
        running = [clicked, entered]
        # Stop ends the answer in the engine at once; cancelling closes the generator; redraw drops the cursor.
        stop_btn.click(chat.stop, session, None, cancels=running, queue=False, api_visibility="private").then(
            chat.redraw, turns_state, [transcript, history_json], queue=False, api_name="redraw")
        clear_btn.click(chat.clear, session, [query_box, transcript, turns_state, history_json], cancels=running,
                        queue=False, api_name="clear")
    return demo


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `glm-ms-web`."""
    parser = argparse.ArgumentParser(prog="glm-ms-web", description="Streaming chat page (Gradio) for "
                                     + ", ".join(row.title for row in families.FAMILIES.values()) + ".")
    add_model_arguments(parser)
    web = parser.add_argument_group("web")
    web.add_argument("--host", default=DEFAULT_HOST,
                     help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    web.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default)")
    web.add_argument("--max-length", type=int, default=None,
                     help="starting value of the max_length slider (default: the model family's, "
                          + ", ".join(f"{row.title} {row.chat.max_length}" for row in families.FAMILIES.values())
                          + "); the slider goes up to the larger of this and the family's")
    web.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                     help=f"answers generated at once, decoded together (default {DEFAULT_SLOTS}); more visitors "
                          "wait in the queue")
    web.add_argument("--queue-size", type=int, default=None,
                     help="most requests waiting in the queue (default: no limit)")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be >= 1")
    return args


def launch_kwargs(args: argparse.Namespace) -> dict:
    """What `main` passes to `Blocks.launch`."""
    return dict(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, show_error=True)


def build_service(args: argparse.Namespace) -> tuple[ChatService, dict]:
    """Load the model and start its engine; (the service, the sliders' starting values)."""
    from .serve.cli import prefer_batched_kernels
    from .serve.engine import Engine
    from .serve.service import ChatService
    prefer_batched_kernels(args.slots)  # before MindSpore starts
    model, tokenizer = load_from_args(args)
    defaults = chat_defaults(model)
    if args.max_length is not None:
        defaults["max_length"] = args.max_length
    # A row holds the longest answer the slider allows; Gradio's queue lets no more than `slots` answers in, the
    # engine's own queue only covers a row still being freed when the next answer starts.
    engine = Engine(model, slots=args.slots, max_queue=args.slots,
                    capacity=max(defaults["max_length"], chat_defaults(model)["max_length"]))
    engine.warmup(tokenizer.encode("hi"))
    return ChatService(engine, tokenizer, str(args.model)), defaults


def serve(args: argparse.Namespace, signals: CtrlC) -> int:
    """Load, serve the page until SIGINT / SIGTERM, then stop the page and the engine; the exit status."""
    try:
        service, defaults = run_interruptibly(lambda: build_service(args), signals)
    except GlmMsError as err:
        print(f"glm-ms-web: error: {err}", file=sys.stderr)
        return 1
    model = service.engine.model
    title = f"{families.get(model.config.family).title} on MindSpore"
    demo = build_demo(service, title=title, demo_note=DEMO_NOTE if is_demo(args.model) else None, **defaults)
    if is_demo(args.model):
        log.warning(DEMO_NOTE)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.slots)
    try:
        demo.launch(prevent_thread_lock=True, **launch_kwargs(args))
        if signals.enabled:
            log.info("%s: shutting down", signal.Signals(signals.wait(None)).name)
        else:  # no signal masks here: Gradio's own wait, which ends on Ctrl-C
            demo.block_thread()
    finally:
        service.engine.shutdown(timeout=0)  # answers still streaming end with a message now
        demo.close()
        service.engine.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`glm-ms-web`: load the model, serve the page until Ctrl-C / SIGTERM (exit 0); 1 if loading fails."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # MindSpore re-installs its own SIGINT handler (which SIGTERMs the process) whenever it runs the model, so no
    # handler can be relied on: both signals stay blocked in every thread and this thread waits for them.
    return serve(args, CtrlC(signals=(signal.SIGINT, signal.SIGTERM)).block())


if __name__ == "__main__":
    sys.exit(main())
