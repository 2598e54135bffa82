"""Chat text → HTML (`glm_ms.render`, `glm_ms.sanitize`): Markdown, LaTeX and code render; markup from text never
does; every renderer's time grows linearly with the text."""
import time

import pytest

from glm_ms.render import (has_lone_surrogates, render_formula, render_message, repair_surrogates,
                           split_fences)
from glm_ms.sanitize import sanitize_html
from tests.app.pages import parsed_elements

# ----------------------------------------------------------------------------- what renders


def test_markdown_latex_and_code_render_as_html():
    out = render_message("质能方程 $E=mc^2$ 和 **粗体**\n\n```python\nif a < b and c > d: print('$x')\n```")
    assert "<math" in out and "<msup><mi>c</mi><mn>2</mn></msup>" in out
    assert "<strong>粗体</strong>" in out
    # the code block keeps its text verbatim (escaped), with no formula made of its `$`
    assert "<pre><code class=\"language-python\">if a &lt; b and c &gt; d: print('$x')</code></pre>" in out


def test_unclosed_fence_while_streaming_is_still_a_code_block():
    assert render_message("看代码：\n```js\nlet a = 1 <") == (
        "<p>看代码：</p><pre><code class=\"language-js\">let a = 1 &lt;</code></pre>")


def test_html_in_a_message_is_shown_literally():
    assert render_message("<b>hi</b> & 1 < 2") == "<p>&lt;b&gt;hi&lt;/b&gt; &amp; 1 &lt; 2</p>"


def test_markdown_blocks():
    text = ("# 标题\n步骤：\n1. 一 *斜体*\n2. 二\n   - 子项 `a<b`\n\n"
            "| 名 | 值 |\n|---|:-:|\n| x | $x$ |\n\n> 引用\n\n---\n~~删~~ 第一行\n第二行")
    x = '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"><mrow><mi>x</mi></mrow></math>'
    assert render_message(text) == (
        "<h1>标题</h1><p>步骤：</p><ol><li>一 <em>斜体</em></li><li>二<ul><li>子项 <code>a&lt;b</code></li></ul>"
        f"</li></ol><table><thead><tr><th>名</th><th>值</th></tr></thead><tbody><tr><td>x</td><td>{x}</td></tr>"
        "</tbody></table><blockquote><p>引用</p></blockquote><hr><p><del>删</del> 第一行<br>第二行</p>")


def test_math_delimiters_and_prices():
    assert 'display="block"' in render_message("$$\na^2\n$$") and 'display="block"' in render_message(r"\[a\]")
    assert "<math" in render_message(r"\(a\)")
    assert render_message("costs $5 and $10, \\$x\\$") == "<p>costs $5 and $10, $x$</p>"
    assert render_message("$\\frac{1}{$") == "<p>$\\frac{1}{$</p>"  # latex2mathml cannot read it: the source


def test_formula_text_is_escaped():
    out = render_formula(r"\text{<img src=x onerror=alert(1)>} < b")
    assert "<mtext>&lt;img" in out and "<img" not in out and "<mo>&#x0003C;</mo>" in out


def test_code_spans_take_matching_backtick_runs():
    assert render_message("``a ` b`` and `c`") == "<p><code>a ` b</code> and <code>c</code></p>"
    assert render_message("x ``` y") == "<p>x ``` y</p>"


def test_split_fences():
    blocks = split_fences("a\n```py x\n1\n```\nb")
    assert [(b.kind, b.text, b.lang) for b in blocks] == [("prose", "a", ""), ("code", "1", "py"), ("prose", "b", "")]


# ----------------------------------------------------------------------------- what never renders


@pytest.mark.parametrize("text", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](&#x6a;avascript:alert(1))",
    "![x](x\" onerror=\"alert(1))",
    "```\"><img src=x onerror=alert(1)>\nx\n```",
    "$\\text{<img src=x onerror=alert(1)>}$",
])
def test_untrusted_text_cannot_inject_markup(text):
    elements = parsed_elements(render_message(text))
    assert not {tag for tag, _ in elements} & {"script", "img", "svg", "iframe", "style"}, elements
    for tag, attrs in elements:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert "javascript" not in attrs.get("href", "").lower(), (tag, attrs)


