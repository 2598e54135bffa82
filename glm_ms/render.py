"""Chat text → HTML for the page: a small Markdown + LaTeX renderer that escapes by default and runs in linear time.

A message is text until this module decides otherwise. It emits only tags it builds itself (paragraphs, headings,
lists, quotes, tables, emphasis, code, MathML from latex2mathml) and every character of the message reaches the
page HTML-escaped, so raw HTML from a user or the model is shown, never run. Code and math spans never cross a
blank line. Every step is one left-to-right pass (no backtracking regex, no re-scan per span): the time grows
linearly with the text, and formulas become MathML within a per-message budget. `glm_ms.sanitize` re-checks the
result against an allow-list of exactly what the renderer emits. Importing this loads neither Gradio nor MindSpore.
"""
from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass

from .sanitize import sanitize_html

MAX_FORMULA_CHARS = 2000  # a longer formula is shown as its source: latex2mathml recurses per nesting level
MATH_BUDGET = 100_000     # MathML characters per message; later formulas are shown as their source

# ----------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """A fenced code block or the prose between two."""
    kind: str       # "prose" or "code"
    text: str
    lang: str = ""  # a code block's language, reduced to safe characters


_FENCE = re.compile(r"[ \t]*```(.*)")
_LANG = re.compile(r"[^A-Za-z0-9_+#.-]")


def split_fences(text: str) -> list[Block]:
    """Prose and fenced code blocks in order; an unclosed fence runs to the end (a streaming answer)."""
    blocks, lines, lang, in_code = [], [], "", False
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if fence is None:
            lines.append(line)
            continue
        if lines or in_code:
            blocks.append(Block("code" if in_code else "prose", "\n".join(lines), lang))
        lines, in_code = [], not in_code
        words = fence.group(1).split()
        lang = _LANG.sub("", words[0])[:32] if in_code and words else ""
    if lines or in_code:
        blocks.append(Block("code" if in_code else "prose", "\n".join(lines), lang))
    return blocks


def _escape(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "<br>")


# ----------------------------------------------------------------------------- formulas


@dataclass
class MathBudget:
    """MathML characters a message may still produce; formulas past it are shown as their source."""
    left: int = MATH_BUDGET


@functools.lru_cache(maxsize=4096)
def render_formula(tex: str, display: bool = False) -> str | None:
    """One LaTeX formula as MathML, or None when it is too long or latex2mathml cannot read it."""
    if len(tex) > MAX_FORMULA_CHARS:
        return None
    from latex2mathml.converter import convert_to_element
    try:
        root = convert_to_element(tex, display="block" if display else "inline")
    except Exception:  # latex2mathml raises many types (its own, IndexError, RecursionError): show the source
        return None
    return _serialize_mathml(root)


# latex2mathml writes numeric character references into its element texts and un-escapes its own output, which
# would let `\text{<img …>}` through as markup: serialise the tree here, escaping all but those references.
_BARE_AMP = re.compile(r"&(?!#x[0-9A-Fa-f]{1,6};)")


def _math_text(text: str) -> str:
    return _BARE_AMP.sub("&amp;", text).replace("<", "&lt;").replace(">", "&gt;")


def _serialize_mathml(root) -> str:
    out, stack = [], [(root, False)]
    while stack:  # iterative: the tree may be as deep as latex2mathml's recursion allowed
        element, closing = stack.pop()
        if closing:
            out.append(f"</{element.tag}>{_math_text(element.tail or '')}")
            continue
        attrs = "".join(f' {name}="{html.escape(value)}"' for name, value in element.attrib.items())
        out.append(f"<{element.tag}{attrs}>{_math_text(element.text or '')}")
        stack.append((element, True))
        stack.extend((child, False) for child in reversed(element))
    return "".join(out)


# ----------------------------------------------------------------------------- inline spans and emphasis

_SPECIAL = re.compile(r"[`$\\]")
_BACKTICKS = re.compile(r"`+")
_DELIMITERS = re.compile(r"\*\*|\*|~~")
_EMPHASIS = {"**": "strong", "*": "em", "~~": "del"}
_ESCAPABLE = frozenset("\\`*_{}[]()#+-.!$~|<>")
_MATH_CLOSE = {"$$": "$$", "\\(": "\\)", "\\[": "\\]"}


