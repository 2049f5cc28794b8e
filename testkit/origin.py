"""A media origin on 127.0.0.1 for tests: serves registered paths, counts every hit, can redirect,
stall or lie about its length. The fake edge of the network; the server under test is real."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    drip: float = 0.0  # seconds between 1 KiB pieces of the body
    chunked: bool = False  # no Content-Length: the size is only known while reading


class Origin:
    """`tls`: (certificate, key) PEM files to serve https instead of http."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                origin.hits[self.path] += 1
                route = origin.routes.get(self.path, Route(b"not found", 404))
                time.sleep(route.delay)
                self.send_response(route.status)
                length = {"Transfer-Encoding": "chunked"} if route.chunked else {"Content-Length": str(len(route.body))}
                for name, value in {**length, **route.headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    if route.chunked:
                        for k in range(0, len(route.body), 1024):
                            piece = route.body[k:k + 1024]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.write(b"0\r\n\r\n")
                    elif route.drip:
                        for k in range(0, len(route.body), 1024):
                            self.wfile.write(route.body[k:k + 1024])
                            self.wfile.flush()
                            time.sleep(route.drip)
                    else:
                        self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.routes[path] = Route(body, **kwargs)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, b"", status=status, headers={"Location": location})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
