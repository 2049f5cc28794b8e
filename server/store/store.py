"""StateStore: the one interface the routes call for state that outlives a request.

Stored responses (owner-scoped, paged input items, retention by age and by bytes per key, media
kept by content hash), uploaded files with their bytes, batches and their lines claimed with
leases by any replica. Every method is a coroutine: the blocking database work runs on the
store's own threads (as many as the connection pool holds), never on the event loop. Another
owner's rows are invisible (None / False / absent from lists). A database that fails under a call
(down, unreachable, locked past the busy timeout) raises StoreUnavailable: retryable, nothing of
that call committed. Knows no HTTP and no engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from server.config import StoreConfig
from server.store import batches, files, responses
from server.store.database import POOL_SIZE, Database
from server.store.errors import StoreError, StoreUnavailable
from server.store.migrations import migrate
from server.store.records import (
    Batch,
    BatchLine,
    ClaimedLine,
    LineResult,
    MediaBlob,
    Page,
    StoredFile,
    StoredResponse,
)

log = logging.getLogger("llava_serve")

MAX_TURNS = 10_000  # a conversation's longest chain of previous_response_id
MAX_PAGE = 100  # the largest `limit` of a list (OpenAI's)

R = TypeVar("R")


def _driver_words(error: BaseException) -> str:
    """The driver's own message on one line, without SQLAlchemy's statement and link."""
    while isinstance(error, StoreUnavailable) and error.__cause__ is not None:
        error = error.__cause__
    return " ".join(str(getattr(error, "orig", None) or error).split())


class StateStore:
    def __init__(self, db: Database, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.config = config
        self.clock = clock  # unix seconds; a fake in the retention tests
        self._threads = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="state-store")

    @classmethod
    async def open(cls, config: StoreConfig, clock: Callable[[], float] = time.time) -> StateStore:
        """Connect (creating the data folder and SQLite file if need be) and migrate the schema."""
        store = cls(Database(config.url()), config, clock)
        try:
            applied = await store._run(migrate, store.db)
        except (SQLAlchemyError, StoreUnavailable) as e:
            await store.close()
            raise StoreError(f"{store.db.shown_url}: {_driver_words(e)}") from e
        except BaseException:
            await store.close()
            raise
        log.info("state database %s (schema %s)", store.db.shown_url,
                 f"migrated to version {applied[-1]}" if applied else "up to date")
        return store

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._shut)

    def _shut(self) -> None:
        self._threads.shutdown(wait=True)
        self.db.close()

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))
        except (OperationalError, InterfaceError) as e:
            raise StoreUnavailable(f"the state database failed: {_driver_words(e)}") from e

    def _oldest(self) -> float:
        """Responses created before this are past retention: gone, whether or not swept yet."""
        return self.clock() - self.config.retention_seconds

    async def _write(self, fn: Callable[..., R], *args: Any) -> R:
        def work() -> R:
            with self.db.write() as conn:
                return fn(conn, *args)
        return await self._run(work)

    async def _read(self, fn: Callable[..., R], *args: Any) -> R:
        def work() -> R:
            with self.db.read() as conn:
                return fn(conn, *args)
        return await self._run(work)

    # -- stored responses ---------------------------------------------------------------------

    async def put_response(self, response: StoredResponse, media: Sequence[MediaBlob] = ()) -> StoredResponse:
        """Store a response with the media blobs its input items refer to (by `MediaBlob.hash`).

        Returns it with `media_hashes` and `size_bytes` filled in (leave them unset: a blob stored
        already is sent again, the store keeps its bytes once). The owner's oldest responses are
        deleted while the owner holds more than --max-stored-response-mb. Raises DuplicateId,
        StoredBytesExceeded (this one alone is over the cap), ValueError (items without unique ids).
        """
        return await self._write(responses.put, self.dialect, response, media, self.config.max_response_bytes_per_key)

    async def get_response(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response, or None when it is not this owner's, was deleted or is past retention."""
        return await self._read(responses.get, response_id, owner, self._oldest())

    async def get_conversation(self, response_id: str, owner: str) -> list[StoredResponse] | None:
        """The turns ending with this response (previous_response_id followed), oldest first; None when
        this response or any earlier turn is gone (the conversation cannot be continued)."""
        return await self._read(responses.conversation, response_id, owner, self._oldest(), MAX_TURNS)

    async def list_input_items(self, response_id: str, owner: str, *, after: str | None = None, limit: int = 20,
                               order: str = "desc") -> Page[dict[str, Any]] | None:
        """A page of the response's input items (`after`: an item id; `order` asc | desc); None when the
        response is not visible to this owner. Raises UnknownCursor for an `after` it does not have."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit={limit}: must be 1..{MAX_PAGE}")
        return await self._read(responses.input_items, response_id, owner, self._oldest(), after, limit, order)

    async def delete_response(self, response_id: str, owner: str) -> bool:
        """Delete it (its media too, where no other response names it); False when not this owner's."""
        return await self._write(responses.delete_one, response_id, owner, self._oldest())

    async def get_media(self, hashes: Iterable[str], owner: str) -> dict[str, MediaBlob]:
        """The blobs, by hash, among `hashes` that this owner's stored responses refer to."""
        return await self._read(responses.media_of, list(hashes), owner, self._oldest())

    async def stored_response_bytes(self, owner: str) -> int:
        """What this owner's stored responses take (the sum --max-stored-response-mb bounds)."""
        return await self._read(responses.owner_bytes, owner)

    async def expire_responses(self) -> int:
        """Delete every response past retention (a few hundred per transaction); how many went."""
        count = 0
        while True:
            ids = await self._read(responses.expired_ids, self._oldest())
            if not ids:
                return count
            count += await self._write(responses.delete_ids, ids)

    async def sweep_forever(self, interval_s: float = 60.0) -> None:
        """The retention sweep every `interval_s` until cancelled (the lifespan runs it)."""
        while True:
            try:
                count = await self.expire_responses()
            except Exception:  # a database hiccup: the next round tries again
                log.exception("state database: the retention sweep failed")
            else:
                if count:
                    log.info("state database: %d stored responses past retention deleted", count)
            await asyncio.sleep(interval_s)

    # -- files (/v1/files) --------------------------------------------------------------------

    async def put_file(self, file: StoredFile, content: bytes) -> StoredFile:
        """Store an uploaded file; returned with `size_bytes`. Raises DuplicateId."""
        return await self._write(files.put, file, content)

    async def get_file(self, file_id: str, owner: str) -> StoredFile | None:
        return await self._read(files.get, file_id, owner)

    async def get_file_content(self, file_id: str, owner: str) -> bytes | None:
        return await self._read(files.content, file_id, owner)

    async def list_files(self, owner: str, *, purpose: str | None = None, after: str | None = None,
                         limit: int = 20, order: str = "desc") -> Page[StoredFile]:
        """A page of the owner's files by creation time (`after`: a file id). Raises UnknownCursor."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit={limit}: must be 1..10000")
        return await self._read(files.page, owner, purpose, after, limit, order)

    async def delete_file(self, file_id: str, owner: str) -> bool:
        return await self._write(files.delete_one, file_id, owner)

    async def stored_file_bytes(self, owner: str) -> int:
        """What this owner's files take (for a per-key limit)."""
        return await self._read(files.owner_bytes, owner)

    # -- batches (/v1/batches) and their lines --------------------------------------------------

    async def create_batch(self, batch: Batch, lines: Sequence[BatchLine]) -> Batch:
        """Store a batch and queue its lines (pending). Raises DuplicateId (the id, or a custom_id twice)."""
        return await self._write(batches.create, batch, lines)

    async def get_batch(self, batch_id: str, owner: str) -> Batch | None:
        return await self._read(batches.get, batch_id, owner)

    async def list_batches(self, owner: str, *, after: str | None = None, limit: int = 20) -> Page[Batch]:
        """A page of the owner's batches, newest first (`after`: a batch id). Raises UnknownCursor."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit={limit}: must be 1..{MAX_PAGE}")
        return await self._read(batches.page, owner, after, limit)

    async def count_batches(self, owner: str, statuses: Collection[str]) -> int:
        """The owner's batches in these statuses (a per-key limit on active batches)."""
        return await self._read(batches.count, owner, list(statuses))

    async def batches_in(self, statuses: Collection[str]) -> list[Batch]:
        """Every owner's batches in these statuses, oldest first (what the batch runner works on)."""
        return await self._read(batches.in_statuses, list(statuses))

    async def set_batch_status(self, batch_id: str, status: str, *, expected: Collection[str],
                               **changes: Any) -> Batch | None:
        """Move the batch to `status` if its status is one of `expected` (compare and set: two replicas
        never both finalize it), stamping `times[f"{status}_at"]`; `changes` sets output_file_id,
        error_file_id, errors or expires_at as well. None when the batch is elsewhere or gone."""
        return await self._write(batches.set_status, batch_id, status, list(expected), changes, self.clock())

    async def count_lines(self, batch_id: str) -> dict[str, int]:
        """The batch's lines by status (records.LINE_STATUSES; absent statuses count 0)."""
        return await self._read(batches.count_lines, batch_id)

    async def claim_lines(self, worker: str, *, limit: int, lease_seconds: float,
                          batch_id: str | None = None) -> list[ClaimedLine]:
        """Lease up to `limit` lines of in_progress batches (of this batch only, if given) to `worker`:
        pending lines, and running ones whose lease expired (a dead replica's), in batch then line
        order. No line is leased to two workers at once (SKIP LOCKED on PostgreSQL; SQLite's one writer)."""
        return await self._write(batches.claim, worker, limit, lease_seconds, self.clock(), batch_id)

    async def extend_leases(self, worker: str, lease_seconds: float) -> int:
        """Push back the expiry of every lease `worker` holds (long lines stay its own); how many."""
        return await self._write(batches.extend, worker, lease_seconds, self.clock())

    async def complete_line(self, batch_id: str, line_no: int, worker: str, *, status: str,
                            result: dict[str, Any]) -> bool:
        """Record a line's answer (`status` succeeded | failed, `result` its output or error file
        line) if `worker` still holds its lease; False when another worker took the line over
        (the answer is dropped: each custom_id is answered exactly once)."""
        return await self._write(batches.complete, batch_id, line_no, worker, status, result, self.clock())

    async def release_lines(self, worker: str) -> int:
        """Give back every line `worker` holds (pending again, attempts kept): a draining replica."""
        return await self._write(batches.release, worker)

    async def release_line(self, batch_id: str, line_no: int, worker: str) -> bool:
        """Give back one line `worker` holds (pending again): the server could not take it now."""
        return await self._write(batches.release_one, batch_id, line_no, worker)

    async def batch_status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every owner's batches by status, and their lines by status (records.LINE_STATUSES): the metrics."""
        return await self._read(batches.status_counts)

    async def expire_leases(self) -> int:
        """Put lines whose lease expired back to pending; how many (claims take them anyway)."""
        return await self._write(batches.expire_leases, self.clock())

    async def cancel_lines(self, batch_id: str) -> int:
        """Mark the batch's pending lines cancelled (running ones finish); how many."""
        return await self._write(batches.cancel_pending, batch_id)

    async def line_results(self, batch_id: str, status: str) -> list[LineResult]:
        """The batch's finished lines with this status, in line order (the output or error file)."""
        return await self._read(batches.results, batch_id, status)
