"""The web playground in a real headless Chromium (Debian's, driven by Playwright) against a real
server process on the tiny demo with an audio tower, behind an API key.

One browser for the module and the session's keyed server; each test opens a fresh browser
context (its own local storage), so the key flow starts from nothing. `make chromium` installs
the browser.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from testkit.media import image_bytes, video_bytes
from tests.e2e.conftest import API_KEYS, ServerProcess

pytestmark = pytest.mark.xdist_group("strict")

KEY = API_KEYS[0]
CHROMIUM = "/usr/bin/chromium"
# Playwright's expectations wait 5 s by default; on a loaded 2-core machine a first token can take
# longer. A generous wait only stops a hung test: the checks are of what the page shows, not how fast.
expect.set_options(timeout=60_000)
DONE = "[data-testid=assistant-message][data-state=done]"


@pytest.fixture(scope="module")
def server(strict_server) -> ServerProcess:
    """The session's server behind API keys (tiny demo with an audio tower), shared with test_auth."""
    return strict_server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which("chromium") or shutil.which(CHROMIUM), "install Debian's chromium: `make chromium`"
    with sync_playwright() as p:
        # a fake microphone (a beep), granted without a prompt
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("playground-files")
    made = {
        "image.png": image_bytes(640, 480),
        "clip.mp4": video_bytes(num_frames=12, fps=6, codec="h264"),  # a codec Chromium plays
        "broken.png": b"these bytes are not an image",
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return {name: str(folder / name) for name in made}


@pytest.fixture
def contexts(browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for context in made:
        context.close()


@pytest.fixture
def open_page(browser, server, contexts):
    return lambda key=KEY: new_page(browser, server, contexts, key)


def new_page(browser: Browser, server: ServerProcess, contexts: list, key: str | None) -> Page:
    """A fresh context (no stored key unless `key`), every console error and CSP report collected."""
    context = browser.new_context(permissions=["microphone"], viewport={"width": 1280, "height": 900})
    contexts.append(context)
    if key:
        context.add_init_script(f"localStorage.setItem('llava-serve.api-key', {key!r})")
    page = context.new_page()
    page.problems = []  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(server.base_url + "/")
    return page


def connected(page: Page) -> None:
    expect(page.locator("#model-name")).to_contain_text("context 4096")


def ask(page: Page, text: str, **sampling) -> None:
    for field, value in sampling.items():
        if field == "ignore_eos":
            page.check("#ignore-eos")
        else:
            page.fill(f"#{field.replace('_', '-')}", str(value))
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def metric(server: ServerProcess, name: str, label: str = "") -> float:
    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).text
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*{re.escape(label)}[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def test_the_key_flow(open_page, server):
    page = open_page(key=None)
    sent = []
    page.on("request", lambda r: r.url.startswith(server.base_url + "/v1/") and sent.append(r.headers))
    expect(page.locator("#key-panel")).to_be_visible()  # /v1/models said 401: the page asks
    page.fill("#key-input", "wrong")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("The key was refused: a valid API key is required")
    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    connected(page)
    expect(page.locator("#key-panel")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('llava-serve.api-key')") == KEY
    expect(page.locator("#live-running")).to_have_text("0")  # /metrics read with the key
    assert [h.get("authorization") for h in sent][:2] == ["Bearer wrong", f"Bearer {KEY}"]
    assert all(h.get("authorization") == f"Bearer {KEY}" for h in sent[1:])
    page.reload()  # the key stays in this browser
    connected(page)
    assert page.problems == [] or all("401" in p for p in page.problems), page.problems


def test_a_streamed_multi_turn_chat(open_page, server):
    page = open_page()
    connected(page)
    page.evaluate("""() => {
      window.answerUpdates = 0;
      new MutationObserver(() => window.answerUpdates++).observe(document.getElementById("messages"),
        {subtree: true, childList: true, characterData: true});
    }""")
    bodies = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    page.fill("#system-prompt", "Be brief.")
    ask(page, "Describe a sunset.", temperature=0, max_tokens=24, seed=3)
    expect(page.locator(DONE)).to_have_count(1)
    answer = page.locator("[data-testid=answer]").first.text_content()
    reference = server.client(KEY).chat.completions.create(
        model="tiny",
        temperature=0,
        max_tokens=24,
        seed=3,
        top_p=1,
        extra_body={"top_k": 0},
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe a sunset."}]},
        ],
    )
    assert answer == reference.choices[0].message.content  # what the server said, token by token
    assert page.evaluate("window.answerUpdates") >= 4  # the bubble grew delta by delta
    stats = page.locator("[data-testid=stats]").first.text_content()
    assert (
        re.search(r"TTFT \d+\.\d\d s", stats) and f"completion {reference.usage.completion_tokens}" in stats
    )
    assert f"prompt {reference.usage.prompt_tokens} (text {reference.usage.prompt_tokens})" in stats

    ask(page, "And a sunrise?")
    expect(page.locator(DONE)).to_have_count(2)
    assert [m["role"] for m in bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert bodies[1]["messages"][2]["content"] == answer
    assert bodies[1]["temperature"] == 0 and bodies[1]["max_tokens"] == 24 and bodies[1]["stream"] is True

    second = page.locator("[data-testid=answer]").nth(1).text_content()
    page.locator(".regenerate").last.click()  # greedy: the same answer again, as a new request
    expect(page.locator(DONE)).to_have_count(2)
    expect(page.locator("[data-testid=answer]").nth(1)).to_have_text(second)
    assert len(bodies) == 3 and bodies[2]["messages"] == bodies[1]["messages"]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()") == answer
    page.click("#clear-button")
    expect(page.locator(".message")).to_have_count(0)
    assert page.problems == [], page.problems


def hand_over(page, data: bytes, name: str, target: str, how: str) -> None:
    """A PNG file given to the page as a user does: dropped on (`drop`) or pasted into (`paste`) an element."""
    page.evaluate(
        """([b64, name, target, how]) => {
      const dt = new DataTransfer();
      dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type: "image/png"}));
      const event = how === "drop" ? new DragEvent("drop", {dataTransfer: dt, bubbles: true})
                                   : new ClipboardEvent("paste", {clipboardData: dt, bubbles: true});
      document.getElementById(target).dispatchEvent(event);
    }""",
        [base64.b64encode(data).decode(), name, target, how],
    )


def test_image_and_video_reports_are_drawn(open_page, server, files):
    page = open_page()
    connected(page)
    hand_over(page, image_bytes(640, 480), "dropped.png", "drop-zone", "drop")  # drag and drop onto the chat
    page.set_input_files("#file-input", [files["clip.mp4"]])
    expect(page.locator("#attachments .thumb")).to_have_count(2)  # thumbnails before sending
    bodies = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    ask(page, "What is in these?", max_tokens=4)
    expect(page.locator(DONE)).to_have_count(1)
    content = bodies[0]["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "video_url", "text"]

    reply = server.client(KEY).chat.completions.create(
        model="tiny", max_tokens=1, messages=[{"role": "user", "content": content[:2]}]
    )
    image, video = reply.model_extra["media"]
    cols, rows = image["processing"]["grid"]
    parts = image["processing"]["token_parts"]
    cells = page.locator("[data-testid=crop-cell]")
    expect(cells).to_have_count(cols * rows)
    assert cells.all_text_contents() == [str(n) for row in parts["crops"] for n in row]
    expect(page.locator("[data-testid=base-crop]")).to_contain_text(f"base {parts['base']}")
    expect(page.locator("[data-testid=media-report]").first).to_contain_text(f"{image['tokens']} tokens")
    frames = page.locator("[data-testid=video-frame] .cell-label")
    assert frames.all_text_contents() == [f"{t:.2f} s" for t in video["processing"]["timestamps"]]
    expect(page.locator("[data-testid=video-frame] canvas.painted")).to_have_count(
        frames.count()
    )  # pixels drawn

    page.set_input_files("#file-input", [files["image.png"]])  # the same picture again: the encoder cache
    ask(page, "Again.", max_tokens=4)
    expect(page.locator(DONE)).to_have_count(2)
    last = page.locator("[data-testid=assistant-message]").last
    expect(last.locator("[data-testid=media-report].cache-hit")).to_have_count(1)
    expect(last.locator("[data-testid=stats] .badge.hit")).to_contain_text("prefix cache")
    assert page.problems == [], page.problems


def test_stop_aborts_the_generation_on_the_server(open_page, server):
    page = open_page()
    connected(page)
    aborted = metric(server, "llava_requests_total", 'finish_reason="abort"')
    generated = metric(server, "llava_generation_tokens_total")
    ask(page, "Talk for a long time.", max_tokens=3000, ignore_eos=True)
    expect(page.locator("[data-testid=answer]")).not_to_have_text("")
    expect(page.locator("#live-running")).to_have_text("1")  # the live panel sees it running
    page.click("#stop-button")
    expect(page.locator("[data-testid=assistant-message]")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#send-button")).to_be_visible()
    deadline = time.monotonic() + 10
    while (
        metric(server, "llava_requests_total", 'finish_reason="abort"') == aborted
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert metric(server, "llava_requests_total", 'finish_reason="abort"') == aborted + 1
    assert metric(server, "llava_requests_running") == 0
    assert metric(server, "llava_generation_tokens_total") - generated < 3000
    expect(page.locator("#live-throughput")).to_have_text(re.compile(r"^(?!0\.0$)\d+\.\d$"))  # tokens/s > 0

    bodies = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    ask(page, "Talk again.")
    expect(page.locator("[data-testid=answer]").last).not_to_have_text("")
    page.click("#clear-button")  # while it streams: the answer is dropped, not kept in the new chat
    ask(page, "Fresh start.", max_tokens=4)
    expect(page.locator(DONE)).to_have_count(1)
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user"]
    assert page.problems == [], page.problems


def test_a_bad_file_shows_the_openai_error_and_the_chat_goes_on(open_page, server, files):
    page = open_page()
    connected(page)
    hand_over(page, Path(files["broken.png"]).read_bytes(), "broken.png", "prompt", "paste")  # paste into the box
    expect(page.locator("#attachments .thumb")).to_have_count(1)
    ask(page, "What is this?")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("the image could not be decoded")
    expect(error).to_contain_text("HTTP 400 · code invalid_image · param messages[0].content[0].image_url")
    expect(page.locator("[data-testid=user-message].refused")).to_have_count(1)
    ask(page, "Hello?", max_tokens=4)  # the refused message is not sent again
    expect(page.locator(DONE)).to_have_count(1)
    assert [e for e in page.problems if "400" not in e] == []


def test_a_microphone_recording_is_sent_as_input_audio(open_page, server):
    page = open_page()
    connected(page)
    bodies = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    page.click("#mic-button")
    expect(page.locator("#mic-button")).to_have_class(re.compile("recording"))
    page.wait_for_timeout(800)
    page.click("#mic-button")
    expect(page.locator("#attachments .thumb[data-kind=audio]")).to_have_count(1)
    ask(page, "What did I say?", max_tokens=4)
    expect(page.locator(DONE)).to_have_count(1)
    part = bodies[0]["messages"][0]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    assert base64.b64decode(part["input_audio"]["data"])[:4] == b"RIFF"
    expect(page.locator("[data-testid=media-report]")).to_contain_text("audio 1")
    assert page.problems == [], page.problems


def test_detail_low_sends_the_base_view_only(open_page, server, files):
    page = open_page()
    connected(page)
    page.set_input_files("#file-input", [files["image.png"]])
    toggle = page.locator("#attachments [data-testid=detail]")
    expect(toggle).to_have_value("auto")  # the default: the checkpoint's anyres, no field sent
    toggle.select_option("low")
    bodies = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    ask(page, "What is this?", max_tokens=4)
    expect(page.locator(DONE)).to_have_count(1)
    part = bodies[0]["messages"][0]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["detail"] == "low"

    reply = server.client(KEY).chat.completions.create(
        model="tiny", max_tokens=1, messages=[{"role": "user", "content": [part]}]
    )
    (image,) = reply.model_extra["media"]
    assert image["processing"]["mode"] == "base_view" and image["processing"]["detail"] == "low"
    report = page.locator("[data-testid=media-report]")
    expect(report).to_have_attribute("data-mode", "base_view")
    expect(report).to_contain_text("the base view only, detail low")
    expect(report).to_contain_text(f"{image['tokens']} tokens")
    expect(report.locator("[data-testid=crop-grid]")).to_have_count(0)  # no anyres grid drawn
    expect(page.locator("[data-testid=user-message] .thumb-detail")).to_have_text("detail low")
    assert page.problems == [], page.problems
