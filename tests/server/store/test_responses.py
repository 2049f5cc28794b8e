"""Stored responses on SQLite and PostgreSQL: owner scoping, paging, chains, retention, byte caps, media."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from sqlalchemy import func, select, text

from server.store import (
    DuplicateId,
    MediaBlob,
    StoredBytesExceeded,
    StoredResponse,
    UnknownCursor,
    owner_hash,
)
from server.store import responses as response_queries
from server.store.schema import media, response_media
from tests.server.store.conftest import run

ALICE, BOB = owner_hash("key-alice"), owner_hash("key-bob")
IMAGE, OTHER_IMAGE = MediaBlob(b"\x89PNG fake image bytes", "image/png"), MediaBlob(b"RIFF fake", "image/webp")


def response(store, response_id: str, owner: str = ALICE, *, items: int = 2, previous: str | None = None,
             text: str = "hello", age: float = 0.0) -> StoredResponse:
    return StoredResponse(
        id=response_id, owner=owner, created_at=store.clock() - age, model="tiny", status="completed",
        request={"instructions": "be brief", "tools": []},
        input_items=[{"id": f"{response_id}_item{n}", "type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": f"{text} {n}"}]} for n in range(items)],
        output={"id": response_id, "object": "response", "output_text": text},
        previous_response_id=previous)


def put(store, stored: StoredResponse, media_blobs=()) -> StoredResponse:
    return run(store.put_response(stored, list(media_blobs)))


def test_a_stored_response_reads_back_as_it_was_put(store):
    sent = response(store, "resp_1", items=3, text="héllo ☃")
    stored = put(store, sent, [IMAGE, IMAGE, OTHER_IMAGE])
    assert stored.media_hashes == (IMAGE.hash, OTHER_IMAGE.hash)  # once each, in order
    assert stored.size_bytes > len(IMAGE.data) + len(OTHER_IMAGE.data)
    got = run(store.get_response("resp_1", ALICE))
    assert got == stored
    assert got.input_items == sent.input_items and got.output == sent.output and got.request == sent.request
    assert run(store.get_media(stored.media_hashes, ALICE)) == {IMAGE.hash: IMAGE, OTHER_IMAGE.hash: OTHER_IMAGE}
    assert run(store.stored_response_bytes(ALICE)) == stored.size_bytes


def test_another_owner_sees_nothing_and_deletes_nothing(store):
    put(store, response(store, "resp_1"), [IMAGE])
    assert run(store.get_response("resp_1", BOB)) is None
    assert run(store.list_input_items("resp_1", BOB)) is None
    assert run(store.get_conversation("resp_1", BOB)) is None
    assert run(store.get_media([IMAGE.hash], BOB)) == {}
    assert run(store.delete_response("resp_1", BOB)) is False
    assert run(store.stored_response_bytes(BOB)) == 0
    assert run(store.get_response("resp_1", ALICE)) is not None
    assert run(store.delete_response("resp_1", ALICE)) is True
    assert run(store.get_response("resp_1", ALICE)) is None
    assert run(store.delete_response("resp_1", ALICE)) is False


def test_ids_are_unique_and_items_need_ids(store):
    put(store, response(store, "resp_1"))
    with pytest.raises(DuplicateId):
        put(store, response(store, "resp_1", owner=BOB))
    nameless = response(store, "resp_2")
    nameless.input_items[1].pop("id")
    with pytest.raises(ValueError, match="unique string `id`"):
        put(store, nameless)
    assert run(store.get_response("resp_2", ALICE)) is None  # nothing of it was kept
    with pytest.raises(ValueError, match="pass the blobs themselves"):  # a hash alone would lose its bytes
        put(store, replace(response(store, "resp_3"), media_hashes=(IMAGE.hash,)))
    assert run(store.get_response("resp_3", ALICE)) is None


def item_ids(page) -> list[str]:
    return [item["id"] for item in page.data]


def test_input_items_page_both_ways(store):
    put(store, response(store, "resp_1", items=5))
    ids = [f"resp_1_item{n}" for n in range(5)]
    first = run(store.list_input_items("resp_1", ALICE, limit=2, order="asc"))
    assert item_ids(first) == ids[:2] and first.has_more
    rest = run(store.list_input_items("resp_1", ALICE, after=ids[1], limit=10, order="asc"))
    assert item_ids(rest) == ids[2:] and not rest.has_more
    newest = run(store.list_input_items("resp_1", ALICE, limit=3))  # desc by default, as OpenAI
    assert item_ids(newest) == ids[::-1][:3] and newest.has_more
    older = run(store.list_input_items("resp_1", ALICE, after=ids[2], limit=3))
    assert item_ids(older) == ids[1::-1] and not older.has_more
    with pytest.raises(UnknownCursor, match="after='nope'"):
        run(store.list_input_items("resp_1", ALICE, after="nope"))
    with pytest.raises(ValueError, match="limit=0"):
        run(store.list_input_items("resp_1", ALICE, limit=0))
    with pytest.raises(ValueError, match="order='sideways'"):
        run(store.list_input_items("resp_1", ALICE, order="sideways"))


def test_a_conversation_is_its_chain_oldest_first_and_breaks_when_a_turn_is_gone(store):
    put(store, response(store, "resp_1"))
    put(store, response(store, "resp_2", previous="resp_1"))
    put(store, response(store, "resp_3", previous="resp_2"))
    assert [turn.id for turn in run(store.get_conversation("resp_3", ALICE))] == ["resp_1", "resp_2", "resp_3"]
    assert [turn.id for turn in run(store.get_conversation("resp_2", ALICE))] == ["resp_1", "resp_2"]
    assert run(store.delete_response("resp_1", ALICE))
    assert run(store.get_conversation("resp_3", ALICE)) is None  # never a conversation missing a turn
    assert run(store.get_response("resp_3", ALICE)) is not None


def test_responses_past_retention_are_gone_before_and_after_the_sweep(open_store, clock):
    store = open_store(retention_seconds=3600)
    put(store, response(store, "resp_old"), [IMAGE])
    clock.advance(1800)
    put(store, response(store, "resp_new"), [OTHER_IMAGE])
    clock.advance(1801)  # resp_old is 3601 s old, resp_new 1801 s
    assert run(store.get_response("resp_old", ALICE)) is None
    assert run(store.get_media([IMAGE.hash], ALICE)) == {}
    assert run(store.get_response("resp_new", ALICE)) is not None
    assert run(store.expire_responses()) == 1
    assert run(store.expire_responses()) == 0
    assert blob_rows(store) == {OTHER_IMAGE.hash: 1}  # the old turn's media went with it
    clock.advance(1800)
    assert run(store.expire_responses()) == 1
    assert blob_rows(store) == {}


def test_an_owner_over_the_byte_cap_loses_its_oldest_responses(open_store, clock):
    store = open_store(max_response_bytes_per_key=10_000)
    blob = MediaBlob(bytes([9]) * 3000, "image/png")
    sizes = {}
    for n in range(5):  # each about 3.3 kB with its own image: the cap holds three
        sizes[n] = put(store, response(store, f"resp_{n}"), [MediaBlob(bytes([n]) * 3000, "image/png")]).size_bytes
        clock.advance(1)
    put(store, response(store, "resp_bob", owner=BOB), [blob])
    newest_that_fit = [n for n in range(5) if sum(sizes[m] for m in range(n, 5)) <= 10_000]
    kept = [n for n in range(5) if run(store.get_response(f"resp_{n}", ALICE)) is not None]
    assert kept == newest_that_fit and len(kept) == 3
    assert run(store.stored_response_bytes(ALICE)) == sum(sizes[n] for n in kept)
    assert run(store.get_response("resp_bob", BOB)) is not None  # one owner's cap never touches another's
    assert len(blob_rows(store)) == len(kept) + 1
    with pytest.raises(StoredBytesExceeded):
        put(store, response(store, "resp_huge"), [MediaBlob(bytes(20_000), "image/png")])
    assert [n for n in range(5) if run(store.get_response(f"resp_{n}", ALICE))] == kept


def blob_rows(store) -> dict[str, int]:
    """media.refs by hash; and every count equals the response_media rows that name the blob."""
    with store.db.read() as conn:
        refs = dict(conn.execute(select(media.c.hash, media.c.refs)).all())
        named = dict(conn.execute(select(response_media.c.hash, func.count()).group_by(response_media.c.hash)).all())
    assert refs == named
    return refs


def test_media_is_kept_once_by_content_and_deleted_with_its_last_reference(store):
    put(store, response(store, "resp_1"), [IMAGE])
    put(store, response(store, "resp_2", previous="resp_1"), [IMAGE, OTHER_IMAGE])  # the next turn resends it
    put(store, response(store, "resp_bob", owner=BOB), [IMAGE])
    assert blob_rows(store) == {IMAGE.hash: 3, OTHER_IMAGE.hash: 1}
    assert run(store.delete_response("resp_1", ALICE))
    assert blob_rows(store) == {IMAGE.hash: 2, OTHER_IMAGE.hash: 1}
    assert run(store.get_media([IMAGE.hash], ALICE)) == {IMAGE.hash: IMAGE}
    assert run(store.delete_response("resp_2", ALICE))
    assert blob_rows(store) == {IMAGE.hash: 1}
    assert run(store.get_media([IMAGE.hash], ALICE)) == {}  # Bob's copy is not Alice's to read
    assert run(store.get_media([IMAGE.hash], BOB)) == {IMAGE.hash: IMAGE}
    assert run(store.delete_response("resp_bob", BOB))
    assert blob_rows(store) == {}


def test_a_conversation_longer_than_the_turn_limit_is_refused(store):
    for n in range(4):
        put(store, response(store, f"resp_{n}", previous=f"resp_{n - 1}" if n else None))
    with store.db.read() as conn:
        assert len(response_queries.conversation(conn, "resp_3", ALICE, 0.0, max_turns=4)) == 4
        with pytest.raises(ValueError, match="longer than 3 turns"):
            response_queries.conversation(conn, "resp_3", ALICE, 0.0, max_turns=3)


def wait_for_a_lock_wait(store) -> None:
    """PostgreSQL: until another session of this database waits on a row lock (a hang guard of 60 s)."""
    deadline = time.monotonic() + 60
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                 "AND datname = current_database()")
    while time.monotonic() < deadline:
        with store.db.read() as conn:
            if conn.execute(query).scalar_one():
                return
        time.sleep(0.02)
    raise AssertionError("the second delete never waited for the first")


def test_two_deletes_of_one_response_at_once_take_its_references_once(store):
    """A client's DELETE racing an eviction of the same response: the blob another response still
    names keeps its one reference (the second delete took nothing it did not delete itself)."""
    put(store, response(store, "resp_x"), [IMAGE])
    put(store, response(store, "resp_y"), [IMAGE])
    with ThreadPoolExecutor(1) as pool:
        with store.db.write() as conn:
            assert response_queries.delete_ids(conn, ["resp_x"]) == 1
            second = pool.submit(run, store.delete_response("resp_x", ALICE))
            if store.dialect == "postgresql":  # SQLite's second writer waits before it reads anything
                wait_for_a_lock_wait(store)
        assert second.result(timeout=60) is False
    assert blob_rows(store) == {IMAGE.hash: 1}
    assert run(store.get_media([IMAGE.hash], ALICE)) == {IMAGE.hash: IMAGE}
