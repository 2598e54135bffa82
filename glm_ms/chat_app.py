"""The Gradio streaming chat page (`glm-ms-web`): upstream `web_demo.py`, rebuilt for Gradio 6.

Importing this module does no work: Gradio, mdtex2html and the model load inside `build_demo` / `main`.

Rendering: Gradio 6's `gr.Chatbot` shows mdtex2html's HTML as escaped text, so the transcript is a `gr.HTML`
block rendered here. Each message goes through the upstream pipeline, made safe:
  1. fenced code blocks are cut out first (upstream `parse_text`'s job) and become
     `<pre><code class="language-…">` with their text HTML-escaped — mdtex2html alone would turn them into
     inline `<code>` and read `$` inside code as LaTeX;
  2. the prose between them is HTML-escaped (`&`, `<`) outside code spans and `$…$` / `$$…$$` / `\\(…\\)` /
     `\\[…\\]` math, so user or model text shows literally instead of becoming markup;
  3. mdtex2html turns the prose into HTML with the formulas as MathML `<math>`;
  4. the result passes an allow-list sanitizer (tags, attributes, http(s)/mailto links only), so nothing in
     a message — whatever mdtex2html or Markdown make of it — can run script in the page.
"""
import argparse
import functools
import html
import logging
import re
import threading
from html.parser import HTMLParser

from .loading import DEMO_NOTE, add_model_arguments, chat_defaults, is_demo, load_from_args, response_text

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only; binding 0.0.0.0 is an explicit choice (--host)
DEFAULT_PORT = 7860

# ----------------------------------------------------------------------------- message rendering

_FENCE = re.compile(r"^[ \t]*```(.*)$")
_LANG = re.compile(r"[^A-Za-z0-9_+#.-]")
# Spans whose text must reach mdtex2html unescaped: code spans (Markdown escapes them itself) and formulas
# (latex2mathml escapes its output; `&` and `<` are LaTeX there).
_VERBATIM = re.compile(r"(`+).+?\1|\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<!\\)\$.+?(?<!\\)\$", re.S)


def split_fences(text):
    """[(kind, text, lang)] with kind 'prose' or 'code'; an unclosed fence runs to the end (a streaming answer)."""
    blocks, lines, lang, in_code = [], [], "", False
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if fence is None:
            lines.append(line)
            continue
        if lines or in_code:
            blocks.append(("code" if in_code else "prose", "\n".join(lines), lang))
        lines, in_code = [], not in_code
        words = fence.group(1).split()
        lang = _LANG.sub("", words[0])[:32] if in_code and words else ""
    if lines or in_code:
        blocks.append(("code" if in_code else "prose", "\n".join(lines), lang))
    return blocks


def escape_prose(text):
    """HTML-escape `&` and `<` except inside code spans and formulas, keeping Markdown syntax working."""
    out, pos = [], 0
    for match in _VERBATIM.finditer(text):
        out.append(text[pos:match.start()].replace("&", "&amp;").replace("<", "&lt;"))
        out.append(match.group(0))
        pos = match.end()
    out.append(text[pos:].replace("&", "&amp;").replace("<", "&lt;"))
    return "".join(out)


_MATHML = {"math", "semantics", "annotation", "mrow", "mi", "mo", "mn", "ms", "mtext", "mspace", "msup", "msub",
           "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mlabeledtr",
           "mstyle", "menclose", "mpadded", "mphantom", "merror", "mmultiscripts", "mprescripts", "none"}
_TAGS = _MATHML | {"p", "br", "hr", "pre", "code", "em", "strong", "b", "i", "del", "s", "u", "ul", "ol", "li", "h1",
                   "h2", "h3", "h4", "h5", "h6", "blockquote", "a", "table", "thead", "tbody", "tr", "th", "td",
                   "span", "div", "font", "sup", "sub", "kbd", "dl", "dt", "dd"}
_VOID = {"br", "hr", "mspace", "mprescripts", "none"}
_DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "textarea", "title", "noscript", "svg"}
_MATH_ATTRS = {"display", "xmlns", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace", "accent",
               "accentunder", "columnalign", "columnlines", "columnspacing", "rowspacing", "rowlines", "rowalign",
               "frame", "framespacing", "linethickness", "notation", "width", "height", "depth", "minsize", "maxsize",
               "movablelimits", "largeop", "symmetric", "displaystyle", "scriptlevel", "form", "voffset", "mathsize",
               "encoding", "columnspan", "rowspan"}
_ATTRS = {"class", "title", "align", "start", "colspan", "rowspan", "href"}
_URL_SCHEMES = ("http://", "https://", "mailto:")
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")


