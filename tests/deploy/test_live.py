"""A live `llava-serve serve` on the tiny model answers the deployment's probes and exports every metric
that the Grafana dashboard, the autoscaler and its adapter rule name; a real Prometheus, configured
like docker/prometheus/prometheus.yml, scrapes it and answers every dashboard query with the
labels its legend shows."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from unittest import mock

import httpx
import pytest

from testkit.origin import Origin
from tests.conftest import random_image
from tests.deploy.artifacts import (
    DOCKER,
    K8S,
    as_plain_promql,
    container_env,
    dockerfile_instructions,
    grafana_exprs,
    k8s_documents,
    load_yaml,
    metric_names,
    run,
    tool,
)
from tests.e2e.conftest import free_port, start_server, stop_server

pytestmark = pytest.mark.xdist_group("deploy-live")  # one server and one Prometheus for the module

API_KEY = "deploy-check-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


@pytest.fixture(scope="module")
def image_origin():
    """A media origin on loopback serving one PNG, so the fetch stage of the pipeline runs too."""
    buf = io.BytesIO()
    random_image(64, 48, seed=1).save(buf, format="PNG")
    origin = Origin()
    yield origin.add("/image.png", buf.getvalue(), headers={"Content-Type": "image/png"})
    origin.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """The server with the Deployment's environment and an API key, as in the cluster."""
    [container] = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {**container_env(container), "LLAVA_SERVE_API_KEY": API_KEY}
    with mock.patch.dict(os.environ, env):
        s = start_server(tiny_checkpoint, tmp_path_factory.mktemp("deploy-server"),
                         "--allow-http-media", "--allow-loopback-media")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """Prometheus on loopback scraping the live server every second with the compose job's settings."""
    work = tmp_path_factory.mktemp("prometheus")
    config = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    config["global"]["scrape_interval"] = "1s"
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [server.base_url.removeprefix("http://")]}]
    (work / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    with open(work / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: query(base, f'up{{job="{job["job_name"]}"}}') == ["1"], 30), (
            "Prometheus never scraped the server:\n" + (work / "prometheus.log").read_text())
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def scrape(server, prometheus, image_origin) -> str:
    """/metrics after one streamed chat with a fetched image and one refused request, sent once
    Prometheus scrapes (so that rates rise and every labelled series the dashboard shows exists)."""
    body = {"model": "tiny", "stream": True, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_origin}},
        {"type": "text", "text": "What is this?"},
    ]}]}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events), events
    unknown = httpx.post(server.base_url + "/v1/chat/completions", json={**body, "model": "nope"}, headers=AUTH,
                         timeout=10)
    assert unknown.status_code == 404
    assert httpx.get(server.base_url + "/v1/models", timeout=10).status_code == 401, "the key protects the API"
    r = httpx.get(server.base_url + "/metrics", timeout=10)
    assert r.status_code == 200, "the Deployment's environment makes /metrics public for the PodMonitor"
    return r.text


def query(base: str, expr: str) -> list:
    """The values of an instant query (empty while Prometheus is not up yet)."""
    try:
        r = httpx.get(base + "/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.HTTPError:
        return []
    if r.status_code == 503:  # still starting
        return []
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return [sample["value"][1] for sample in body["data"]["result"]]


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False


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


def test_prometheus_answers_every_dashboard_query(scrape, prometheus):
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "llava-serve.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = as_plain_promql(target["expr"])
            # a series born with the traffic needs two scrapes before rate() sees it
            assert wait_for(lambda e=expr: query(prometheus, e), 10), f"{panel['title']}: no series for {expr}"
            result = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]
            for label in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
                assert all(label in s["metric"] for s in result), f"{panel['title']}: no label {label!r} in {result}"
    rate = as_plain_promql("sum(rate(llava_requests_total[$__rate_interval]))")
    assert wait_for(lambda: any(float(v) > 0 for v in query(prometheus, rate)), 10), "the traffic shows in the rate"