FORGED = ('<div class="glm-msg glm-bot"><div class="glm-role">ChatGLM</div><h1>Admin</h1>'
          '<a href="https://evil.example" title="t">log in</a><img src=x onerror=alert(1)><script>x()</script></div>')
FORGED_ESCAPED = FORGED.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.parametrize("opener, closer", [("$", "$"), ("`", "`"), ("$$", "$$"), ("\\(", "\\)"), ("``", "``")])
def test_spans_never_cross_a_blank_line(opener, closer):
    # the middle paragraph once stayed unescaped, and was then rendered as Markdown with its raw HTML
    out = render_message(f"a {opener} b\n\n{FORGED}\n\nc {closer} d")
    assert f"<p>{FORGED_ESCAPED}</p>" in out
    assert {tag for tag, _ in parsed_elements(out)} == {"p"}


def test_markdown_links_and_images_stay_text():
    out = render_message('[log in](https://evil.example "t") ![x](https://evil.example/x.png)')
    assert out == '<p>[log in](https://evil.example "t") ![x](https://evil.example/x.png)</p>'


def test_sanitizer_keeps_only_what_the_renderer_emits_and_balances_tags():
    assert sanitize_html('<p onclick="x" class="c" title="t">a<strong>b</p><a href="https://x.org">l</a><mi/>'
                         '<code class="language-py">x</code><code class="glm-msg">y</code><ol start="3">'
                         '<li>z</li></ol><div class="glm-bot"><span>w</span></div>') == (
        '<p>a<strong>b</strong></p>l<mi></mi><code class="language-py">x</code><code>y</code><ol start="3">'
        '<li>z</li></ol>w')


def test_lone_surrogates_are_found_and_repaired():
    assert has_lone_surrogates("a\ud800b") and has_lone_surrogates("\udcff")
    assert not has_lone_surrogates("a😀b")
    assert repair_surrogates("a\ud800b") == "a\ufffdb"
    assert repair_surrogates("\ud83d\ude00") == "😀"  # a pair split into two code points is joined


# ----------------------------------------------------------------------------- linear time

HOSTILE = {
    "open parens": lambda n: "\\(" * (n // 2),
    "open brackets": lambda n: "\\[" * (n // 2),
    "backticks after a letter": lambda n: "a" + "`" * n,
    "backtick runs": lambda n: "".join("`" * k + " " for k in range(1, n))[:n],
    "prose": lambda n: ("Lorem ipsum dolor sit amet, <b>x</b> & y. " * (n // 40 + 1))[:n],
    "formulas": lambda n: " ".join(f"$x_{{{i}}}$" for i in range(n // 9)),
    "dollars": lambda n: "$x " * (n // 3),
    "emphasis openers": lambda n: "**a *b ~~c " * (n // 11),
    "nested list": lambda n: "".join(" " * (i % 40) + "- x\n" for i in range(n // 25)),
    "table": lambda n: "|a|b|\n|-|-|\n" + "|1|2|\n" * (n // 6),
}


def render_seconds(text):
    """Best of three, each from cold caches."""
    best = float("inf")
    for _ in range(3):
        render_message.cache_clear()
        render_formula.cache_clear()
        start = time.perf_counter()
        render_message(text)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("name", list(HOSTILE))
def test_rendering_time_grows_linearly(name):
    small, large = HOSTILE[name](8_000), HOSTILE[name](32_000)
    # The best of three ratios, each timed back to back: another process taking the CPU for a moment (a CI box
    # running other jobs) can slow one timing, not all three pairs, while a quadratic pass is ~16x in every pair.
    ratio = min(render_seconds(large) / render_seconds(small) for _ in range(3))
    assert ratio < 10, f"{name}: 4x the text took {ratio:.1f}x the time (quadratic would be ~16x)"
