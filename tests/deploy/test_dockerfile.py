"""The Dockerfile: lint clean, and its entrypoint, port, environment and files agree with the code.

No Docker engine runs here: the image is never built. What can be checked without one is.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from server.app import create_app
from server.config import ServerConfig, env_name
from tests.deploy.artifacts import (
    ROOT,
    dockerfile_env,
    dockerfile_instructions,
    final_stage,
    image_server_env,
    parse_serve,
    run,
    serve_actions,
    serve_parser,
    tool,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions()


def keyword(instructions, name):
    return [i for i in final_stage(instructions) if i.keyword == name]


def healthcheck_command(instructions) -> list[str]:
    [check] = keyword(instructions, "HEALTHCHECK")
    _, sep, cmd = check.value.partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    return json.loads(cmd)


def test_hadolint_passes_with_every_rule():
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (ROOT / ".hadolint.yaml").exists(), "rules are ignored only inline, each with its reason"


def test_every_ignored_rule_is_explained(instructions):
    pragmas = [(inst, c) for inst in instructions for c in inst.comments if "hadolint ignore=" in c]
    for inst, pragma in pragmas:
        explanation = " ".join(c for c in inst.comments if c != pragma)
        for rule in pragma.split("ignore=", 1)[1].split(","):
            assert re.search(rf"{rule.strip()}\b.*\w+ \w+ \w+", explanation), (
                f"line {inst.line}: {rule} is ignored without a reason in the comment above it")


def test_base_images_and_torch_are_pinned(instructions):
    args = {}
    for inst in instructions:
        if inst.keyword == "ARG" and "=" in inst.value:
            key, _, value = inst.value.partition("=")
            args[key] = value
    froms = [i.value.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for ref in froms:
        image = args.get(ref.strip("${}"), ref)
        name, _, tag = image.rpartition(":")
        assert name.startswith("nvidia/cuda") and re.match(r"\d+\.\d+\.\d+-(cudnn-)?runtime-", tag), image
    torch = Version(args["TORCH_VERSION"])
    torch_range = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert torch in torch_range.specifier
    cpu_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert torch == Version(cpu_pin), "the image runs the torch version the CPU suite tests"
    assert re.search(r"/whl/cu\d+$", args["TORCH_INDEX"]), "a CUDA build of torch"


def test_entrypoint_is_exec_form_llava_serve_serve(instructions):
    [entrypoint] = keyword(instructions, "ENTRYPOINT")
    argv = entrypoint.json_args()
    if argv[0] == "tini":
        assert argv[1] == "--"
        argv = argv[2:]
        assert any(i.keyword == "RUN" and " tini" in i.value for i in final_stage(instructions))
    program, command = argv
    module, _, func = PYPROJECT["project"]["scripts"][program].partition(":")
    assert (module, func) == ("server.cli", "main")
    assert serve_parser().prog.endswith(command)
    [stop] = keyword(instructions, "STOPSIGNAL")
    assert stop.value == "SIGTERM"
    [cmd] = keyword(instructions, "CMD")
    assert cmd.json_args() == [], "no baked-in model: the user names one with --model"


def test_runs_as_a_non_root_user(instructions):
    user = keyword(instructions, "USER")[-1].value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), "numeric, so k8s runAsNonRoot can verify it"
    assert any(i.keyword == "RUN" and f"--uid {uid}" in i.value for i in final_stage(instructions))


def test_port_and_environment_agree_with_the_serve_flags(instructions):
    env = image_server_env(instructions)
    args = parse_serve(["--model", "/models/NAME"], env)
    [expose] = keyword(instructions, "EXPOSE")
    assert int(expose.value) == args.port
    assert args.host == "0.0.0.0", "reachable through the published port"
    assert args.device.startswith("cuda")


def test_every_serve_flag_has_an_environment_variable():
    help_text = " ".join(serve_parser().format_help().split())
    for flag in serve_actions():
        assert f"[env {env_name(flag)}" in help_text, f"`llava-serve serve --help` names no variable for {flag}"


def test_healthcheck_asks_ready_on_the_served_port(instructions):
    argv = healthcheck_command(instructions)
    script = argv[-1]
    assert "/ready" in script
    port_var = re.search(r"environ\.get\('(\w+)', '(\d+)'\)", script)
    assert port_var, "the health check follows the configured port"
    env = image_server_env(instructions)
    assert port_var.group(1) in env and port_var.group(2) == env[port_var.group(1)]
    routes = {r.path for r in create_app(ServerConfig(model="m", served_model_name="m")).routes}
    assert "/ready" in routes


def test_models_and_hub_cache_volumes(instructions):
    env = dockerfile_env(instructions)
    [volume] = keyword(instructions, "VOLUME")
    assert env["HF_HOME"] in volume.json_args()
    setup = " ".join(i.value for i in final_stage(instructions) if i.keyword == "RUN")
    assert "/models" in setup and f"chown llava:llava {env['HF_HOME']}" in setup
    assert "/models" not in volume.json_args(), "/models is mounted read-only by the user, never an image volume"


def dockerignore_allows(path: str) -> bool:
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            allowed = negate
    return allowed


def test_copied_files_exist_and_reach_the_build_context(instructions):
    copies = [shlex.split(i.value) for i in instructions if i.keyword == "COPY" and "--from" not in i.value]
    sources = [src for c in copies for src in c[:-1]]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert dockerignore_allows(src), f"{src} is excluded by .dockerignore"
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert set(packages) <= set(sources), "every package of the project is copied"
    assert PYPROJECT["project"]["readme"] in sources
    for private in [".venv/bin/python", ".git/config", ".demo/small/config.json", "models/x/model.safetensors",
                    "server/__pycache__/app.cpython-311.pyc"]:
        assert not dockerignore_allows(private), private


def test_constraints_pin_every_dependency():
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert req.name not in pins, f"{req.name} pinned twice"
            [spec] = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = Version(spec.version)
    deps = {Requirement(d).name: Requirement(d) for d in PYPROJECT["project"]["dependencies"]}
    assert set(pins) == set(deps) - {"torch"}, "docker/constraints.txt pins each dependency of pyproject.toml"
    for name, version in pins.items():
        assert version in deps[name].specifier, f"{name}=={version} is outside pyproject's {deps[name].specifier}"
