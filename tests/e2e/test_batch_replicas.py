"""Two real server processes on one real PostgreSQL (`--state-db`) work one batch together: both run lines,
either answers for the batch, and when one is SIGKILLed the other finishes its lines once their leases lapse;
each custom_id is answered once."""

from __future__ import annotations

import signal

from testkit.postgres import PostgresServer
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.test_batches import LONG, is_final, jsonl, output_lines, request, wait_for

NUM_LINES = 12
KEY = {"Authorization": "Bearer k1"}
DONE = 'llava_batch_lines_done_total{status="succeeded"}'


def test_two_replicas_share_a_batch_and_one_finishes_the_others_lines(tiny_checkpoint, tmp_path):
    postgres = PostgresServer().start()
    servers = []
    try:
        url = postgres.new_database()
        args = ("--api-key", "k1", "--state-db", url, "--batch-lease-seconds", "2", "--max-batch-lines-in-flight",
                "2", "--max-num-seqs", "2")
        servers = [start_server(tiny_checkpoint, tmp_path, *args) for _ in range(2)]
        first, second = servers
        client = first.client("k1")
        lines = [request(f"r-{i}", {**LONG, "max_tokens": 60}) for i in range(NUM_LINES)]
        file = client.files.create(file=("shared.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert second.client("k1").batches.retrieve(batch.id).id == batch.id
        wait_for(client, batch.id, lambda _: first.metric(DONE, KEY) >= 1 and second.metric(DONE, KEY) >= 1)
        second.process.send_signal(signal.SIGKILL)
        second.process.wait()
        done = wait_for(client, batch.id, is_final)
        assert done.status == "completed" and done.request_counts.completed == NUM_LINES
        answered = sorted(line["custom_id"] for line in output_lines(client, done.output_file_id))
        assert answered == sorted(line["custom_id"] for line in lines)
    finally:
        for server in servers:
            stop_server(server)
        postgres.stop()
