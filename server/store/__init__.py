"""The state store: what outlives a request (stored responses and their media, files, batches).

Routes call `StateStore` (server/store/store.py), opened by the lifespan as `ServerState.store`;
owners are `owner_hash(api_key)`. SQLite under --data-dir by default, PostgreSQL with --state-db
(docs/OPERATIONS.md, "State database"). The engine never sees it.
"""

from server.store.errors import (
    DuplicateId,
    SchemaTooNew,
    StoredBytesExceeded,
    StoreError,
    StoreUnavailable,
    UnknownCursor,
)
from server.store.records import (
    ANONYMOUS,
    LINE_STATUSES,
    Batch,
    BatchLine,
    ClaimedLine,
    LineResult,
    MediaBlob,
    Page,
    StoredFile,
    StoredResponse,
    content_hash,
    owner_hash,
)
from server.store.store import StateStore

__all__ = [
    "ANONYMOUS", "LINE_STATUSES", "Batch", "BatchLine", "ClaimedLine", "DuplicateId", "LineResult", "MediaBlob",
    "Page", "SchemaTooNew", "StateStore", "StoreError", "StoreUnavailable", "StoredBytesExceeded", "StoredFile",
    "StoredResponse", "UnknownCursor", "content_hash", "owner_hash",
]
