"""The web UI in real headless Chromium (Debian's `chromium` + `chromedriver`, driven by selenium): send a message
and watch it stream, stop it, regenerate, reload and find the conversation again; the header names the model, an
empty chat shows a hint, regenerate and undo wait for something to act on; the markdown renderer escapes HTML.
Skipped when no chromium/chromedriver binary is installed (`apt-get install chromium chromium-driver`)."""
import shutil
import time
from pathlib import Path

import pytest

import engine
from live_server import LiveServer

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no chromium/chromedriver binary (apt-get install chromium chromium-driver)")


class SlowModel:
    """The tiny model, 30 ms per forward: answers stream slowly enough for a browser to watch and stop them."""

    def __init__(self, model):
        self.model, self.config, self.device = model, model.config, model.device

    def forward_packed(self, *args, **kwargs):
        time.sleep(0.03)
        return self.model.forward_packed(*args, **kwargs)


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load(str(TINY), n_ctx=512))
    srv.service.scheduler.model = SlowModel(srv.service.scheduler.model)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def test_settings_show_the_server_sampling_defaults(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "opt-max_tokens")
    assert wait_for(lambda: box.get_attribute("placeholder")) == "rest of the context"
    assert browser.find_element(By.ID, "opt-temperature").get_attribute("placeholder") == "0 (default)"


def set_options(browser, **values: str) -> None:
    """Open the settings panel and type each value into its option box (opt-<name>)."""
    from selenium.webdriver.common.by import By
    browser.execute_script("document.getElementById('settings').open = true")
    for name, value in values.items():
        box = browser.find_element(By.ID, f"opt-{name}")
        box.clear()
        box.send_keys(value)


def test_send_stream_stop_regenerate_reload(server, browser):
    from selenium.webdriver.common.by import By
    find = browser.find_element
    browser.get(server.url + "/")
    wait_for(lambda: find(By.ID, "model-name").get_attribute("textContent") not in ("", "…"))
    set_options(browser, max_tokens="150", temperature="0")
    find(By.ID, "input").send_keys("Hello *there*")
    find(By.ID, "send").click()

    def texts(selector: str) -> list[str]:  # read in one script: the page re-renders messages as they stream
        return browser.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)",
                                      selector)

    def answer() -> str:
        return (texts(".message.assistant .content") or [""])[-1]

    def stats() -> str:
        return (texts(".message.assistant .stats") or [""])[-1]

    first = wait_for(answer)
    wait_for(lambda: len(answer()) > len(first))  # it streams: the answer grows while we watch
    assert texts(".message.user") == ["Hello *there*"]
    find(By.ID, "stop").click()
    shown = wait_for(stats)
    assert "cancelled" in shown and "tok/s" in shown
    last_answer = "return state.messages[state.messages.length - 1].content"  # the text, before markdown
    stopped = browser.execute_script(last_answer)
    assert stopped and not find(By.ID, "send").get_attribute("disabled")

    find(By.ID, "regenerate").click()
    wait_for(lambda: "length" in stats(), timeout=60)
    regenerated = browser.execute_script(last_answer)
    assert regenerated.startswith(stopped) and len(regenerated) > len(stopped)  # greedy: the same start, finished
    shown = answer()

    browser.refresh()
    wait_for(lambda: texts("#sessions li.active .name") == ["Hello *there*"])
    wait_for(lambda: answer() == shown)
    assert browser.execute_script(last_answer) == regenerated
    assert texts(".message.user") == ["Hello *there*"]


def test_header_hint_and_buttons_follow_the_conversation(server, browser):
    from selenium.webdriver.common.by import By
    find = browser.find_element
    browser.get(server.url + "/")
    model = server.service.model_id
    wait_for(lambda: find(By.ID, "model-name").text == model)
    find(By.ID, "new-chat").click()
    hint = wait_for(lambda: browser.execute_script(
        "const h = document.getElementById('empty-hint'); return h && h.innerText"))
    assert model in hint and "Shift+Enter" in hint
    buttons = "return ['regenerate', 'undo'].map(id => document.getElementById(id).disabled)"
    assert browser.execute_script(buttons) == [True, True]
    set_options(browser, max_tokens="4", temperature="0")
    find(By.ID, "input").send_keys("Hi")
    find(By.ID, "send").click()
    assert not browser.find_elements(By.ID, "empty-hint")
    assert browser.execute_script(buttons) == [True, True]  # while the answer streams
    wait_for(lambda: browser.execute_script("return document.querySelector('.message.assistant .stats')?.innerText"))
    assert browser.execute_script(buttons) == [False, False]
    find(By.ID, "undo").click()
    wait_for(lambda: browser.find_elements(By.ID, "empty-hint"))
    assert browser.execute_script(buttons) == [True, True]


def test_markdown_is_rendered_and_escaped(server, browser):
    browser.get(server.url + "/")
    html = browser.execute_script(
        "return renderMarkdown('# Title\\n<img src=x onerror=alert(1)> **bold** `a<b`\\n\\n```py\\nif a < b:\\n"
        "    print(\"<script>\")\\n```\\n- one\\n- two')")
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<code>a&lt;b</code>" in html
    assert '<pre data-lang="py"><code>if a &lt; b:\n    print(&quot;&lt;script&gt;&quot;)</code></pre>' in html
    assert "<ul><li>one</li><li>two</li></ul>" in html
