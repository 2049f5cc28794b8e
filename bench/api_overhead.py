"""The cost of each API's adapter: one greedy text conversation through chat, responses and messages
against a running server, one request at a time; prints p50 / p90 latency per API and
its ratio to chat.

    .venv/bin/python bench/api_overhead.py --base-url http://127.0.0.1:8000 --model tiny [--rounds 30]

Every API runs the same generation (the same prompt tokens, the same number of output tokens), so
the difference is the adapter: parsing the wire body, building the internal request, rendering
the answer. Requests alternate between the APIs so that drift in the machine's speed hits all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

QUESTION = "Tell me about the sea."
SYSTEM = "Be brief."


def bodies(model: str, max_tokens: int) -> dict[str, tuple[str, dict]]:
    return {
        "chat": ("/v1/chat/completions", {"model": model, "max_tokens": max_tokens, "temperature": 0,
                                          "messages": [{"role": "system", "content": SYSTEM},
                                                       {"role": "user", "content": QUESTION}]}),
        "responses": ("/v1/responses", {"model": model, "max_output_tokens": max_tokens, "temperature": 0,
                                        "instructions": SYSTEM, "input": QUESTION, "store": False}),
        "messages": ("/v1/messages", {"model": model, "max_tokens": max_tokens, "temperature": 0,
                                      "system": SYSTEM, "messages": [{"role": "user", "content": QUESTION}]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    apis = bodies(args.model, args.max_tokens)
    seconds: dict[str, list[float]] = {name: [] for name in apis}
    headers = {"Authorization": f"Bearer {args.api_key}"}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=120) as client:
        for path, body in apis.values():  # warm-up: the first request of each route
            client.post(path, json=body).raise_for_status()
        for _ in range(args.rounds):
            for name, (path, body) in apis.items():
                started = time.perf_counter()
                client.post(path, json=body).raise_for_status()
                seconds[name].append(time.perf_counter() - started)
    chat_p50 = statistics.median(seconds["chat"])
    print(f"{'api':<12} {'p50 ms':>8} {'p90 ms':>8} {'p50 / chat':>11}   ({args.rounds} rounds, "
          f"{args.max_tokens} output tokens)")
    for name, values in seconds.items():
        p50, p90 = statistics.median(values), statistics.quantiles(values, n=10)[-1]
        print(f"{name:<12} {p50 * 1e3:8.1f} {p90 * 1e3:8.1f} {p50 / chat_p50:11.3f}")


if __name__ == "__main__":
    main()
