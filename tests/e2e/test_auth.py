"""API keys on every route but /health and /ready, whatever the path's spelling."""

from __future__ import annotations

import socket

import openai
import pytest

from tests.e2e.conftest import API_KEYS

pytestmark = pytest.mark.xdist_group("strict")

PROTECTED = [("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("POST", "/v1/chat/completions"),
             ("GET", "/metrics"), ("GET", "/version"), ("GET", "/no/such/route"), ("GET", "/playground/no-such.js")]
ODD_SPELLINGS = ["//v1/models", "/v1//models", "/%76%31/models", "/v1/models/", "/./v1/models", "/v1/./models",
                 "/health/../v1/models", "/health/%2e%2e/v1/models", "/health%2F..%2Fv1%2Fmodels",
                 "/ready/..%2f..%2fv1/models", "/health/..\\v1/models", "/%2e/v1/models", "/v1/models%2F",
                 "/HEALTH/../v1/models", "/health/%252e%252e/v1/models", "/metrics", "/metrics/", "//metrics",
                 "/playground/app.js/../../v1/models", "/playground/%2e%2e/v1/models", "/playground/..%2f..%2fmetrics"]


def raw_request(base_url: str, method: str, path: str, key: str | None = None, body: bytes = b"") -> tuple[int, str]:
    """Send the request line exactly as written (clients normalise paths; attackers do not)."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}",
             "Content-Type: application/json"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n", 1)[0].decode()
    return int(head.split()[1]), data.decode("latin-1")


def test_every_route_needs_a_key(strict_server):
    for method, path in PROTECTED:
        status, text = raw_request(strict_server.base_url, method, path)
        assert status == 401, (path, text)
        assert '"code": "invalid_api_key"' in text and "x-request-id" in text.lower()
        for key in ("wrong", API_KEYS[0] + "x", API_KEYS[0][:-1], ""):
            assert raw_request(strict_server.base_url, method, path, key)[0] == 401, (path, key)
        for key in API_KEYS:
            assert raw_request(strict_server.base_url, method, path, key)[0] != 401, (path, key)


def test_probes_and_the_playground_page_are_public(strict_server):
    for path in ("/health", "/ready", "/", "/playground/app.js"):
        assert raw_request(strict_server.base_url, "GET", path)[0] == 200, path


@pytest.mark.parametrize("path", ODD_SPELLINGS)
def test_odd_spellings_never_pass_without_a_key(strict_server, path):
    status, text = raw_request(strict_server.base_url, "GET", path)
    assert status in (400, 401), (path, text)
    assert "tiny" not in text.split("\r\n\r\n", 1)[-1]


def test_the_sdk_with_and_without_a_key(strict_server):
    with strict_server.client(api_key="not-a-key") as bad, pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.code == "invalid_api_key" and e.value.status_code == 401
    with strict_server.client(api_key=API_KEYS[1]) as good:
        assert [m.id for m in good.models.list().data] == ["tiny"]
        r = good.chat.completions.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].finish_reason in ("length", "stop")
