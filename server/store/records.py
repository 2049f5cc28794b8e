"""What the state store keeps and hands back: one frozen dataclass per kind of row.

JSON-shaped fields (`request`, `input_items`, `output`, a batch line's `body` and `result`) are
plain dicts and lists, stored as JSON text; the store never reads inside them except for an input
item's `id`. Owners are `owner_hash` values, never keys. Times are unix seconds (floats).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# NOTE: with auth off every client is this one owner; with auth on no key hashes to it unless the
# key is this very string, which `--api-key` would then have to be set to.
ANONYMOUS = "llava-serve:anonymous"

ORDERS = ("asc", "desc")
# a batch line's life: pending -> running (claimed, leased) -> succeeded | failed; cancelled while pending
LINE_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
LINE_DONE = ("succeeded", "failed")


def owner_hash(api_key: str | None) -> str:
    """The owner a row belongs to: SHA-256 (hex) of the API key, or of ANONYMOUS when auth is off."""
    return hashlib.sha256((ANONYMOUS if api_key is None else api_key).encode()).hexdigest()


def dumps(value: Any) -> str:
    """A JSON field as the database keeps it (compact, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def content_hash(data: bytes) -> str:
    """A media blob's key: SHA-256 (hex) of its bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class MediaBlob:
    """The bytes of one media item of a stored turn, kept once per content hash."""

    data: bytes
    mime_type: str  # as the client sent it (`image/png`), so a data URL can be rebuilt

    @property
    def hash(self) -> str:
        return content_hash(self.data)


@dataclass(frozen=True)
class StoredResponse:
    """One stored Responses API response (`store: true`)."""

    id: str  # `resp_...`, chosen by the route
    owner: str  # owner_hash of the key that created it
    created_at: float
    model: str
    status: str  # completed | incomplete | failed (the Response object's)
    request: dict[str, Any]  # the request's settings besides `input` (instructions, tools, text, ...)
    input_items: list[dict[str, Any]]  # this turn's input items, each with a unique `id`
    output: dict[str, Any]  # the Response object as the API returned it
    previous_response_id: str | None = None
    media_hashes: tuple[str, ...] = ()  # content hashes of the media its input items refer to
    size_bytes: int = 0  # set by the store: JSON text plus the media's bytes, what --max-stored-response-mb counts


@dataclass(frozen=True)
class StoredFile:
    """One uploaded file (`/v1/files`); its bytes are read separately (`get_file_content`)."""

    id: str  # `file-...`
    owner: str
    created_at: float
    filename: str
    purpose: str  # batch | batch_output | ...
    size_bytes: int = 0  # set by the store: len(content)
    expires_at: float | None = None


@dataclass(frozen=True)
class Batch:
    """One batch (`/v1/batches`); its request counts are counted from its lines (`count_lines`)."""

    id: str  # `batch_...`
    owner: str
    created_at: float
    endpoint: str  # /v1/chat/completions | /v1/responses | /v1/completions
    input_file_id: str
    completion_window: str  # 24h
    status: str  # OpenAI's: validating, in_progress, finalizing, completed, failed, cancelling, cancelled, expired
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None  # validation errors with their line numbers
    output_file_id: str | None = None
    error_file_id: str | None = None
    expires_at: float | None = None
    # the lifecycle's timestamps, set as it reaches each status (`set_batch_status`)
    times: dict[str, float] = field(default_factory=dict)  # in_progress_at, finalizing_at, completed_at, ...


@dataclass(frozen=True)
class BatchLine:
    """One line of a batch's input file as it is queued (`create_batch`)."""

    line_no: int  # 1-based line of the input file
    custom_id: str  # unique within the batch
    body: dict[str, Any]  # the request line's `body`


@dataclass(frozen=True)
class ClaimedLine:
    """A line a worker holds a lease on (`claim_lines`): it runs it, then `complete_line`s it."""

    batch_id: str
    line_no: int
    custom_id: str
    body: dict[str, Any]
    attempts: int  # claims so far, this one included (a line whose lease expired is claimed again)
    lease_expires: float


@dataclass(frozen=True)
class LineResult:
    """A finished line (`line_results`), in line order: the output or error file's line."""

    line_no: int
    custom_id: str
    status: str  # succeeded | failed
    result: dict[str, Any]


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list (`after` / `limit` / `order`); `has_more`: a next page exists."""

    data: list[T]
    has_more: bool
