"""An allow-list HTML sanitizer for the chat page: the last check on what `glm_ms.render` emits.

It keeps exactly the tags and attributes that renderer produces (no links, images, spans, divs, styles or free
classes, so text can neither run script nor pose as page structure), balances every tag, and escapes all text.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_MATHML = {"math", "semantics", "annotation", "mrow", "mi", "mo", "mn", "ms", "mtext", "mspace", "msup", "msub",
           "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mlabeledtr",
           "mstyle", "menclose", "mpadded", "mphantom", "merror", "mmultiscripts", "mprescripts", "none"}
# Exactly the tags the renderer emits: no links, images, spans or divs, so text cannot pose as page structure.
_TAGS = _MATHML | {"p", "br", "hr", "pre", "code", "em", "strong", "del", "ul", "ol", "li", "h1", "h2", "h3", "h4",
                   "h5", "h6", "blockquote", "table", "thead", "tbody", "tr", "th", "td"}
_VOID = {"br", "hr", "mspace", "mprescripts", "none"}
_DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "textarea", "title", "noscript", "svg"}
_MATH_ATTRS = {"display", "xmlns", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace", "accent",
               "accentunder", "columnalign", "columnlines", "columnspacing", "rowspacing", "rowlines", "rowalign",
               "frame", "framespacing", "linethickness", "notation", "width", "height", "depth", "minsize", "maxsize",
               "movablelimits", "largeop", "symmetric", "displaystyle", "scriptlevel", "form", "voffset", "mathsize",
               "encoding", "columnspan", "rowspan"}
# The only other attributes: a code block's language class and an ordered list's start number, as emitted.
_ATTR_VALUES = {("code", "class"): re.compile(r"language-[A-Za-z0-9_+#.-]{1,32}"),
                ("ol", "start"): re.compile(r"\d{1,9}")}


class _Sanitizer(HTMLParser):
    """Re-emits only allow-listed tags and attributes; every open tag is closed, text is escaped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.open, self.skip = [], [], 0
        self.open_count: dict[str, int] = {}  # how many of each tag are open: a constant-time `tag in open`

    def allowed(self, tag: str, name: str, value: str) -> bool:
        pattern = _ATTR_VALUES.get((tag, name))
        if pattern is not None:
            return pattern.fullmatch(value) is not None
        return tag in _MATHML and name in _MATH_ATTRS

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_CONTENT:
            self.skip += 1
            return
        if self.skip or tag not in _TAGS:
            return
        kept = "".join(f' {name}="{html.escape(value or "", quote=True)}"' for name, value in attrs
                       if self.allowed(tag, name, value or ""))
        self.out.append(f"<{tag}{kept}>")
        if tag not in _VOID:
            self.open.append(tag)
            self.open_count[tag] = self.open_count.get(tag, 0) + 1

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
        if self.skip or not self.open_count.get(tag):
            return
        while self.open:
            top = self.open.pop()
            self.open_count[top] -= 1
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data):
        if not self.skip:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{tag}>" for tag in reversed(self.open))


def sanitize_html(markup: str) -> str:
    """Only the tags and attributes the renderer emits, balanced: no script, no handlers, no links, no classes."""
    parser = _Sanitizer()
    parser.feed(markup)
    return parser.result()
