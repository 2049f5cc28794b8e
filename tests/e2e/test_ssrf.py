"""SSRF: a server with production address rules (plain http allowed, so the ADDRESS checks refuse)
never connects to loopback, private, link-local or oddly spelled addresses: the counting origin on
127.0.0.1 sees zero hits, every URL is 400 blocked_media_url."""

from __future__ import annotations

import openai
import pytest

from testkit.media import assert_no_leak, image_bytes
from testkit.origin import Origin
from tests.e2e.conftest import API_KEYS

pytestmark = pytest.mark.xdist_group("strict")


@pytest.fixture(scope="module")
def client(strict_server):
    with strict_server.client(api_key=API_KEYS[0]) as c:
        yield c


def refused_urls(port: int) -> list[str]:
    p = port
    return [
        f"http://127.0.0.1:{p}/x.png", f"http://localhost:{p}/x.png", f"http://[::1]:{p}/x.png",
        f"http://[::ffff:127.0.0.1]:{p}/x.png", f"http://[::ffff:7f00:1]:{p}/x.png",
        f"http://[64:ff9b::7f00:1]:{p}/x.png", f"http://[2002:7f00:1::]:{p}/x.png",
        f"http://2130706433:{p}/x.png", f"http://0x7f000001:{p}/x.png", f"http://0177.0.0.1:{p}/x.png",
        f"http://127.1:{p}/x.png", f"http://0x7f.1:{p}/x.png", f"http://127.0.0.1.:{p}/x.png",
        f"http://0.0.0.0:{p}/x.png", f"http://user@127.0.0.1:{p}/x.png",
        f"http://example.com@127.0.0.1:{p}/x.png", f"http://127.0.0.1:{p}\\@example.com/x.png",
        "http://10.0.0.1/x.png", "http://172.16.5.4/x.png", "http://192.168.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/x.png", "http://224.0.0.1/x.png",
        "http://240.0.0.1/x.png", "http://[fe80::1]/x.png", "http://[fd00::1]/x.png",
        "file:///etc/passwd", "ftp://example.com/x.png", "gopher://127.0.0.1:70/",
    ]


def test_refused_addresses_never_reach_the_origin(client):
    origin = Origin()  # its own, so only these requests could hit it
    origin.add("/x.png", image_bytes(8, 8))
    try:
        check_refused(client, origin)
    finally:
        origin.close()


def check_refused(client, origin: Origin) -> None:
    for url in refused_urls(origin.port):
        for part in ({"type": "image_url", "image_url": {"url": url}},
                     {"type": "video_url", "video_url": {"url": url}},
                     {"type": "audio_url", "audio_url": {"url": url}}):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="tiny", max_tokens=1,
                                               messages=[{"role": "user", "content": [part]}])
            assert e.value.code == "blocked_media_url", (url, e.value.body)
            assert e.value.body["param"] == f"messages[0].content[0].{part['type']}"
            assert_no_leak(e.value.response.text)
    assert sum(origin.hits.values()) == 0
