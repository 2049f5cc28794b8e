"""API-key authentication as ASGI middleware: one decision per request, on the normalised path.

`--api-key` (repeatable) protects every route, known or not, except /health and /ready (and
/metrics with `--metrics-public`, and the playground page's own files, which ask for the key); the
key comes as `Authorization: Bearer <key>` or `x-api-key: <key>`. The path is normalised before
that decision (percent-decoding until stable, backslashes, repeated slashes, dot segments), so no
spelling of a protected path passes as a public one. Keys are compared in constant time, all of
them every time. A refusal answers in the shape of the API the path belongs to.
"""

from __future__ import annotations

import hmac
import posixpath
from collections.abc import Callable
from urllib.parse import unquote

from server.errors import APIError, InvalidAPIKey
from server.middleware import send_error

PUBLIC_PATHS = frozenset({"/health", "/ready"})
_MAX_DECODE_ROUNDS = 4


def normalise_path(path: str) -> str:
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\\", "/")
    normal = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + normal.lstrip("/")


class APIKeyAuth:
    def __init__(self, app, api_keys: tuple[str, ...], is_metrics_public: bool,
                 on_error: Callable[[APIError], None], public_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._keys = tuple(k.encode() for k in api_keys)
        self._public = PUBLIC_PATHS | public_paths | ({"/metrics"} if is_metrics_public else set())
        self._on_error = on_error

    def is_public(self, path: str) -> bool:
        return normalise_path(path) in self._public

    def is_authorised(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """`Authorization: Bearer <key>`, or `x-api-key: <key>` (the Anthropic clients' header)."""
        value, token = b"", b""
        for name, raw in headers:
            if name.lower() == b"authorization" and not value:
                value = raw
            elif name.lower() == b"x-api-key" and not token:
                token = raw.strip()
        scheme, _, bearer = value.strip().partition(b" ")
        if scheme.lower() == b"bearer" and bearer.strip():
            token = bearer.strip()
        matched = False
        for key in self._keys:  # compare against every key: the time taken does not say which matched
            matched |= hmac.compare_digest(token, key)
        return matched and bool(token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self._keys or self.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.is_authorised(scope["headers"]):
            await self.app(scope, receive, send)
            return
        error = InvalidAPIKey("a valid API key is required: send `Authorization: Bearer <key>` "
                              "or `x-api-key: <key>`", headers={"WWW-Authenticate": "Bearer"})
        self._on_error(error)
        await send_error(send, error, scope["path"])
