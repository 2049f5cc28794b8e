"""What the store said it stored is there after the store closes, and after its process is SIGKILLed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from server.config import StoreConfig
from server.store import (
    Batch,
    BatchLine,
    MediaBlob,
    StateStore,
    StoredFile,
    StoredResponse,
    StoreUnavailable,
    owner_hash,
)
from tests.server.store.conftest import run

ROOT = Path(__file__).resolve().parents[3]
ALICE = owner_hash("key-alice")
IMAGE = MediaBlob(b"\x89PNG durable", "image/png")

# Writes through a real StateStore, says so once every write returned, then waits to be killed.
WRITER = """
import asyncio, json, sys, time
from server.config import StoreConfig
from server.store import Batch, BatchLine, MediaBlob, StateStore, StoredResponse, owner_hash

async def write(url, now):
    store = await StateStore.open(StoreConfig(state_db=url))
    owner = owner_hash("key-alice")
    await store.put_response(StoredResponse(
        id="resp_killed", owner=owner, created_at=now, model="tiny", status="completed", request={},
        input_items=[{"id": "msg_1", "type": "message"}], output={"id": "resp_killed"}),
        [MediaBlob(b"\\x89PNG durable", "image/png")])
    await store.create_batch(Batch(id="batch_killed", owner=owner, created_at=now, endpoint="/v1/chat/completions",
                                   input_file_id="file-in", completion_window="24h", status="in_progress"),
                             [BatchLine(1, "a", {}), BatchLine(2, "b", {})])
    [line] = await store.claim_lines("writer", limit=1, lease_seconds=60)
    await store.complete_line(line.batch_id, line.line_no, "writer", status="succeeded", result={"n": 1})
    print("stored", flush=True)
    time.sleep(3600)

asyncio.run(write(sys.argv[1], float(sys.argv[2])))
"""


def test_rows_survive_closing_and_reopening_the_store(open_store, clock):
    store = open_store()
    response = run(store.put_response(StoredResponse(
        id="resp_1", owner=ALICE, created_at=clock(), model="tiny", status="completed", request={"a": [1, 2]},
        input_items=[{"id": "msg_1", "type": "message"}], output={"id": "resp_1"}), [IMAGE]))
    file = run(store.put_file(StoredFile("file-1", ALICE, clock(), "in.jsonl", "batch"), b'{"custom_id": "a"}\n'))
    batch = run(store.create_batch(Batch(id="batch_1", owner=ALICE, created_at=clock(), endpoint="/v1/responses",
                                         input_file_id="file-1", completion_window="24h", status="in_progress"),
                                   [BatchLine(1, "a", {"input": "hi"})]))
    run(store.close())
    reopened = open_store()
    assert run(reopened.get_response("resp_1", ALICE)) == response
    assert run(reopened.get_media([IMAGE.hash], ALICE)) == {IMAGE.hash: IMAGE}
    assert run(reopened.get_file("file-1", ALICE)) == file
    assert run(reopened.get_file_content("file-1", ALICE)) == b'{"custom_id": "a"}\n'
    assert run(reopened.get_batch("batch_1", ALICE)) == batch
    [line] = run(reopened.claim_lines("after-restart", limit=5, lease_seconds=60))
    assert (line.custom_id, line.body) == ("a", {"input": "hi"})


def test_what_a_killed_process_stored_is_there(open_store, database_url, clock):
    with subprocess.Popen([sys.executable, "-c", WRITER, database_url, json.dumps(clock())], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as writer:
        try:
            said = writer.stdout.readline()
            assert said == b"stored\n", writer.stderr.read().decode()
        finally:
            writer.send_signal(signal.SIGKILL)  # no close, no checkpoint: the WAL as it was
            writer.wait()
    store = open_store()
    stored = run(store.get_response("resp_killed", ALICE))
    assert stored is not None and stored.input_items == [{"id": "msg_1", "type": "message"}]
    assert run(store.get_media(stored.media_hashes, ALICE)) == {IMAGE.hash: IMAGE}
    assert run(store.count_lines("batch_killed"))["succeeded"] == 1
    assert [r.result for r in run(store.line_results("batch_killed", "succeeded"))] == [{"n": 1}]
    [running] = run(store.claim_lines("next", limit=5, lease_seconds=60))
    assert running.custom_id == "b"  # the line the dead writer never claimed; its finished one stays done


def test_a_database_that_goes_away_is_a_typed_retryable_error(postgres, clock):
    url = postgres.new_database()
    store = run(StateStore.open(StoreConfig(state_db=url), clock))
    try:
        assert run(store.get_response("resp_1", ALICE)) is None
        with psycopg.connect(postgres.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')  # its sessions are ended
        with pytest.raises(StoreUnavailable, match="the state database failed: .*does not exist"):
            run(store.get_response("resp_1", ALICE))
    finally:
        run(store.close())


def test_connections_the_database_dropped_are_replaced_without_a_failed_call(postgres, clock):
    """A restarted PostgreSQL (here: every session of the store ended by the server) costs no error."""
    url = postgres.new_database()
    store = run(StateStore.open(StoreConfig(state_db=url), clock))
    try:
        run(store.put_file(StoredFile("file-1", ALICE, clock(), "in.jsonl", "batch"), b"x"))
        with psycopg.connect(postgres.dsn("postgres"), autocommit=True) as admin:
            ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                                  [url.rsplit("/", 1)[1]]).fetchone()
        assert ended is not None and ended[0] >= 1
        assert run(store.get_file_content("file-1", ALICE)) == b"x"
    finally:
        run(store.close())
