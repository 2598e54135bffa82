"""The chat page in headless Chromium (Debian `chromium`, driven by Playwright's Python package).

Checks what a person sees: the demo-model note, an answer that grows while it streams, `$E=mc^2$` as MathML,
a fenced code block as `<pre><code>`, HTML in a message shown as text (nothing runs), Stop, Clear History.
"""
import os

import pytest

from tests.app.pages import running_app

CHROMIUM = "/usr/bin/chromium"
MESSAGE = "质能方程 $E=mc^2$ 的代码：\n```python\nprint('hi' if 1 < 2 else 0)\n```"
HOSTILE = "<img src=x onerror=\"window.__xss=1\"> <script>window.__xss=2</script> {{value}} <b>bold?</b>"

# Records every text the last answer shows, so a streamed answer can be seen growing.
OBSERVE = """() => {
  window.__seen = [];
  const root = document.querySelector('#transcript');
  new MutationObserver(() => {
    const bodies = root.querySelectorAll('.glm-bot .glm-body');
    if (bodies.length) window.__seen.push(bodies[bodies.length - 1].innerText);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


def send(page, text):
    """Type `text`, press Submit, wait until the answer is complete; returns the number of answers shown."""
    sent = page.locator("#transcript .glm-user").count()
    page.locator("#query textarea").fill(text)
    page.locator("#submit").click()
    page.wait_for_function(f"document.querySelectorAll('#transcript .glm-user').length > {sent}"
                           " && !document.querySelector('#transcript .glm-pending')", timeout=180_000)
    assert page.locator("#transcript .glm-error").count() == 0, page.locator("#transcript .glm-error").inner_text()
    return sent + 1


@pytest.mark.browser
@pytest.mark.server
def test_chat_page_in_chromium(browser, tmp_path):
    with running_app(tmp_path, max_length=128) as (url, _):
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#query textarea", timeout=60_000)
        assert "random weights" in page.locator("#demo-note").inner_text()
        page.evaluate(OBSERVE)

        assert send(page, MESSAGE) == 1
        grown = [text for text in dict.fromkeys(page.evaluate("window.__seen")) if text.strip()]
        assert len(grown) >= 2, grown  # the answer was replaced several times while it streamed
        user = page.locator("#transcript .glm-user").first
        assert user.locator("math").count() == 1  # $E=mc^2$ as MathML
        assert user.locator("math msup").count() == 1
        code = user.locator("pre > code")
        assert code.count() == 1 and code.inner_text() == "print('hi' if 1 < 2 else 0)"
        assert "language-python" in code.get_attribute("class")
        answer = page.locator("#transcript .glm-bot .glm-body").first.inner_text()
        assert answer.strip() and answer == grown[-1]

        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert (tmp_path / "chat.png").stat().st_size > 10_000

        send(page, HOSTILE)
        hostile = page.locator("#transcript .glm-user .glm-body").nth(1)
        assert hostile.locator("img, script, b").count() == 0
        assert hostile.inner_text().strip() == HOSTILE  # shown as typed, nothing ran
        assert page.evaluate("window.__xss") is None

        # Stop: the answer stops growing, stays shown, and the next message is answered
        page.locator("#query textarea").fill("讲一个很长的故事")
        page.locator("#submit").click()
        page.wait_for_function("(() => { const b = document.querySelector('#transcript .glm-pending .glm-body');"
                               " return b && b.innerText.trim().length > 3; })()", timeout=120_000)
        page.locator("#stop").click()
        page.wait_for_function("!document.querySelector('#transcript .glm-pending')", timeout=30_000)
        stopped = page.locator("#transcript .glm-bot .glm-body").nth(2)
        text = stopped.inner_text()
        page.wait_for_timeout(2000)
        assert text.strip() and stopped.inner_text() == text
        assert send(page, "你好") == 4

        page.locator("#clear").click()
        page.wait_for_function("document.querySelector('#transcript').innerText.includes('No messages yet')",
                               timeout=30_000)
        assert page.locator("#transcript .glm-msg").count() == 0
