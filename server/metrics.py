"""Every Prometheus series of the server, defined in one place (prefix `llava_`, spec section 6).

Engine-side gauges and cumulative counters are read from an `EngineStats` snapshot at scrape time
by a collector; the engine never imports this module. Label values come from bounded sets only
(modalities, finish reasons, error codes, rejection reasons, the endpoints of server/endpoints.py,
HTTP statuses), never request ids, keys or URLs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from model_runtime import FINISH_REASONS, STEP_TOKEN_BOUNDS, EngineStats
from server.endpoints import ENDPOINTS
from server.errors import error_codes

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
TOKEN_COUNT_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
MODALITIES = ("text", "image", "video", "audio")
REJECT_REASONS = ("queue_full", "shutting_down", "not_ready")
# OpenAI's batch statuses; a line's (server/store/records.LINE_STATUSES); how a line run here ended
BATCH_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                  "cancelled")
BATCH_LINE_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
BATCH_LINE_OUTCOMES = ("succeeded", "failed", "dropped")  # dropped: its lease had gone to another worker


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None], num_waiting: Callable[[], int]) -> None:
        self._stats = stats
        self._num_waiting = num_waiting

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily("llava_requests_running", "Requests with rows in the running batch",
                                value=s.num_running if s else 0)
        yield GaugeMetricFamily("llava_requests_waiting", "Requests admitted and not yet running (media "
                                "preparation and the engine's queue)", value=self._num_waiting())
        yield GaugeMetricFamily("llava_kv_cache_tokens", "Real tokens held in the KV cache",
                                value=s.num_kv_tokens if s else 0)
        yield GaugeMetricFamily("llava_batch_size", "Rows in the running batch (each choice is a row)",
                                value=s.batch_size if s else 0)
        yield GaugeMetricFamily("llava_worker_last_step_timestamp_seconds",
                                "Unix time the engine worker finished its last step",
                                value=s.last_step_time if s else 0)
        yield CounterMetricFamily("llava_encoder_cache_queries", "Media items looked up in the encoder cache",
                                  value=s.encoder_cache_queries if s else 0)
        yield CounterMetricFamily("llava_encoder_cache_hits", "Media items found in the encoder cache",
                                  value=s.encoder_cache_hits if s else 0)
        # the paged KV cache and the scheduler (docs/ENGINE.md)
        yield GaugeMetricFamily("llava_kv_cache_usage_ratio", "Share of KV cache blocks held by sequences (0-1)",
                                value=s.kv_cache_usage if s else 0)
        blocks = GaugeMetricFamily("llava_kv_cache_blocks", "KV cache blocks by state: used (held by a sequence), "
                                   "cached (free, still findable by the prefix cache), free (all free ones, "
                                   "cached included)", labels=["state"])
        used, total, cached = (s.kv_blocks_used, s.kv_blocks_total, s.kv_blocks_cached) if s else (0, 0, 0)
        for state, value in (("used", used), ("cached", cached), ("free", total - used)):
            blocks.add_metric([state], value)
        yield blocks
        yield GaugeMetricFamily("llava_kv_cache_capacity_tokens", "Token positions the KV cache holds",
                                value=s.kv_blocks_total * s.block_size if s else 0)
        yield CounterMetricFamily("llava_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                  value=s.prefix_cache_queried_tokens if s else 0)
        yield CounterMetricFamily("llava_prefix_cache_hits", "Prompt tokens whose KV came from the prefix cache",
                                  value=s.prefix_cache_hit_tokens if s else 0)
        yield CounterMetricFamily("llava_preemptions", "Sequences sent back to wait (KV recomputed later) for lack "
                                  "of KV blocks", value=s.num_preemptions if s else 0)
        tokens = CounterMetricFamily("llava_engine_tokens", "Positions the engine computed (prompt and decode) by "
                                     "request class: batch lines' share of its work", labels=["priority"])
        tokens.add_metric(["interactive"], s.num_interactive_tokens if s else 0)
        tokens.add_metric(["batch"], s.num_batch_tokens if s else 0)
        yield tokens
        for kind, doc in (("prompt", "Prompt tokens (text and media rows) computed per engine step"),
                          ("decode", "Decode tokens (one per decoding sequence) per engine step")):
            h = getattr(s, f"step_{kind}_tokens") if s else None
            bounds = h.bounds if h else STEP_TOKEN_BOUNDS
            counts = h.counts if h else (0,) * (len(bounds) + 1)
            buckets = [(str(b), c) for b, c in zip(bounds, counts, strict=False)] + [("+Inf", counts[-1])]
            yield HistogramMetricFamily(f"llava_step_{kind}_tokens", doc, buckets=buckets,
                                        sum_value=h.total if h else 0)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats | None], num_waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_EngineCollector(stats, num_waiting))
        self.prompt_tokens = Counter("llava_prompt_tokens", "Prompt tokens by modality", ["modality"], registry=r)
        self.generation_tokens = Counter("llava_generation_tokens", "Generated tokens", registry=r)
        self.requests = Counter("llava_requests", "Finished choices by finish reason", ["finish_reason"], registry=r)
        self.rejected = Counter("llava_requests_rejected", "Requests refused before any work, by reason",
                                ["reason"], registry=r)
        self.media_items = Counter("llava_media_items", "Media items served, by modality", ["modality"], registry=r)
        self.errors = Counter("llava_errors", "Error responses and stream errors by error code", ["code"], registry=r)
        self.responses = Counter("llava_http_responses", "HTTP responses by API endpoint and status",
                                 ["endpoint", "status"], registry=r)

        def histogram(name: str, doc: str, buckets, labels=()) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=buckets, registry=r)

        self.ttft = histogram("llava_time_to_first_token_seconds", "Arrival to first token", LATENCY_BUCKETS)
        self.itl = histogram("llava_inter_token_latency_seconds", "Time between streamed tokens",
                             TOKEN_LATENCY_BUCKETS)
        self.e2e = histogram("llava_e2e_request_latency_seconds", "Arrival to last token", LATENCY_BUCKETS)
        self.queue_time = histogram("llava_request_queue_time_seconds", "Engine arrival to the start of prefill",
                                    LATENCY_BUCKETS)
        self.prefill_time = histogram("llava_request_prefill_time_seconds", "Prefill start to first token",
                                      LATENCY_BUCKETS)
        self.decode_time = histogram("llava_request_decode_time_seconds", "First token to last token",
                                     LATENCY_BUCKETS)
        self.request_prompt_tokens = histogram("llava_request_prompt_tokens", "Prompt tokens per request",
                                               TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = histogram("llava_request_generation_tokens",
                                                   "Generated tokens per request (all choices)", TOKEN_COUNT_BUCKETS)
        self.media_fetch = histogram("llava_media_fetch_seconds", "Fetching one media item", LATENCY_BUCKETS,
                                     ["modality"])
        self.media_decode = histogram("llava_media_decode_seconds", "Decoding one media item (decoder process)",
                                      LATENCY_BUCKETS, ["modality"])
        self.media_preprocess = histogram("llava_media_preprocess_seconds", "Media item to tensors",
                                          LATENCY_BUCKETS, ["modality"])
        self.encoder_forward = histogram("llava_encoder_forward_seconds",
                                         "Encoder calls a request waited on, by modality", LATENCY_BUCKETS,
                                         ["modality"])
        self.response_time = histogram("llava_http_response_seconds", "Arrival to the last byte of the response, "
                                       "by API endpoint", LATENCY_BUCKETS, ["endpoint"])
        self.model_info = Info("llava_model", "Served model", registry=r)
        # batches (server/batch/): every replica's, counted from the state database every few seconds
        self.batches = Gauge("llava_batches", "Batches in the state database by status", ["status"], registry=r)
        self.batch_lines = Gauge("llava_batch_lines", "Batch lines in the state database by status", ["status"],
                                 registry=r)
        self.batch_lines_waiting = Gauge("llava_batch_lines_waiting", "Batch lines not yet claimed by any server",
                                         registry=r)
        self.batch_lines_done = Counter("llava_batch_lines_done", "Batch lines this server ran to an answer, by "
                                        "outcome", ["status"], registry=r)
        for status in BATCH_STATUSES:
            self.batches.labels(status=status)
        for status in BATCH_LINE_STATUSES:
            self.batch_lines.labels(status=status)
        for status in BATCH_LINE_OUTCOMES:
            self.batch_lines_done.labels(status=status)
        for modality in MODALITIES:  # every bounded label value present from the first scrape
            self.prompt_tokens.labels(modality=modality)
            if modality != "text":
                self.media_items.labels(modality=modality)
        for reason in FINISH_REASONS.values():
            self.requests.labels(finish_reason=reason)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for code in error_codes():
            self.errors.labels(code=code)
        for endpoint in ENDPOINTS:
            self.response_time.labels(endpoint=endpoint)

    def observe_response(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP response (server.middleware.EndpointMetrics); `endpoint` from server/endpoints.py's table."""
        self.responses.labels(endpoint=endpoint, status=str(status)).inc()
        self.response_time.labels(endpoint=endpoint).observe(seconds)

    def set_batch_counts(self, batches: dict[str, int], lines: dict[str, int]) -> None:
        """The batch runner's periodic count (StateStore.batch_status_counts)."""
        for status in BATCH_STATUSES:
            self.batches.labels(status=status).set(batches.get(status, 0))
        for status in BATCH_LINE_STATUSES:
            self.batch_lines.labels(status=status).set(lines.get(status, 0))
        self.batch_lines_waiting.set(lines.get("pending", 0))
