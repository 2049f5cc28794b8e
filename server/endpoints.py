"""The API surfaces by path: which endpoint a request is (the metrics' `endpoint` label), which of them
generate (the early 429 covers those), and the error shape each answers in.

A bounded table: a path not in it is `other`, so label values never come from clients.
"""

from __future__ import annotations

GENERATION = {  # path -> endpoint; each one admits a request onto the engine
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
COUNTING = {  # path -> endpoint; prompts rendered and counted, nothing generated
    "/v1/messages/count_tokens": "count_tokens",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}
ENDPOINTS = (*GENERATION.values(), *COUNTING.values(), "responses_stored", "files", "batches", "models", "probes",
             "other")
_PROBES = frozenset({"/health", "/ready", "/metrics", "/version"})


def endpoint_of(path: str) -> str:
    if path in GENERATION:
        return GENERATION[path]
    if path in COUNTING:
        return COUNTING[path]
    if path.startswith("/v1/responses/"):
        return "responses_stored"
    for prefix in ("files", "batches"):
        if path == f"/v1/{prefix}" or path.startswith(f"/v1/{prefix}/"):
            return prefix
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    return "probes" if path in _PROBES else "other"


def error_shape(path: str) -> str:
    """"anthropic" for the Messages API's routes, else "openai" (errors.APIError.body)."""
    return "anthropic" if path == "/v1/messages" or path.startswith("/v1/messages/") else "openai"
