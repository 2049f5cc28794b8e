"""SSRF-safe media fetching: a URL from a request -> its bytes, or a refusal (spec section 4).

`data:` URLs are decoded here; `file://` only inside `--allowed-local-media-path`; http(s) URLs are
parsed strictly (no userinfo, no odd IP spellings), checked against the domain allowlist,
resolved by us, and every resolved address must be global (loopback only with
`--allow-loopback-media`); we then connect to the address we checked (TLS still verifies the
host name), follow at most `max_redirects` redirects, each checked the same way, and stop
reading at the byte cap. No proxy variables, no compression. Knows nothing of decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import certifi
import httpx

from server.config import FetchPolicy
from server.media import MediaError

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
TOO_LARGE = {"image": "image_too_large", "video": "video_too_long", "audio": "audio_too_long"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.I)
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_EMBEDDED_V4 = (  # IPv6 ranges that carry an IPv4 address in their low 32 bits
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64
)
_TEREDO = ipaddress.IPv6Network("2001::/32")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    source: str  # "data" | "file" | "http" | "https"
    num_redirects: int = 0


def blocked(message: str) -> MediaError:
    return MediaError("blocked_media_url", message)


def failed(message: str) -> MediaError:
    return MediaError("media_fetch_failed", message)


def too_large(modality: str, max_bytes: int) -> MediaError:
    return MediaError(TOO_LARGE[modality], f"the {modality} is larger than {max_bytes / 2**20:.0f} MiB")


def is_refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> bool:
    """True for every address that is not global unicast (loopback allowed only if asked)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _EMBEDDED_V4) and ip != ipaddress.IPv6Address("::"):
            return is_refused_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), allow_loopback)
        six_to_four = ip.sixtofour  # the IPv4 address of a 2002::/16 address, else None
        if six_to_four is not None:
            return is_refused_address(six_to_four, allow_loopback)
        if ip in _TEREDO:
            return True
    if ip.is_loopback:
        return not allow_loopback
    return (ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
            or not ip.is_global)


def parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An IP address literal, or a normalised domain name; odd spellings of addresses are refused."""
    if ":" in host:  # urlsplit strips the brackets of an IPv6 literal
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as e:
            raise blocked("the media URL's host is not a valid IPv6 address") from e
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):  # WHATWG: a numeric last label makes the host an IPv4 address
        try:
            address = ipaddress.IPv4Address(name)
        except ValueError as e:
            raise blocked("the media URL's host is an unusual spelling of an IP address") from e
        if str(address) != host:
            raise blocked("the media URL's host is an unusual spelling of an IP address")
        return address
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise blocked("the media URL's host is not a valid domain name") from e
    if not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise blocked("the media URL's host is not a valid domain name")
    return name


class MediaFetcher:
    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._ssl = ssl.create_default_context(cafile=certifi.where())
        if policy.ca_file:
            self._ssl.load_verify_locations(cafile=policy.ca_file)
        self._local_root = Path(policy.allowed_local_path).resolve() if policy.allowed_local_path else None

    async def fetch(self, url: str, modality: str) -> FetchedMedia:
        max_bytes = self.policy.max_bytes(modality)
        if url[:5].lower() == "data:":
            return FetchedMedia(decode_data_url(url, modality, max_bytes), "data")
        if url[:7].lower() == "file://":
            return FetchedMedia(await asyncio.to_thread(self._read_local, url, modality, max_bytes), "file")
        try:
            async with asyncio.timeout(self.policy.timeout(modality)):
                return await self._fetch_remote(url, modality, max_bytes)
        except TimeoutError as e:
            raise failed(f"fetching the {modality} took longer than {self.policy.timeout(modality):.0f} s") from e

    # -- file:// ---------------------------------------------------------------------------
    def _read_local(self, url: str, modality: str, max_bytes: int) -> bytes:
        if self._local_root is None:
            raise blocked("file:// media URLs are not enabled on this server")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise blocked("file:// media URLs must be file:///path")
        try:
            path = Path(unquote(parts.path)).resolve(strict=True)
        except (OSError, RuntimeError) as e:
            raise failed("no such media file in the allowed folder") from e
        if not path.is_relative_to(self._local_root):
            raise blocked("the media file is outside the allowed folder")
        if not path.is_file():
            raise failed("no such media file in the allowed folder")
        if path.stat().st_size > max_bytes:
            raise too_large(modality, max_bytes)
        return path.read_bytes()

    # -- http(s) ---------------------------------------------------------------------------
    async def _fetch_remote(self, url: str, modality: str, max_bytes: int) -> FetchedMedia:
        for num_redirects in range(self.policy.max_redirects + 1):
            target = self._check_url(url)
            addresses = await self._resolve(target)
            response = await self._get(target, addresses, modality, max_bytes)
            if isinstance(response, bytes):
                return FetchedMedia(response, target.scheme, num_redirects)
            url = urljoin(url, response)  # a redirect: check the next hop like the first
        raise failed(f"the media URL redirected more than {self.policy.max_redirects} times")

    def _check_url(self, url: str) -> _Target:
        if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
            raise blocked("the media URL contains whitespace, control characters or backslashes")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise blocked("the media URL is not a valid URL") from e
        scheme = parts.scheme.lower()
        if scheme == "http" and not self.policy.allow_http:
            raise blocked("plain http:// media URLs are not enabled on this server; use https://")
        if scheme not in ("http", "https"):
            raise blocked(f"media URLs must use https:// (or data:), not {scheme or 'no scheme'}")
        if "@" in parts.netloc:
            raise blocked("media URLs must not contain user information (user@host)")
        if not parts.hostname or "%" in parts.hostname:
            raise blocked("the media URL has no valid host")
        host = parse_host(parts.hostname)
        if self.policy.allowed_domains and not self._is_allowed_domain(host):
            raise blocked("the media URL's host is not in this server's allowed media domains")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)

    def _is_allowed_domain(self, host) -> bool:
        return isinstance(host, str) and any(host == d or host.endswith("." + d) for d in self.policy.allowed_domains)

    async def _resolve(self, target: _Target) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if not isinstance(target.host, str):
            candidates = [target.host]
        else:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.policy.connect_timeout):
                    infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError) as e:
                raise failed("the media URL's host name could not be resolved") from e
            candidates = []
            for info in infos:
                address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if address not in candidates:
                    candidates.append(address)
        if not candidates:
            raise failed("the media URL's host name could not be resolved")
        # NOTE: refuse if ANY address is refused: a name that mixes public and private answers is an attack
        for address in candidates:
            if is_refused_address(address, self.policy.allow_loopback):
                raise blocked("the media URL points to a private, loopback or otherwise non-public address")
        return candidates

    async def _get(self, target: _Target, addresses, modality: str, max_bytes: int) -> bytes | str:
        """The body, or the Location of a redirect."""
        timeout = httpx.Timeout(self.policy.timeout(modality), connect=self.policy.connect_timeout)
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.display_host + ("" if target.port == default_port else f":{target.port}")
        headers = {"Host": host_header, "User-Agent": "llava-serve", "Accept": "*/*",
                   "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": str(target.host)} if target.scheme == "https" else {}
        last_error: Exception | None = None
        async with httpx.AsyncClient(verify=self._ssl, trust_env=False, follow_redirects=False,
                                     timeout=timeout) as client:
            for address in addresses:
                literal = f"[{address}]" if address.version == 6 else str(address)
                url = f"{target.scheme}://{literal}:{target.port}{target.path}"
                try:
                    request = client.build_request("GET", url, headers=headers, extensions=extensions)
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as e:
                    last_error = e
                    continue
                except httpx.HTTPError as e:
                    log.info("media fetch from %s failed: %r", target.display_host, e)
                    raise failed("the media URL could not be fetched") from e
                try:
                    return await self._read(response, modality, max_bytes)
                finally:
                    await response.aclose()
        log.info("media fetch from %s: no address connected (%r)", target.display_host, last_error)
        raise failed("could not connect to the media URL's host")

    async def _read(self, response: httpx.Response, modality: str, max_bytes: int) -> bytes | str:
        if response.status_code in REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise failed("the media URL redirected without a Location")
            return location
        if response.status_code != 200:
            raise failed(f"the media URL answered HTTP {response.status_code}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise failed("the media URL answered with a compressed body; send it uncompressed")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise too_large(modality, max_bytes)
        body = bytearray()
        try:
            async for chunk in response.aiter_raw(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise too_large(modality, max_bytes)
        except httpx.HTTPError as e:
            raise failed("the media URL's body could not be read") from e
        return bytes(body)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | str
    port: int
    path: str  # path and query

    @property
    def display_host(self) -> str:
        return f"[{self.host}]" if isinstance(self.host, ipaddress.IPv6Address) else str(self.host)


def decode_data_url(url: str, modality: str, max_bytes: int) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise MediaError(f"invalid_{modality}", "the data: URL is malformed (expected data:<type>;base64,<data>)")
    payload = url[m.end():]
    if m.group("b64"):
        if len(payload) * 3 // 4 > max_bytes + 3:
            raise too_large(modality, max_bytes)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MediaError(f"invalid_{modality}", "the data: URL's base64 payload is malformed") from e
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise too_large(modality, max_bytes)
    if not data:
        raise MediaError(f"invalid_{modality}", "the data: URL is empty")
    return data
