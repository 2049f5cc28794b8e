"""bench/serve_bench.py's pieces that need no server: flags, stream timings, process groups."""

from __future__ import annotations

import subprocess

import pytest

from bench import serve_bench


def test_flags_know_vllm_and_long_answers():
    args = serve_bench.parse_args(["--servers", "ours,vllm,peer,previous", "--dtype", "float32"])
    assert args.servers.split(",") == ["ours", "vllm", "peer", "previous"]
    assert (args.long_answer_levels, args.long_answer_tokens) == ("1,8", 256)
    assert args.vllm_start_timeout > args.start_timeout  # its torch.compile warm-up takes minutes


@pytest.mark.parametrize("argv, message", [
    (["--servers", "ours,vlm"], "--servers: unknown 'vlm'"),
    (["--scenarios", "throughput,multi"], "--scenarios: unknown 'multi'"),
    (["--long-answer-levels", "1,x"], "--long-answer-levels: positive integers"),
    (["--text-levels", "0"], "--text-levels: positive integers"),
])
def test_bad_flags_are_refused_before_any_server_starts(argv, message, capsys):
    with pytest.raises(SystemExit):
        serve_bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_stream_times_of_token_streams():
    a = serve_bench.Stream(sent=0.0, arrivals=[1.0, 1.1, 1.2, 1.3], done=1.3)  # TTFT 1.0, 100 ms per token
    b = serve_bench.Stream(sent=0.0, arrivals=[3.0, 3.5], done=3.6)  # TTFT 3.0, 500 ms per token
    c = serve_bench.Stream(sent=1.0, arrivals=[3.0], done=3.0)  # one token: a TTFT, no gap
    t = serve_bench.stream_times([a, b, c], is_streamed=True)
    assert t["ttft_p50_s"] == pytest.approx(2.0)
    assert t["ttft_mean_s"] == pytest.approx(2.0)
    assert t["tpot_p50_s"] == pytest.approx(0.3)  # the median of 0.1 and 0.5
    assert t["latency_p50_s"] == pytest.approx(2.0)


def test_stream_times_without_a_stream_only_know_latency():
    s = serve_bench.Stream(sent=0.0, arrivals=[2.0, 2.0], done=2.0)  # the peer: every token at the end
    t = serve_bench.stream_times([s], is_streamed=False)
    assert t["latency_p50_s"] == 2.0
    assert all(t[k] != t[k] for k in ("ttft_p50_s", "tpot_p50_s", "ttft_mean_s"))  # NaN


def test_group_pids_finds_a_server_started_in_its_own_session():
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert serve_bench.group_pids(process.pid) == [process.pid]
        assert serve_bench.process_rss(process.pid) > 0
    finally:
        process.kill()
        process.wait()
    assert serve_bench.group_pids(process.pid) == []
