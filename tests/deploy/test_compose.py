"""docker/compose.yaml, the Prometheus config and the Grafana provisioning agree with each other and the code."""

from __future__ import annotations

import json
import re
import tomllib
from urllib.parse import urlsplit

import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.deploy.artifacts import (
    DOCKER,
    ROOT,
    check_promql,
    compose_env,
    dockerfile_env,
    dockerfile_instructions,
    expand_compose,
    grafana_exprs,
    image_server_env,
    load_yaml,
    metric_names,
    parse_serve,
    run,
    tool,
)

GRAFANA = DOCKER / "grafana"
# What the dashboard must show (issue: deployment): requests and errors, TTFT and inter-token
# latency, throughput, queue, batch size, KV tokens, media stages per modality, encoder cache; and
# (issue: engine) KV cache use, prefix-cache hits, preemptions, tokens per step.
DASHBOARD_MUST_SHOW = {
    "llava_kv_cache_usage_ratio", "llava_kv_cache_blocks", "llava_prefix_cache_hits_total",
    "llava_prefix_cache_queries_total", "llava_preemptions_total", "llava_step_prompt_tokens_bucket",
    "llava_step_decode_tokens_bucket",
    "llava_requests_total", "llava_errors_total", "llava_time_to_first_token_seconds_bucket",
    "llava_inter_token_latency_seconds_bucket", "llava_generation_tokens_total", "llava_prompt_tokens_total",
    "llava_requests_waiting", "llava_requests_running", "llava_batch_size", "llava_kv_cache_tokens",
    "llava_media_fetch_seconds_bucket", "llava_media_decode_seconds_bucket", "llava_media_preprocess_seconds_bucket",
    "llava_encoder_forward_seconds_bucket", "llava_encoder_cache_hits_total", "llava_encoder_cache_queries_total",
}


@pytest.fixture(scope="module")
def compose():
    return load_yaml(DOCKER / "compose.yaml")


@pytest.fixture(scope="module")
def image_env():
    return dockerfile_env(dockerfile_instructions())


@pytest.fixture(scope="module")
def server_args(compose):
    service = compose["services"]["llava-serve"]
    command = [expand_compose(a) for a in service["command"]]
    env = {**image_server_env(dockerfile_instructions()), **compose_env(service)}
    return parse_serve(command, env)


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((GRAFANA / "dashboards" / "llava-serve.json").read_text())


def mount(service: dict, target: str) -> tuple[str, str]:
    """(source, options) of the volume mounted at TARGET."""
    for spec in service["volumes"]:
        source, _, rest = expand_compose(spec).partition(":")
        path, _, options = rest.partition(":")
        if path == target:
            return source, options
    raise AssertionError(f"nothing is mounted at {target}")


def pinned(image: str) -> bool:
    return bool(re.search(r":v?\d+(\.\d+)+$", image))


def test_services_and_pinned_images(compose):
    services = compose["services"]
    assert set(services) == {"llava-serve", "prometheus", "grafana"}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert services["llava-serve"]["image"] == f"llava-serve:{version}"
    build = services["llava-serve"]["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT and (ROOT / build["dockerfile"]).exists()
    for name in ("prometheus", "grafana"):
        assert pinned(services[name]["image"]), services[name]["image"]


def test_server_gets_a_gpu_the_port_models_and_cache(compose, server_args, image_env):
    service = compose["services"]["llava-serve"]
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    published = [p.rsplit(":", 1)[1] for p in service["ports"]]
    assert str(server_args.port) in published
    assert server_args.quantization in ("none", "bitsandbytes-8bit", "bitsandbytes-4bit")
    assert server_args.model.startswith("/models/")
    _, options = mount(service, "/models")
    assert options == "ro"
    cache, _ = mount(service, image_env["HF_HOME"])
    assert cache in compose["volumes"], "the hub cache is a named volume"


def test_metrics_are_scrapable_without_a_key(server_args):
    assert server_args.metrics_public is True


def test_stop_grace_period_covers_the_drain(compose, server_args):
    grace = compose["services"]["llava-serve"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > server_args.shutdown_timeout


def test_prometheus_config_is_valid_and_scrapes_the_server(compose, server_args):
    result = run(tool("promtool"), "check", "config", str(DOCKER / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    service = compose["services"]["prometheus"]
    config_flag = next(a for a in service["command"] if a.startswith("--config.file="))
    source, options = mount(service, config_flag.split("=", 1)[1])
    assert (DOCKER / source).resolve() == (DOCKER / "prometheus" / "prometheus.yml") and options == "ro"
    [job] = load_yaml(DOCKER / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"llava-serve:{server_args.port}"]
    assert job["metrics_path"] in {r.path for r in create_app(ServerConfig(model="m", served_model_name="m")).routes}


def test_grafana_provisions_the_datasource_and_the_dashboard(compose, dashboard):
    service = compose["services"]["grafana"]
    source, _ = mount(service, "/etc/grafana/provisioning")
    assert (DOCKER / source).resolve() == GRAFANA / "provisioning"
    [datasource] = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(datasource["url"])
    prometheus_ports = [p.rsplit(":", 1)[1] for p in compose["services"]["prometheus"]["ports"]]
    assert url.hostname == "prometheus" and str(url.port) in prometheus_ports
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "llava-serve.yml")["providers"]
    source, _ = mount(service, provider["options"]["path"])
    assert (DOCKER / source).resolve() == GRAFANA / "dashboards"
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        for ref in [panel.get("datasource"), *[t.get("datasource") for t in panel.get("targets", [])]]:
            if ref is not None:
                assert ref["uid"] == datasource["uid"], panel["title"]


def test_dashboard_queries_are_valid_promql_and_cover_the_issue(dashboard, tmp_path):
    exprs = grafana_exprs(dashboard)
    check_promql(exprs, tmp_path)
    missing = DASHBOARD_MUST_SHOW - metric_names(exprs)
    assert not missing, f"the dashboard shows none of {sorted(missing)}"
