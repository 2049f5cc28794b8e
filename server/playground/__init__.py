"""The web playground: a chat page served by the server itself at `/` (`--no-playground` turns it off).

Static files from `static/` only, read once at start-up and served from an allow-list (no path
from a request ever reaches the filesystem). Every file carries a strict Content-Security-Policy:
scripts and styles from this origin only, no inline code, API calls to this origin only. The page
and its files are public (it asks for the API key in the browser); every API call it makes
carries the key. The page knows the server only through its OpenAI API and `/metrics`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from server.config import ServerConfig

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/playground/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",  # thumbnails of the files being attached
        "media-src 'self' blob: data:",  # a video's frames are drawn from the attached file
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


def static_files() -> dict[str, tuple[bytes, str]]:
    """Route path -> (body, content type) for every servable file; index.html is `/`."""
    files = {}
    for path in sorted(STATIC_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type:
            route = "/" if path.name == "index.html" else PREFIX + path.name
            files[route] = (path.read_bytes(), content_type)
    return files


def public_paths(config: ServerConfig) -> frozenset[str]:
    """The paths served without an API key: the page and its files (nothing when it is off)."""
    return frozenset(static_files()) if config.playground else frozenset()


def mount(app: FastAPI, config: ServerConfig) -> None:
    if not config.playground:
        return
    for route, (body, content_type) in static_files().items():
        app.add_api_route(route, _responder(body, content_type), methods=["GET"], include_in_schema=False)


def _responder(body: bytes, content_type: str):
    async def serve_file() -> Response:
        return Response(body, media_type=content_type, headers=HEADERS)

    return serve_file
