"""Uploaded files on SQLite and PostgreSQL: bytes back exactly, owner scoping, paging."""

from __future__ import annotations

import pytest

from server.store import DuplicateId, StoredFile, UnknownCursor, owner_hash
from tests.server.store.conftest import run

ALICE, BOB = owner_hash("key-alice"), owner_hash("key-bob")
CONTENT = bytes(range(256)) * 4096  # 1 MiB of every byte value: nothing is decoded or trimmed


def new_file(store, file_id: str, owner: str = ALICE, purpose: str = "batch") -> StoredFile:
    return StoredFile(id=file_id, owner=owner, created_at=store.clock(), filename=f"{file_id}.jsonl", purpose=purpose)


def test_a_file_reads_back_byte_for_byte_and_only_for_its_owner(store):
    stored = run(store.put_file(new_file(store, "file-1"), CONTENT))
    assert stored.size_bytes == len(CONTENT)
    assert run(store.get_file("file-1", ALICE)) == stored
    assert run(store.get_file_content("file-1", ALICE)) == CONTENT
    assert run(store.get_file("file-1", BOB)) is None
    assert run(store.get_file_content("file-1", BOB)) is None
    assert run(store.delete_file("file-1", BOB)) is False
    assert run(store.stored_file_bytes(ALICE)) == len(CONTENT) and run(store.stored_file_bytes(BOB)) == 0
    with pytest.raises(DuplicateId):
        run(store.put_file(new_file(store, "file-1", owner=BOB), b""))
    assert run(store.delete_file("file-1", ALICE)) is True
    assert run(store.get_file_content("file-1", ALICE)) is None
    assert run(store.stored_file_bytes(ALICE)) == 0


def test_files_page_by_creation_time_and_purpose(store, clock):
    for n in range(4):
        run(store.put_file(new_file(store, f"file-{n}", purpose="batch_output" if n == 2 else "batch"), b"x"))
        clock.advance(1)
    run(store.put_file(new_file(store, "file-bob", owner=BOB), b"x"))
    newest = run(store.list_files(ALICE, limit=3))
    assert [f.id for f in newest.data] == ["file-3", "file-2", "file-1"] and newest.has_more
    older = run(store.list_files(ALICE, after="file-1", limit=3))
    assert [f.id for f in older.data] == ["file-0"] and not older.has_more
    oldest = run(store.list_files(ALICE, order="asc", limit=2))
    assert [f.id for f in oldest.data] == ["file-0", "file-1"] and oldest.has_more
    assert [f.id for f in run(store.list_files(ALICE, purpose="batch")).data] == ["file-3", "file-1", "file-0"]
    with pytest.raises(UnknownCursor):
        run(store.list_files(ALICE, after="file-bob"))


def test_files_of_one_second_page_in_id_order(store):
    """Rows created in the same second are told apart by id, so no page repeats or skips one."""
    for n in range(5):
        run(store.put_file(new_file(store, f"file-{n}"), b"x"))
    seen, after = [], None
    while True:
        page = run(store.list_files(ALICE, after=after, limit=2))
        seen += [f.id for f in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == [f"file-{n}" for n in range(4, -1, -1)]
