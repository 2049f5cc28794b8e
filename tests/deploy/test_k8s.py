"""docker/k8s: valid against the Kubernetes schemas; probes, port, drain timing and scaling agree with the code."""

from __future__ import annotations

import tomllib

import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.deploy.artifacts import (
    K8S,
    ROOT,
    check_promql,
    container_env,
    dockerfile_env,
    dockerfile_instructions,
    image_server_env,
    k8s_documents,
    load_yaml,
    metric_names,
    parse_serve,
    run,
    tool,
)

NOT_RESOURCES = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
# The oldest Kubernetes these manifests support (autoscaling/v2 HPA behaviour, policy/v1 PDB), and the newest schema.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


@pytest.fixture(scope="module")
def docs():
    return k8s_documents()


@pytest.fixture(scope="module")
def pod(docs):
    return docs["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod):
    [c] = pod["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def server_args(container):
    env = {**image_server_env(dockerfile_instructions()), **container_env(container)}
    return parse_serve(container["args"], env)


@pytest.fixture(scope="module")
def routes():
    return {r.path for r in create_app(ServerConfig(model="m", served_model_name="m")).routes}


def test_kustomization_lists_every_manifest():
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - NOT_RESOURCES
    assert listed == present


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_resources_validate_against_the_schemas(docs, version):
    files = [str(K8S / name) for name in load_yaml(K8S / "kustomization.yaml")["resources"]
             if load_yaml(K8S / name)["apiVersion"].split("/")[0] != "monitoring.coreos.com"]
    assert len(files) == 4
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_tag_is_the_package_version(container):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    [image] = load_yaml(K8S / "kustomization.yaml")["images"]
    assert container["image"] == f"{image['name']}:{version}" and image["newTag"] == version


def test_probes_use_the_server_routes_and_port(container, server_args, routes):
    [port] = container["ports"]
    assert port["containerPort"] == server_args.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, f"{probe}: {get['path']} is no route of the server"
        assert get["port"] in (port["name"], port["containerPort"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "10 minutes to load the weights"


def test_drain_fits_in_the_grace_period(pod, container, server_args):
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert pause >= 5, "long enough for endpoints and load balancers to stop sending"
    assert grace > pause + server_args.shutdown_timeout, (
        f"grace {grace}s <= preStop {pause}s + --shutdown-timeout {server_args.shutdown_timeout}s")


def test_gpu_models_cache_and_user(pod, container, server_args):
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server_args.model.startswith("/models/") and server_args.device.startswith("cuda")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert dockerfile_env(dockerfile_instructions())["HF_HOME"] in mounts
    image_user = next(i for i in reversed(dockerfile_instructions()) if i.keyword == "USER").value.split(":")[0]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(image_user)
    assert server_args.metrics_public is True, "the PodMonitor scrapes without a key"


def test_service_monitor_and_budget_select_the_pods(docs, pod, container):
    labels = pod["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [port] = container["ports"]
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    monitor = docs["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_autoscaler_uses_the_adapter_rule(docs, tmp_path):
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] > hpa["minReplicas"]
    [metric] = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert metric["type"] == "Pods" and name == "llava_requests_waiting"
    [rule] = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert metric_names([rule["seriesQuery"]]) == {name}
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    check_promql([rule["seriesQuery"], rule["metricsQuery"]], tmp_path)
