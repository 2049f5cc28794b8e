"""SSRF-safe fetching against a counting origin on loopback: addresses, spellings, redirects, caps."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess

import pytest

from server.config import FetchPolicy
from server.media import MediaError
from server.media.fetch import MediaFetcher, is_refused_address, parse_host
from testkit.origin import Origin


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.close()


def fetch(policy: FetchPolicy, url: str, modality: str = "image"):
    return asyncio.run(MediaFetcher(policy).fetch(url, modality))


def refusal(policy: FetchPolicy, url: str, modality: str = "image") -> str:
    with pytest.raises(MediaError) as e:
        fetch(policy, url, modality)
    return e.value.code


LOCAL = FetchPolicy(allow_http=True, allow_loopback=True)
STRICT = FetchPolicy(allow_http=True)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "2001::1", "::127.0.0.1",
])
def test_non_global_addresses_are_refused(address):
    assert is_refused_address(ipaddress.ip_address(address), allow_loopback=False)


def test_public_addresses_pass_and_loopback_only_when_allowed():
    for address in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert not is_refused_address(ipaddress.ip_address(address), allow_loopback=False)
    assert not is_refused_address(ipaddress.ip_address("127.0.0.1"), allow_loopback=True)
    assert is_refused_address(ipaddress.ip_address("10.0.0.1"), allow_loopback=True)


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "127.0.0.1.",
                                  "017700000001", "1.2.3.04"])
def test_odd_ip_spellings_are_refused(host):
    with pytest.raises(MediaError) as e:
        parse_host(host)
    assert e.value.code == "blocked_media_url"


def test_hosts_parse():
    assert parse_host("Example.COM.") == "example.com"
    assert parse_host("8.8.8.8") == ipaddress.IPv4Address("8.8.8.8")
    assert parse_host("bücher.example") == "xn--bcher-kva.example"


def test_loopback_origin_served_only_when_allowed(origin):
    url = origin.add("/ok.png", b"pixels")
    assert fetch(LOCAL, url).data == b"pixels"
    before = origin.hits["/ok.png"]
    assert refusal(STRICT, url) == "blocked_media_url"
    assert refusal(FetchPolicy(), url) == "blocked_media_url"  # http itself is off by default
    assert refusal(STRICT, origin.url("/ok.png", "localhost")) == "blocked_media_url"  # resolved by us
    assert origin.hits["/ok.png"] == before


def test_redirects_are_rechecked_and_bounded(origin):
    target = origin.add("/target", b"secret")
    origin.redirect("/hop", target)
    allow_localhost = FetchPolicy(allow_http=True, allow_loopback=True, allowed_domains=("localhost",))
    assert refusal(allow_localhost, origin.url("/hop", "localhost")) == "blocked_media_url"
    assert origin.hits["/target"] == 0
    for location in ("http://10.0.0.1/x", "file:///etc/passwd", "gopher://example.com/", "http://169.254.169.254/"):
        origin.redirect("/bad", location)
        assert refusal(LOCAL, origin.url("/bad")) == "blocked_media_url"
    origin.redirect("/r0", "/r1")
    origin.redirect("/r1", "/r2")
    origin.redirect("/r2", "/target")
    got = fetch(LOCAL, origin.url("/r0"))
    assert got.data == b"secret" and got.num_redirects == 3
    origin.redirect("/loop", "/loop")
    assert refusal(LOCAL, origin.url("/loop")) == "media_fetch_failed"


def test_byte_caps_timeouts_and_origin_errors(origin):
    policy = FetchPolicy(allow_http=True, allow_loopback=True, max_image_bytes=4096, image_timeout=1.0)
    big = origin.add("/big", b"x" * 10000)
    assert refusal(policy, big) == "image_too_large"
    origin.add("/undeclared", b"x" * 10000, chunked=True)  # no declared length: capped while reading
    assert refusal(policy, origin.url("/undeclared")) == "image_too_large"
    origin.add("/small-chunked", b"y" * 3000, chunked=True)
    assert fetch(policy, origin.url("/small-chunked")).data == b"y" * 3000
    origin.add("/slow", b"x" * 3000, drip=0.5)
    assert refusal(policy, origin.url("/slow")) == "media_fetch_failed"
    origin.add("/gone", b"", status=404)
    assert refusal(policy, origin.url("/gone")) == "media_fetch_failed"
    origin.add("/gz", b"x", headers={"Content-Encoding": "gzip"})
    assert refusal(policy, origin.url("/gz")) == "media_fetch_failed"
    assert refusal(policy, "http://no-such-host.invalid/a.png") == "media_fetch_failed"


@pytest.mark.parametrize("url", [
    "http://user:pass@127.0.0.1/x", "http://evil.com@127.0.0.1/x", "http://127.0.0.1\\@evil.com/x",
    "http://[::1%25lo]/x", "ftp://example.com/x", "javascript:alert(1)", "//example.com/x", "http://exa mple.com/",
])
def test_malformed_and_tricky_urls(url):
    assert refusal(LOCAL, url) == "blocked_media_url"


def test_data_and_file_urls(tmp_path):
    assert fetch(STRICT, "data:image/png;base64,aGk=").data == b"hi"
    assert refusal(STRICT, "data:image/png;base64,@@") == "invalid_image"
    assert refusal(FetchPolicy(max_image_bytes=10), "data:image/png;base64," + "QUFB" * 10) == "image_too_large"
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (allowed / "link").symlink_to(tmp_path / "secret.txt")
    policy = FetchPolicy(allowed_local_path=str(allowed))
    assert fetch(policy, f"file://{allowed}/a.png").data == b"png"
    assert refusal(policy, f"file://{allowed}/../secret.txt") == "blocked_media_url"
    assert refusal(policy, f"file://{allowed}/link") == "blocked_media_url"
    assert refusal(policy, f"file://{allowed}/missing.png") == "media_fetch_failed"
    assert refusal(STRICT, f"file://{allowed}/a.png") == "blocked_media_url"


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    """An https origin with a certificate for `localhost` only, signed by nobody the system trusts."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    o = Origin(tls=(cert, key))
    o.cert = cert
    yield o
    o.close()


def test_https_connects_to_the_checked_address_and_verifies_the_name(tls_origin):
    tls_origin.add("/secure.png", b"tls-bytes")
    trusted = FetchPolicy(allow_loopback=True, ca_file=tls_origin.cert)
    got = fetch(trusted, tls_origin.url("/secure.png", "localhost"))
    assert got.data == b"tls-bytes" and got.source == "https"
    hits = tls_origin.hits["/secure.png"]
    # the certificate names localhost, not 127.0.0.1: the name is verified, not just the address
    assert refusal(trusted, tls_origin.url("/secure.png")) == "media_fetch_failed"
    # an origin nobody vouches for
    assert refusal(FetchPolicy(allow_loopback=True), tls_origin.url("/secure.png", "localhost")) == \
        "media_fetch_failed"
    assert tls_origin.hits["/secure.png"] == hits  # failed handshakes never reached the handler