class _Sanitizer(HTMLParser):
    """Re-emits only allow-listed tags and attributes; every open tag is closed, text is escaped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.open, self.skip = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_CONTENT:
            self.skip += 1
            return
        if self.skip or tag not in _TAGS:
            return
        kept = []
        for name, value in attrs:
            value = "" if value is None else value
            if name == "href":
                if tag != "a" or not _CONTROL.sub("", value).lower().startswith(_URL_SCHEMES):
                    continue
            elif name not in _ATTRS and not (tag in _MATHML and name in _MATH_ATTRS):
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        if tag == "a":
            kept.append(' rel="noopener noreferrer nofollow" target="_blank"')
        self.out.append(f"<{tag}{''.join(kept)}>")
        if tag not in _VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag in _DROP_CONTENT:
            return
        depth = len(self.open)
        self.handle_starttag(tag, attrs)
        if len(self.open) > depth:  # `<mi/>`: opened just now, close it again
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _DROP_CONTENT:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip or tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data):
        if not self.skip:
            self.out.append(html.escape(data, quote=False))

    def result(self):
        self.close()
        return "".join(self.out) + "".join(f"</{tag}>" for tag in reversed(self.open))


def sanitize_html(markup):
    """Allow-listed, balanced HTML: no script, no event handlers, no javascript: links, no unknown tags."""
    parser = _Sanitizer()
    parser.feed(markup)
    return parser.result()


@functools.lru_cache(maxsize=1024)
def render_message(text):
    """One chat message (Markdown + LaTeX + fenced code) → safe HTML with MathML formulas."""
    import mdtex2html
    parts = []
    for kind, block, lang in split_fences(text):
        if kind == "code":
            cls = f' class="language-{lang}"' if lang else ""
            parts.append(f"<pre><code{cls}>{html.escape(block, quote=False)}</code></pre>")
        elif block.strip():
            parts.append(mdtex2html.convert(escape_prose(block)))
    return sanitize_html("".join(parts))


def history_of(turns):
    """The model's history [(query, response)]: every turn that did not end in an error."""
    return [(turn["query"], turn["response"]) for turn in turns if not turn.get("error")]


def render_transcript(turns, pending=False):
    """The whole conversation as HTML; `pending` marks the last answer as still being written."""
    if not turns:
        return '<div class="glm-transcript"><div class="glm-empty">No messages yet.</div></div>'
    rows = []
    for i, turn in enumerate(turns):
        last = i == len(turns) - 1
        rows.append('<div class="glm-msg glm-user"><div class="glm-role">You</div>'
                    f'<div class="glm-body">{render_message(turn["query"])}</div></div>')
        response = turn.get("response") or ""
        if pending and last:
            rows.append('<div class="glm-msg glm-bot glm-pending"><div class="glm-role">ChatGLM</div>'
                        f'<div class="glm-body">{render_message(response)}</div></div>')
        elif response or not turn.get("error"):
            body = render_message(response) if response else '<p class="glm-none">(no answer)</p>'
            rows.append(f'<div class="glm-msg glm-bot"><div class="glm-role">ChatGLM</div>'
                        f'<div class="glm-body">{body}</div></div>')
        if turn.get("error"):
            rows.append(f'<div class="glm-msg glm-error" role="alert">⚠ {html.escape(turn["error"])}</div>')
    return f'<div class="glm-transcript">{"".join(rows)}</div>'


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
.glm-pending .glm-body::after { content: "▍"; animation: glm-blink 1s steps(1) infinite; }
@keyframes glm-blink { 50% { opacity: 0; } }
"""
_NOTE_CSS = """
.glm-demo-note { background: #fff4d6; color: #5c4300; border: 1px solid #e8c36a; border-radius: 8px;
  padding: 8px 12px; }
