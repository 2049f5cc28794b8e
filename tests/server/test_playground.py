"""The playground's files over HTTP: served at / with a strict CSP, public under --api-key (and
nothing else with them), gone with --no-playground; the image report the page draws."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.cli import build_parser, config_from_args
from server.config import ServerConfig
from server.playground import STATIC_DIR, static_files
from tests.conftest import png_data_url, random_image

KEY = "playground-key"


def make_client(tiny_model, **config) -> TestClient:
    return TestClient(
        create_app(
            ServerConfig(model="tiny", served_model_name="tiny", media_workers=1, **config), loaded=tiny_model
        )
    )


@pytest.fixture(scope="module")
def keyed(tiny_model):
    with make_client(tiny_model, api_keys=(KEY,)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield client


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.links: list[dict] = []
        self.inline: list[str] = []  # what a CSP without 'unsafe-inline' would block

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "link":
            self.links.append(attrs)
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {name}" for name in attrs if name == "style" or name.startswith("on")]

    def handle_data(self, data) -> None:
        if self.lasttag in ("script", "style") and data.strip():
            self.inline.append(f"<{self.lasttag}> {data.strip()[:40]}")


def test_the_page_has_a_strict_csp_and_no_inline_code(keyed):
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    parsed = _Page()
    parsed.feed(page.text)
    assert parsed.inline == []
    assert parsed.scripts == [{"type": "module", "src": "/playground/app.js"}]
    for url in [s["src"] for s in parsed.scripts] + [link["href"] for link in parsed.links]:
        assert keyed.get(url).status_code == 200, url


def test_every_module_the_page_imports_is_served_with_the_right_type(keyed):
    for path in STATIC_DIR.glob("*.js"):
        for imported in re.findall(r'from "\./([\w-]+\.js)"', path.read_text()):
            response = keyed.get(f"/playground/{imported}")
            assert response.status_code == 200, (path.name, imported)
            assert response.headers["content-type"].startswith("text/javascript")
            assert response.headers["content-security-policy"]


def test_no_script_inserts_text_as_html():
    for path in STATIC_DIR.glob("*.js"):
        text = path.read_text()
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in text, (path.name, sink)


def test_the_page_is_public_and_nothing_else_under_a_key(keyed):
    for route in static_files():
        assert keyed.get(route).status_code == 200, route
    for path in (
        "/v1/models",
        "/metrics",
        "/playground/missing.js",
        "/playground/../v1/models",
        "/playground/%2e%2e/metrics",
        "//playground/app.js/../../version",
        "/playground/",
    ):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_no_playground_serves_no_page(tiny_model):
    with make_client(tiny_model, playground=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/playground/app.js").status_code == 404
        assert client.get("/health").status_code == 200


def test_the_flag_and_its_variable(monkeypatch):
    def parse(*argv):
        return config_from_args(build_parser().parse_args(["serve", "--model", "m", *argv]))

    assert parse().playground is True
    assert parse("--no-playground").playground is False
    monkeypatch.setenv("LLAVA_SERVE_NO_PLAYGROUND", "1")
    assert parse().playground is False


def test_the_image_report_carries_the_grid_the_page_draws(keyed):
    url = png_data_url(random_image(640, 480))
    r = keyed.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": "tiny",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        },
    )
    assert r.status_code == 200, r.text
    report = r.json()["media"][0]
    processing = report["processing"]
    cols, rows = processing["grid"]
    parts = processing["token_parts"]
    assert len(parts["crops"]) == rows and all(len(row) == cols for row in parts["crops"])
    assert processing["resolution"] == [cols * 42, rows * 42]  # the tiny tower's 42 px crops
    assert parts["base"] + sum(map(sum, parts["crops"])) + parts["newlines"] == report["tokens"]
    assert report["tokens"] == r.json()["usage"]["prompt_tokens_details"]["image_tokens"]
