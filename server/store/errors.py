"""What the state store raises for a caller's mistake; the routes map each to their API's error."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the state store's errors."""


class DuplicateId(StoreError):
    """A row with this id exists already (ids are chosen by the routes)."""


class UnknownCursor(StoreError):
    """`after` names no item of the list being paged."""


class StoredBytesExceeded(StoreError):
    """One response is larger than the per-key cap (--max-stored-response-mb) by itself."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer llava-serve than this one (a replica left behind)."""


class StoreUnavailable(StoreError):
    """The database did not answer or refused the work (down, unreachable, locked past the busy
    timeout): the request may be retried, nothing of this call was committed."""
