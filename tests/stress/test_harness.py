"""Every part of the reliability harness (bench/stress) with tiny counts against real server processes.

The harness's own checks decide: each part must report no violation with the counts it was asked
for, so a server that answers a mutant with a 5xx, leaks a slot, tears a stream or stays ready while
its engine stalls fails here as it would in the full run (`python -m bench.stress`). A timing bound
(refusal p99, time to free a slot, time to turn /ready 503) must be reported with its figure and
limit; whether it held is the full run's verdict, not a test's: a loaded machine is not a defect.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.stress import faults, fuzz, integrity, media, overload, process_faults, soak
from bench.stress.server import Server, start_server, stop_server

shared = pytest.mark.xdist_group("stress")  # the tests on the shared server run on one xdist worker


@pytest.fixture(scope="module")
def server(tiny_audio_checkpoint, tmp_path_factory) -> Iterator[Server]:
    """The overload part's flags (4 running + 4 queued), which every part sharing it works with."""
    s = start_server(
        tiny_audio_checkpoint,
        tmp_path_factory.mktemp("stress"),
        *overload.SERVER_FLAGS,
        "--max-model-len",
        "1024",
    )
    yield s
    stop_server(s)


def assert_passed(result: dict) -> None:
    assert result["passed"], (result.get("violations"), result.get("examples"), result)


def assert_correct(result: dict, bounds: set[str]) -> None:
    """No violation, and each of `bounds` reported as a measured figure against a positive limit."""
    assert not result["violations"], (result["violations"], result)
    assert set(result["bounds"]) == bounds
    for name, b in result["bounds"].items():
        assert isinstance(b["value"], int | float) and b["value"] >= 0 and b["limit"] > 0, (name, b)
        assert b["held"] == (b["value"] <= b["limit"]), (name, b)


@shared
def test_fuzz(server):
    result = fuzz.run(server, 40, seed=1)
    assert_passed(result)
    # every operation and mode gets one case at least, so 40 is exceeded when the routes outnumber it
    assert result["cases"] >= 40 and any(k.startswith("schemathesis") for k in result["by_source"])
    assert all(c["cases"] >= 1 for c in result["by_route"].values()) and "POST /v1/messages" in result["by_route"]


@shared
def test_mutated_media(server):
    result = media.run(server, 2, seed=1, concurrency=2, media_workers=2)
    assert_passed(result)
    assert set(result["formats"]) == set(media.FORMATS) and result["cases"] == 2 * len(media.FORMATS)
    assert result["peak_rss_mib"] > 0


@shared
def test_overload(server):
    result = overload.check(server, seconds=3.0)
    assert_correct(result, {"refusal_p99_ms", "accepted_p99_s"})
    assert result["at_2x"]["refused"] > 0 and result["at_2x"]["accepted"] > 0
    assert result["bounds"]["refusal_p99_ms"]["limit"] == 1000 * overload.REFUSAL_P99_LIMIT_S


@shared
def test_integrity(server):
    result = integrity.check(server, clients=4, num_rounds=2, seed=1)  # within the 4 queued
    assert_passed(result)
    assert result["completed"] + result["cancelled"] == 8


@shared
def test_soak(server):
    result = soak.check(server, seconds=4.0, rate=3.0, seed=1, warmup_s=2.0, sample_s=1.0)
    assert_passed(result)
    assert result["cases"] > 0 and len(result["samples"]) >= 3


@shared
def test_decoder_kill(server):
    assert_passed(faults.decoder_kill(server, video_s=4.0))


def test_disconnects(tiny_audio_checkpoint, tmp_path):
    s = start_server(tiny_audio_checkpoint, tmp_path, *faults.DISCONNECT_FLAGS)
    try:
        result = faults.disconnects(s, video_s=4.0)
    finally:
        stop_server(s)
    stages = ["fetch", "decode", "queue", "prefill", "decode_steps"]
    assert_correct(result, {f"{stage}_freed_s" for stage in stages})
    assert list(result["stages"]) == [*stages, "after"]


def test_stall_then_sigterm(tiny_audio_checkpoint, tmp_path):
    s = start_server(
        tiny_audio_checkpoint,
        tmp_path,
        *process_faults.SIGTERM_FLAGS,
        "--ready-stall-timeout",
        "2",
        "--stall-at-step",
        "1",
        "--stall-seconds",
        "3",
        module=process_faults.LAUNCHER,
    )
    try:
        stalled = process_faults.stall(s, stall_s=3.0)
    finally:
        drained = process_faults.sigterm(s, num_streams=6)  # stops the server
    assert_correct(stalled, {"not_ready_after_s"})
    assert_passed(drained)
