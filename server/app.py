"""create_app(): the HTTP front end of llava-serve, assembled from its parts.

The `ServerState` (server/state.py) on `app.state.server`, the lifespan that loads the model in
the background and watches the engine (server/lifespan.py), the ASGI wrappers (request ids, auth,
the body limit, the early 429), the one error renderer, and the routers (server/routes/; the chat
pipeline is server/pipeline.py). Imports only model_runtime's public names; knows nothing of tensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_runtime import LoadedModel
from server import playground
from server.auth import APIKeyAuth
from server.config import ServerConfig
from server.endpoints import GENERATION, error_shape
from server.errors import APIError, InvalidRequest
from server.lifespan import lifespan, model_loader
from server.middleware import BodyLimit, EarlyRefusal, EndpointMetrics, RequestIds
from server.routes import add_routes
from server.state import ServerState


def create_app(config: ServerConfig, loaded: LoadedModel | None = None,
               load: Callable[[], LoadedModel] | None = None, clock: Callable[[], float] = time.time) -> FastAPI:
    """`loaded`: an already loaded checkpoint; `load`: how to load one (tests); else `config.model` is loaded.
    `clock` is for tests.

    `app.state.server` is the server's state; its `request_exit` (set by the runner) is called when
    the engine dies or the model cannot load, so the process can exit non-zero.
    """
    state = ServerState.build(config, clock)
    app = FastAPI(title="llava-serve", lifespan=lifespan(model_loader(config, loaded, load)),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, on_error=state.count_error)
    app.add_middleware(EarlyRefusal, paths=frozenset(GENERATION), check=state.check_queue,
                       on_error=state.count_error)
    app.add_middleware(APIKeyAuth, api_keys=config.api_keys, is_metrics_public=config.metrics_public,
                       on_error=state.count_error, public_paths=playground.public_paths(config))
    app.add_middleware(RequestIds, on_error=state.count_error)
    app.add_middleware(EndpointMetrics, observe=state.metrics.observe_response)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    add_routes(app)
    playground.mount(app, config)
    return app


def render(request: Request, error: APIError) -> JSONResponse:
    request.app.state.server.count_error(error)
    return JSONResponse(error.body(error_shape(request.url.path)), status_code=error.status, headers=error.headers)


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)  # registered for APIError
    return render(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for RequestValidationError
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return render(request, InvalidRequest("the request body is not valid JSON"))
    loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = _param(loc) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return render(request, InvalidRequest(f"{param or 'body'}: {message}", param=param))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # registered for StarletteHTTPException
    error = APIError("no such route" if exc.status_code == 404 else "method not allowed for this route",
                     code="not_found" if exc.status_code == 404 else "method_not_allowed")
    error.status = exc.status_code
    return render(request, error)


def _param(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
