"""The HTTP routes, one router per concern; each takes the `ServerState` as a `state: State` parameter.

probes.py: /health, /ready, /metrics, /version. models.py: /v1/models. chat.py:
/v1/chat/completions (the pipeline itself is server/pipeline.py). The playground's files are
mounted by server/playground.
"""

from fastapi import APIRouter

from server.routes import chat, models, probes

ROUTERS: tuple[APIRouter, ...] = (probes.router, models.router, chat.router)