class _Closers:
    """Where the next closing delimiter is. Each delimiter's searches cover disjoint stretches of the text (a
    search starts past the last hit, and none is repeated after a miss), so all lookups together are linear."""

    def __init__(self, text: str):
        self.text, self.next = text, {}
        runs: dict[int, list[int]] = {}
        for run in _BACKTICKS.finditer(text):
            runs.setdefault(len(run.group()), []).append(run.start())
        self.runs, self.run_index = runs, dict.fromkeys(runs, 0)

    def find(self, token: str, start: int) -> int:
        pos = self.next.get(token, -2)  # -2: not searched yet; -1: none left
        if pos == -1 or pos >= start:
            return pos
        pos = self.next[token] = self.text.find(token, start)
        return pos

    def dollar(self, start: int) -> int:
        """The next `$` not escaped by a backslash."""
        pos = self.find("$", start)
        while pos > 0 and self.text[pos - 1] == "\\":
            pos = self.find("$", pos + 1)
        return pos

    def backticks(self, start: int, length: int) -> int:
        """The next run of exactly `length` backticks starting at or after `start` (CommonMark's code span)."""
        starts, i = self.runs.get(length, ()), self.run_index.get(length, 0)
        while i < len(starts) and starts[i] < start:
            i += 1
        if length in self.run_index:
            self.run_index[length] = i
        return starts[i] if i < len(starts) else -1


@dataclass
class _Part:
    """A piece of an inline block, in order."""
    kind: str               # "text" (may hold emphasis), "lit" (shown as is), "html" (rendered), "delim"
    value: str
    role: str | None = None  # a delimiter's: "open", "close", or None (shown as text)


class _Inline:
    """One block of text (no blank line inside) → HTML: code spans, formulas, backslash escapes, emphasis."""

    def __init__(self, text: str, budget: MathBudget):
        self.text, self.budget, self.closers = text, budget, _Closers(text)
        self.parts: list[_Part] = []

    def render(self) -> str:
        self._spans()
        self._match_emphasis()
        out = []
        for part in self.parts:
            if part.kind == "html":
                out.append(part.value)
            elif part.role:
                out.append(f"<{'/' if part.role == 'close' else ''}{_EMPHASIS[part.value]}>")
            else:
                out.append(_escape(part.value))
        return "".join(out)

    def _add_text(self, text: str) -> None:
        pos = 0
        for match in _DELIMITERS.finditer(text):
            if match.start() > pos:
                self.parts.append(_Part("text", text[pos:match.start()]))
            self.parts.append(_Part("delim", match.group()))
            pos = match.end()
        if pos < len(text):
            self.parts.append(_Part("text", text[pos:]))

    def _spans(self) -> None:
        text, pos = self.text, 0
        while True:
            special = _SPECIAL.search(text, pos)
            if special is None:
                self._add_text(text[pos:])
                return
            i = special.start()
            self._add_text(text[pos:i])
            pos = self._span(i)

    def _span(self, i: int) -> int:
        """Handle the special character at `i`; returns where scanning goes on."""
        text, char = self.text, self.text[i]
        if char == "`":
            length = _BACKTICKS.match(text, i).end() - i
            end = self.closers.backticks(i + length, length)
            if end < 0:
                self.parts.append(_Part("lit", text[i:i + length]))
                return i + length
            code = text[i + length:end].replace("\n", " ")
            if code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            self.parts.append(_Part("html", f"<code>{html.escape(code, quote=False)}</code>"))
            return end + length
        opener = text[i:i + 2]
        if opener in _MATH_CLOSE:
            end = self.closers.find(_MATH_CLOSE[opener], i + 2)
            if end >= 0 and text[i + 2:end].strip():
                return self._formula(i, i + 2, end, end + 2, display=opener != "\\(")
        if char == "$" and opener != "$$":
            end = self.closers.dollar(i + 1)
            # pandoc's rule, so that prices stay text: `$` then a non-space, a non-space then `$`, no digit after
            if (end > i + 1 and not text[i + 1].isspace() and not text[end - 1].isspace()
                    and not text[end + 1:end + 2].isdigit()):
                return self._formula(i, i + 1, end, end + 1, display=False)
        if char == "\\" and text[i + 1:i + 2] in _ESCAPABLE:
            self.parts.append(_Part("lit", text[i + 1]))
            return i + 2
        width = 2 if opener in ("$$", "\\(", "\\[") else 1
        self.parts.append(_Part("lit", text[i:i + width]))
        return i + width

    def _formula(self, start: int, body: int, end: int, after: int, display: bool) -> int:
        mathml = render_formula(self.text[body:end], display) if self.budget.left > 0 else None
        if mathml is None:
            self.parts.append(_Part("lit", self.text[start:after]))
        else:
            self.budget.left -= len(mathml)
            self.parts.append(_Part("html", mathml))
        return after

    def _neighbour(self, index: int, step: int) -> str:
        """The character next to part `index` on one side ("" at the edge; markup counts as a letter)."""
        j = index + step
        if not 0 <= j < len(self.parts):
            return ""
        part = self.parts[j]
        if part.kind == "html":
            return "x"
        return part.value[-1] if step < 0 else part.value[0]

    def _match_emphasis(self) -> None:
        """Pair emphasis delimiters with a stack; an opener passed over by a closer of another kind stays text.

        Each delimiter is pushed and popped at most once (the latest opener of each kind is found through its own
        list, not by searching the stack), so this is linear too."""
        stack: list[int] = []
        openers: dict[str, list[int]] = {kind: [] for kind in _EMPHASIS}
        for index, part in enumerate(self.parts):
            if part.kind != "delim":
                continue
            before, after = self._neighbour(index, -1), self._neighbour(index, 1)
            if before and not before.isspace() and openers[part.value]:
                opened = openers[part.value].pop()
                while stack[-1] != opened:
                    openers[self.parts[stack.pop()].value].pop()
                stack.pop()
                self.parts[opened].role, part.role = "open", "close"
            elif after and not after.isspace():
                stack.append(index)
                openers[part.value].append(index)


