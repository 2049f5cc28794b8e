"""A real Prometheus server on loopback scrapes /metrics; promtool lints a scrape."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.xdist_group("local")

SERIES = [
    "llava_requests_running", "llava_requests_waiting", "llava_kv_cache_tokens", "llava_batch_size",
    "llava_worker_last_step_timestamp_seconds", "llava_prompt_tokens_total", "llava_generation_tokens_total",
    "llava_requests_total", "llava_requests_rejected_total", "llava_media_items_total",
    "llava_encoder_cache_queries_total", "llava_encoder_cache_hits_total", "llava_errors_total",
    "llava_time_to_first_token_seconds_bucket", "llava_inter_token_latency_seconds_bucket",
    "llava_e2e_request_latency_seconds_bucket", "llava_request_queue_time_seconds_bucket",
    "llava_request_prefill_time_seconds_bucket", "llava_request_decode_time_seconds_bucket",
    "llava_request_prompt_tokens_bucket", "llava_request_generation_tokens_bucket",
    "llava_media_fetch_seconds_bucket", "llava_media_decode_seconds_bucket",
    "llava_media_preprocess_seconds_bucket", "llava_encoder_forward_seconds_bucket", "llava_model_info",
    "llava_kv_cache_usage_ratio", "llava_kv_cache_blocks", "llava_kv_cache_capacity_tokens",
    "llava_prefix_cache_queries_total", "llava_prefix_cache_hits_total", "llava_preemptions_total",
    "llava_step_prompt_tokens_bucket", "llava_step_decode_tokens_bucket", "llava_http_responses_total",
    "llava_http_response_seconds_bucket", "llava_engine_tokens_total",
]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make test` installs Debian's prometheus package"
    return path


def test_every_series_is_exported_and_promtool_passes(local_server):
    with local_server.client() as client:  # a whole streamed image chat: every per-request series observed
        chunks = list(client.chat.completions.create(model="tiny", max_tokens=3, stream=True, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
                       "z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"}}, {"type": "text", "text": "hi"}]}],
        ))
    assert chunks[-1].choices[0].finish_reason == "length"
    text = httpx.get(local_server.base_url + "/metrics").text
    for series in SERIES:
        assert re.search(rf"^{series}[{{ ]", text, re.M), series
    assert re.search(r'^llava_model_info\{dtype="float32",model="tiny",quantization="none"\} 1\.0$', text, re.M)
    assert re.search(r'^llava_media_items_total\{modality="image"\} [1-9]', text, re.M)
    assert re.search(r'^llava_step_decode_tokens_count [1-9]', text, re.M)  # the request decoded
    assert re.search(r'^llava_prefix_cache_queries_total [1-9]', text, re.M)
    for state in ("used", "cached", "free"):
        assert re.search(rf'^llava_kv_cache_blocks\{{state="{state}"\}} \d', text, re.M), state
    # bounded labels: no request ids, keys or URLs
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {"modality", "finish_reason", "reason", "code", "le", "model", "dtype", "quantization",
                      "state", "endpoint", "status", "priority"}, labels
    assert re.search(r'^llava_engine_tokens_total\{priority="interactive"\} [1-9]', text, re.M)
    assert re.search(r'^llava_http_responses_total\{endpoint="chat",status="200"\} [1-9]', text, re.M)
    lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_prometheus_server_scrapes_it(local_server, tmp_path):
    port = free_port()
    target = local_server.base_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: llava\n    static_configs:\n      - targets: ['{target}']\n"
    )
    with local_server.client() as client:
        client.chat.completions.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                                   params={"query": "sum(llava_requests_total)"}, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                continue
            result = answer.get("data", {}).get("result", [])
        assert result, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert float(result[0]["value"][1]) >= 1
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
