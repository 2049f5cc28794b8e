"""A live `llava-serve serve` on the tiny model answers the deployment's probes and exports every metric
that the Grafana dashboard, the autoscaler and its adapter rule name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import png_data_url, random_image
from tests.deploy.artifacts import (
    DOCKER,
    K8S,
    dockerfile_instructions,
    grafana_exprs,
    k8s_documents,
    load_yaml,
    metric_names,
    run,
    tool,
)
from tests.e2e.conftest import free_port, start_server, stop_server

SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = start_server(tiny_checkpoint, tmp_path_factory.mktemp("deploy-server"))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def scrape(server) -> str:
    """/metrics after one streamed chat with an image, so that labelled series have samples too."""
    body = {"model": "tiny", "stream": True, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(random_image(64, 48, seed=1))}},
        {"type": "text", "text": "What is this?"},
    ]}]}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    r = httpx.get(server.base_url + "/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def exported_series(text: str) -> set[str]:
    """Every series name the scrape offers: sample names, and the names each declared family can have."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.add(family)
            names.update(family + s for s in SERIES_SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def probe_paths() -> set[str]:
    [check] = [i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK"]
    paths = {p for p in ("/ready", "/health") if p in check.value}
    [container] = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    paths |= {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    return paths


def test_probe_paths_answer_200_when_ready(server, scrape):
    paths = probe_paths()
    assert paths == {"/health", "/ready"}
    for path in paths:
        r = httpx.get(server.base_url + path, timeout=5)
        assert r.status_code == 200, (path, r.text)


def test_image_healthcheck_command_passes_only_when_ready(server, scrape):
    [check] = [i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK"]
    argv = json.loads(check.value.partition("CMD ")[2])
    assert argv[0] == "python3"
    command = [sys.executable, *argv[1:]]
    port = server.base_url.rsplit(":", 1)[1]

    def health(port: str) -> int:
        env = {**os.environ, "LLAVA_SERVE_PORT": port}
        return subprocess.run(command, env=env, capture_output=True, timeout=10).returncode

    assert health(port) == 0
    assert health(str(free_port())) != 0, "nothing listening there: unhealthy"


def test_scrape_passes_promtool(scrape):
    result = run(tool("promtool"), "check", "metrics", input=scrape)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_names_only_exported_metrics(scrape):
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "llava-serve.json").read_text())
    missing = metric_names(grafana_exprs(dashboard)) - exported_series(scrape)
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"


def test_autoscaling_metric_is_exported(scrape):
    [rule] = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]
    hpa = k8s_documents()["HorizontalPodAutoscaler"]["spec"]
    named = metric_names([rule["seriesQuery"], rule["metricsQuery"], hpa["metrics"][0]["pods"]["metric"]["name"]])
    assert named and not named - exported_series(scrape)