"""

# ----------------------------------------------------------------------------- the page


def build_demo(model, tokenizer, *, title="ChatGLM-6B on MindSpore", demo_note=None, max_length=2048, top_p=0.7,
               temperature=0.95):
    """The chat page: streaming answers, Stop, Clear History, sliders, history per browser session.

    Call `.queue()` before launching (`main` does): the model is not re-entrant, so answers are generated one at
    a time, also guarded by a lock. Sampling is upstream's (`do_sample=True`); a seed in "Advanced" makes it
    reproducible.
    """
    import gradio as gr
    lock = threading.Lock()  # one generation at a time: the KV cache belongs to the model

    def respond(query, turns, max_length, top_p, temperature, seed):
        turns = [dict(turn) for turn in (turns or [])]
        history = history_of(turns)
        if not (query or "").strip():
            yield query, render_transcript(turns), turns, history
            return
        turn = {"query": query, "response": "", "error": None}
        turns.append(turn)
        yield "", render_transcript(turns, pending=True), turns, history
        settings = dict(max_length=int(max_length), top_p=float(top_p), temperature=float(temperature),
                        do_sample=True, seed=None if seed is None else int(seed))
        keep_query = ""
        try:
            with lock:
                stream = model.stream_chat(tokenizer, query, history, include_last=True, **settings)
                try:
                    for response, _ in stream:
                        response = response_text(response)  # a ChatGLM3 tool call arrives as a dict
                        turn["response"] = response
                        yield "", render_transcript(turns, pending=True), turns, history + [(query, response)]
                finally:
                    stream.close()
        except ValueError as err:  # too long for max_length, or a setting out of range: the user can fix it
            turn["error"] = f"Cannot answer: {err}"
            keep_query = "" if turn["response"] else query
        except Exception as err:  # the page stays up; the traceback goes to the server log
            log.exception("generation failed")
            turn["error"] = f"Generation failed ({type(err).__name__}: {err}). The page is still running; try again."
        yield keep_query, render_transcript(turns), turns, history_of(turns)

    def clear():
        return "", render_transcript([]), [], []

    def redraw(turns):
        return render_transcript(turns or []), history_of(turns or [])

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(f"<h2>{html.escape(title)}</h2>", js_on_load=None)
        if demo_note:
            gr.HTML(f'<div class="glm-demo-note" role="note">⚠ {html.escape(demo_note)}</div>',
                    css_template=_NOTE_CSS, js_on_load=None, elem_id="demo-note")
        transcript = gr.HTML(render_transcript([]), css_template=_CSS, js_on_load=None, autoscroll=True,
                             elem_id="transcript")
        turns_state = gr.State([])
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
                max_length_slider = gr.Slider(1, 4096, value=max_length, step=1, label="Maximum length",
                                              interactive=True)
                top_p_slider = gr.Slider(0.01, 1, value=top_p, step=0.01, label="Top P", interactive=True)
                temperature_slider = gr.Slider(0.01, 1, value=temperature, step=0.01, label="Temperature",
                                               interactive=True)
        with gr.Accordion("Advanced", open=False):
            seed_box = gr.Number(None, precision=0, label="Seed (blank: random sampling; set: reproducible answers)")

        inputs = [query_box, turns_state, max_length_slider, top_p_slider, temperature_slider, seed_box]
        outputs = [query_box, transcript, turns_state, history_json]
        chat_args = dict(fn=respond, inputs=inputs, outputs=outputs, show_progress="minimal",
                         concurrency_limit=1, concurrency_id="model")
        clicked = submit_btn.click(api_name="chat", **chat_args)
        entered = query_box.submit(api_visibility="private", **chat_args)
        running = [clicked, entered]
        # Cancelling closes the generator (its `finally` releases the lock); redraw drops the pending cursor.
        stop_btn.click(None, cancels=running, api_visibility="private").then(
            redraw, turns_state, [transcript, history_json], queue=False, api_name="redraw")
        clear_btn.click(clear, None, [query_box, transcript, turns_state, history_json], cancels=running,
                        queue=False, api_name="clear")
    return demo


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="glm-ms-web", description="ChatGLM-6B streaming chat page (Gradio).")
    add_model_arguments(parser)
    web = parser.add_argument_group("web")
    web.add_argument("--host", default=DEFAULT_HOST,
                     help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    web.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    web.add_argument("--share", action="store_true", help="also publish a public gradio.live link (off by default)")
    web.add_argument("--max-length", type=int, default=None,
                     help="starting value of the max_length slider (default: the model family's, 2048 for "
                          "ChatGLM-6B, 8192 for ChatGLM2/3)")
    web.add_argument("--queue-size", type=int, default=None,
                     help="most requests waiting in the queue (default: no limit)")
    return parser.parse_args(argv)


def launch_kwargs(args):
    """What `main` passes to `Blocks.launch`."""
    return dict(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, show_error=True)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, tokenizer = load_from_args(args)
    defaults = chat_defaults(model)
    if args.max_length is not None:
        defaults["max_length"] = args.max_length
    demo = build_demo(model, tokenizer, demo_note=DEMO_NOTE if is_demo(args.model) else None, **defaults)
    if is_demo(args.model):
        log.warning(DEMO_NOTE)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(**launch_kwargs(args))


if __name__ == "__main__":
    main()
