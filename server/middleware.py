"""ASGI wrappers around every request: request ids, the request-body limit, early refusal.

Pure ASGI (no BaseHTTPMiddleware), so streaming and client-disconnect detection pass through
untouched. Every response carries `x-request-id` (the client's, when sane, else a new one); a
body over the limit is refused with 413 before the app sees it (by Content-Length when declared,
else while reading). While the admission queue is full, a generation request (any API) is refused
with 429 before its body is read or parsed (a refusal costs the same for a 30 MiB body as for 30
bytes). Errors are sent in the shape of the API the path belongs to (server/endpoints.py), and
`EndpointMetrics` counts every response by endpoint and status.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from server.endpoints import endpoint_of, error_shape
from server.errors import APIError, RequestTooLarge, from_runtime

log = logging.getLogger(__name__)

_MAX_ID_LEN = 128


async def send_error(send, error: APIError, path: str = "") -> None:
    """The error as a whole response, in the shape of the API `path` belongs to."""
    body = error.json_bytes(error_shape(path))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIds:
    """Outermost: also turns an unexpected exception into a 500 that carries the request id."""

    def __init__(self, app, on_error: Callable[[APIError], None]) -> None:
        self.app = app
        self._on_error = on_error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name.lower() == b"x-request-id":
                rid = value.decode("latin-1")
        if not rid or len(rid) > _MAX_ID_LEN or not rid.isprintable() or not rid.isascii():
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        is_started = False

        async def send_with_id(message) -> None:
            nonlocal is_started
            if message["type"] == "http.response.start":
                is_started = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:
            log.exception("request %s failed", rid)
            if is_started:
                raise
            error = from_runtime(e)
            self._on_error(error)
            await send_error(send_with_id, error, scope["path"])


class BodyLimit:
    def __init__(self, app, max_bytes: int, on_error: Callable[[APIError], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._on_error = on_error

    def _refuse(self) -> APIError:
        error = RequestTooLarge(f"the request body is larger than {self.max_bytes / 2**20:.0f} MiB")
        self._on_error(error)
        return error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(send, self._refuse(), scope["path"])
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, self._refuse(), scope["path"])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class EarlyRefusal:
    """`check()` raises the APIError that refuses a generation request before its body is read (or returns)."""

    def __init__(self, app, paths: frozenset[str], check: Callable[[], None],
                 on_error: Callable[[APIError], None]) -> None:
        self.app = app
        self.paths = paths
        self._check = check
        self._on_error = on_error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            try:
                self._check()
            except APIError as error:
                self._on_error(error)
                await send_error(send, error, scope["path"])
                return
        await self.app(scope, receive, send)


class EndpointMetrics:
    """Counts each response by endpoint and status, and times it to its last byte (server/endpoints.py)."""

    def __init__(self, app, observe: Callable[[str, int, float], None]) -> None:
        self.app = app
        self._observe = observe

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self._observe(endpoint_of(scope["path"]), status, time.monotonic() - started)
