"""The HTTP routes, one router per concern; each takes the `ServerState` as a `state: State` parameter.

probes.py: /health, /ready, /metrics, /version. models.py: /v1/models. chat.py:
/v1/chat/completions, completions.py: /v1/completions, tokenize.py: /tokenize and /detokenize,
messages.py: /v1/messages and its count_tokens, responses.py: /v1/responses and the stored ones
(each an adapter of server/protocols/ onto the one pipeline, server/pipeline.py), files.py: /v1/files,
batches.py: /v1/batches (run by server/batch/). The playground's files are
mounted by server/playground.
"""

from fastapi import FastAPI
from fastapi.routing import APIRoute

from server.routes import batches, chat, completions, files, messages, models, probes, responses, tokenize


def add_routes(app: FastAPI) -> None:
    """Every route onto the app itself, so `app.routes` lists each path (include_router would nest them)."""
    for router in (probes.router, models.router, chat.router, completions.router, tokenize.router,
                   messages.router, responses.router, files.router, batches.router):
        for route in router.routes:
            assert isinstance(route, APIRoute)
            app.add_api_route(route.path, route.endpoint, methods=sorted(route.methods or ()), name=route.name)
