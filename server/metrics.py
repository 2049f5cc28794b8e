"""Every Prometheus series of the server, defined in one place (prefix `llava_`).

Engine-side gauges are read from an `EngineStats` snapshot at scrape time; the engine never
imports this module. Label values come from bounded sets only.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from model_runtime import EngineStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llava_requests", "Finished requests by finish reason", ["finish_reason"], registry=r)
        self.errors = Counter("llava_errors", "Error responses by error code", ["code"], registry=r)
        self.prompt_tokens = Counter("llava_prompt_tokens", "Prompt tokens by modality", ["modality"], registry=r)
        self.generation_tokens = Counter("llava_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram("llava_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.e2e = Histogram("llava_e2e_request_latency_seconds", "Request latency, arrival to last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("llava_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("llava_requests_waiting", "Requests waiting for the batch", registry=r)
        self.model_info = Info("llava_model", "Served model", registry=r)
        self.running.set_function(lambda: _field(stats(), "num_running"))
        self.waiting.set_function(lambda: _field(stats(), "num_waiting"))


def _field(stats: EngineStats | None, name: str) -> float:
    return float(getattr(stats, name)) if stats is not None else 0.0
