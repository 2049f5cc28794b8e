"""The state database's tables at the newest schema version, as SQLAlchemy Core tables.

The queries use these; server/store/migrations.py creates them. One definition serves SQLite and
PostgreSQL: JSON is kept as text (the store writes and reads it), bytes as BLOB / bytea, times as
unix seconds in double precision. Owners are key hashes (records.owner_hash).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = String(128)  # ids the routes choose (`resp_...`, `file-...`, `batch_...`), custom_ids
HASH = String(64)  # SHA-256 hex

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("applied_at", Float, nullable=False),
)

responses = Table(
    "responses", metadata,
    Column("id", ID, primary_key=True),
    Column("owner", HASH, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("model", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("previous_response_id", ID),  # no foreign key: an earlier turn may expire first
    Column("request_json", Text, nullable=False),
    Column("output_json", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Index("responses_owner_created", "owner", "created_at"),
    Index("responses_created", "created_at"),
)

# a response's input items, one row each so that input_items pages in SQL
response_items = Table(
    "response_items", metadata,
    Column("response_id", ID, ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("item_id", ID, nullable=False),
    Column("item_json", Text, nullable=False),
    Index("response_items_item", "response_id", "item_id", unique=True),
)

# media by content: `refs` counts the response_media rows naming it; at 0 the row is deleted
media = Table(
    "media", metadata,
    Column("hash", HASH, primary_key=True),
    Column("mime_type", String(255), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("refs", Integer, nullable=False),
)

response_media = Table(
    "response_media", metadata,
    Column("response_id", ID, ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    Column("hash", HASH, ForeignKey("media.hash"), primary_key=True),
    Column("position", Integer, nullable=False),  # the order the response named its media in
    Index("response_media_hash", "hash"),
)

files = Table(
    "files", metadata,
    Column("id", ID, primary_key=True),
    Column("owner", HASH, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("expires_at", Float),
    Column("content", LargeBinary, nullable=False),
    Index("files_owner_created", "owner", "created_at"),
)

batches = Table(
    "batches", metadata,
    Column("id", ID, primary_key=True),
    Column("owner", HASH, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", ID, nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(32), nullable=False),
    Column("metadata_json", Text),
    Column("errors_json", Text),
    Column("output_file_id", ID),
    Column("error_file_id", ID),
    Column("expires_at", Float),
    Column("times_json", Text, nullable=False),  # {"in_progress_at": ..., ...}
    Index("batches_owner_created", "owner", "created_at"),
    Index("batches_status", "status"),
)

batch_lines = Table(
    "batch_lines", metadata,
    Column("batch_id", ID, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("custom_id", ID, nullable=False),
    Column("body_json", Text, nullable=False),
    Column("status", String(16), nullable=False),  # records.LINE_STATUSES
    Column("lease_owner", String(255)),  # the worker (replica) holding it while running
    Column("lease_expires", Float),
    Column("attempts", Integer, nullable=False),
    Column("result_json", Text),  # the output or error file's line, once done
    Column("completed_at", Float),
    Index("batch_lines_custom_id", "batch_id", "custom_id", unique=True),
    Index("batch_lines_status", "status", "lease_expires"),
)
