"""The `docker run` commands of README.md and docs/DEPLOY.md start a server the real parser accepts."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest

from tests.deploy.artifacts import ROOT, dockerfile_instructions, image_server_env, parse_serve

DOCS = [ROOT / "README.md", ROOT / "docs" / "DEPLOY.md"]
# `docker run` options the docs use: those that take a value, and those that do not.
DOCKER_RUN_VALUES = {"-p", "-v", "-e", "--name", "--gpus", "--stop-timeout", "--shm-size"}
DOCKER_RUN_FLAGS = {"-d", "--rm", "-it"}
REQUIRED = "docker run --gpus all -p 8000:8000 -v $PWD/models:/models:ro {image} --model /models/NAME --quantization bitsandbytes-4bit"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def docker_runs(path) -> list[list[str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [shlex.split(line.strip().split("  #")[0]) for line in text.splitlines() if line.strip().startswith("docker run ")]


def split_docker_run(argv: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    options: dict[str, list[str]] = {}
    i = 2
    while argv[i].startswith("-"):
        if argv[i] in DOCKER_RUN_FLAGS:
            options.setdefault(argv[i], []).append("")
            i += 1
        else:
            assert argv[i] in DOCKER_RUN_VALUES, f"unknown docker run option {argv[i]} in {shlex.join(argv)}"
            options.setdefault(argv[i], []).append(argv[i + 1])
            i += 2
    return options, argv[i], argv[i + 1:]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_show_the_gpu_docker_run(path):
    assert REQUIRED.format(image=f"llava-serve:{VERSION}") in path.read_text()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_docker_run_of_the_image_parses(path):
    image_env = image_server_env(dockerfile_instructions())
    runs = [split_docker_run(argv) for argv in docker_runs(path)]
    ours = [r for r in runs if r[1].startswith("llava-serve:")]
    assert ours, f"{path.name} shows no docker run of the image"
    for options, image, args in ours:
        assert image == f"llava-serve:{VERSION}"
        assert options["--gpus"], "the server needs a GPU"
        if args == ["--help"]:
            continue
        env = dict(e.split("=", 1) for e in options.get("-e", []))
        parsed = parse_serve(args, {**image_env, **env})
        assert parsed.model.startswith("/models/")
        assert any(v.endswith(":/models:ro") for v in options["-v"]), "weights mounted read-only"
        if "--stop-timeout" in options:
            assert float(options["--stop-timeout"][0]) > parsed.shutdown_timeout