def render_inline(text: str, budget: MathBudget | None = None) -> str:
    """One block of Markdown text (code spans, `$` / `$$` / `\\(` / `\\[` math, emphasis) → HTML."""
    return _Inline(text, budget or MathBudget()).render()


# ----------------------------------------------------------------------------- block structure

MAX_LIST_DEPTH = 8  # deeper indentation continues the deepest list: nesting stays bounded
_ITEM = re.compile(r"([ \t]*)([-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_TABLE_CELL = re.compile(r":?-+:?")


def _heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line (`## Title`), else None."""
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3:
        return None
    level = len(stripped) - len(stripped.lstrip("#"))
    if not 1 <= level <= 6 or stripped[level:level + 1] not in ("", " ", "\t"):
        return None
    text = stripped[level:].strip()
    closed = text.rstrip("#")  # an optional closing run of `#`, after a space
    if closed != text and (not closed or closed[-1] in " \t"):
        text = closed.rstrip()
    return level, text


def _is_rule(line: str) -> bool:
    compact = line.replace(" ", "").replace("\t", "")
    return len(compact) >= 3 and compact[0] in "-*_" and compact == compact[0] * len(compact)


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [cell.strip() for cell in row.split("|")]


def _is_table_rule(line: str) -> bool:
    return line.strip().startswith("|") and all(_TABLE_CELL.fullmatch(cell) for cell in _cells(line))


class _Prose:
    """Markdown blocks of prose: paragraphs, ATX headings, rules, `>` quotes, `-`/`1.` lists (nested by
    indentation), `|` tables. A blank line ends every open block, so no span is ever looked for across one."""

    def __init__(self, budget: MathBudget):
        self.budget, self.out = budget, []
        self.para: list[str] = []
        self.quote: list[str] = []
        self.item: list[str] = []             # the current list item's lines, not yet rendered
        self.lists: list[tuple[int, str]] = []  # open lists: (indent, "ul" | "ol")

    def inline(self, lines: list[str]) -> str:
        return render_inline("\n".join(lines), self.budget)

    def render(self, text: str) -> str:
        lines, i = text.split("\n"), 0
        while i < len(lines):
            i = self.line(lines, i)
        self.flush()
        return "".join(self.out)

    def line(self, lines: list[str], i: int) -> int:
        """Take line `i` (and, for a table, the rows after it); returns the next line's index."""
        line = lines[i]
        heading = _heading(line)
        item = _ITEM.match(line)
        if not line.strip():
            self.flush()
        elif heading:
            self.flush()
            self.out.append(f"<h{heading[0]}>{self.inline([heading[1]])}</h{heading[0]}>")
        elif _is_rule(line):
            self.flush()
            self.out.append("<hr>")
        elif line.strip().startswith("|") and i + 1 < len(lines) and _is_table_rule(lines[i + 1]):
            self.flush()
            return self.table(lines, i)
        elif line.lstrip().startswith(">"):
            self.flush_para()
            self.flush_lists()
            self.quote.append(line.lstrip()[1:].removeprefix(" "))
        elif item and not (self.para and item.group(2)[:-1] not in ("", "1") and item.group(2)[-1] in ".)"):
            # a numbered line interrupts a paragraph only as "1." (CommonMark), so "2024. Then …" stays text
            self.flush_para()
            self.flush_quote()
            self.list_item(len(item.group(1).expandtabs(4)), item.group(2), line[item.end():])
        elif self.lists:
            self.item.append(line.strip())  # a continuation line of the item
        elif self.quote:
            self.quote.append(line.strip())
        else:
            self.para.append(line)
        return i + 1

    def list_item(self, indent: int, marker: str, text: str) -> None:
        tag = "ol" if marker[-1] in ".)" and marker[:-1].isdigit() else "ul"
        self.flush_item()
        while self.lists and indent < self.lists[-1][0]:
            self.close_list()
        top = self.lists[-1] if self.lists else None
        if top and (indent <= top[0] + 1 or len(self.lists) >= MAX_LIST_DEPTH) and top[1] == tag:
            self.out.append("</li><li>")
        else:
            if top and indent <= top[0] + 1:  # same level, other kind of list
                self.close_list()
            number = int(marker[:-1]) if tag == "ol" else 1
            start = f' start="{number}"' if number != 1 else ""
            self.out.append(f"<{tag}{start}><li>")
            self.lists.append((indent, tag))
        self.item = [text.strip()]

    def table(self, lines: list[str], i: int) -> int:
        """A header row, the `|---|` rule, then rows while lines start with `|`; returns the line after it."""
        header = _cells(lines[i])
        body, i = [], i + 2
        while i < len(lines) and lines[i].strip().startswith("|"):
            body.append(self.row(_cells(lines[i]), "td", len(header)))
            i += 1
        self.out.append(f"<table><thead>{self.row(header, 'th', len(header))}</thead>"
                        f"<tbody>{''.join(body)}</tbody></table>")
        return i

    def row(self, cells: list[str], tag: str, width: int) -> str:
        cells = (cells + [""] * width)[:width]  # every row as wide as the header
        return "<tr>" + "".join(f"<{tag}>{self.inline([cell])}</{tag}>" for cell in cells) + "</tr>"

    def close_list(self) -> None:
        self.out.append(f"</li></{self.lists.pop()[1]}>")

    def flush_item(self) -> None:
        if self.item:
            self.out.append(self.inline(self.item))
            self.item = []

    def flush_lists(self) -> None:
        self.flush_item()
        while self.lists:
            self.close_list()

    def flush_para(self) -> None:
        if self.para:
            self.out.append(f"<p>{self.inline(self.para)}</p>")
            self.para = []

    def flush_quote(self) -> None:
        if self.quote:
            self.out.append(f"<blockquote><p>{self.inline(self.quote)}</p></blockquote>")
            self.quote = []

    def flush(self) -> None:
        self.flush_para()
        self.flush_quote()
        self.flush_lists()


# A message renders to at most ~5x its size (escaped text) plus the MathML budget: 128 entries keep the
# transcripts being redrawn at every streamed token in memory without letting the cache grow without bound.
@functools.lru_cache(maxsize=128)
def render_message(text: str) -> str:
    """One chat message (Markdown + LaTeX + fenced code) → allow-listed HTML with MathML formulas."""
    budget, parts = MathBudget(), []
    for block in split_fences(text):
        if block.kind == "code":
            cls = f' class="language-{block.lang}"' if block.lang else ""
            parts.append(f"<pre><code{cls}>{html.escape(block.text, quote=False)}</code></pre>")
        else:
            parts.append(_Prose(budget).render(block.text))
    return sanitize_html("".join(parts))


# ----------------------------------------------------------------------------- text checks

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogates(text: str) -> bool:
    """True when `text` holds surrogates (half a UTF-16 pair, or a byte `surrogateescape` kept): not UTF-8 text."""
    return _SURROGATE.search(text) is not None


def repair_surrogates(text: str) -> str:
    """`text` with split UTF-16 pairs joined and every lone surrogate replaced by U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
