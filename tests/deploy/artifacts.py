"""The deployment files (Dockerfile, compose, k8s, Grafana, docs) parsed, and the real `serve` parser.

The checks compare these files with the TRUTH in the code: the flags, environment variables and
defaults of `llava-serve serve` come from `server.cli.build_parser()`, the routes from
`server.app.create_app()`, the metrics from a live scrape. Nothing here knows their values.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import yaml

from server.cli import build_parser
from server.config import env_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
BIN = Path(sys.executable).parent
METRIC_NAME = re.compile(r"\bllava_[a-zA-Z0-9_]+")


def tool(name: str) -> str:
    """A linter installed by the dev extras (next to the interpreter), else one on PATH."""
    local = BIN / name
    return str(local) if local.exists() else name


def run(*cmd: str, input: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, cwd=cwd, capture_output=True, text=True, timeout=120)


# -- the server's command line -----------------------------------------------------------------
def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def serve_actions() -> dict[str, argparse.Action]:
    """`--flag` -> its argparse action, for every option of `llava-serve serve`."""
    return {s: a for a in serve_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def env_to_flag() -> dict[str, str]:
    return {env_name(flag): flag for flag in serve_actions()}


def parse_serve(args: list[str], env: dict[str, str]) -> argparse.Namespace:
    """Parse `llava-serve serve ARGS` as the server would inside a container with environment ENV.

    Fails the calling test (with argparse's message) where the server would refuse to start, and
    where an environment value is one argparse does not check itself (a default outside `choices`).
    """
    flags = env_to_flag()
    unknown = sorted(k for k in env if k.startswith("LLAVA_SERVE_") and k not in flags)
    assert not unknown, f"environment variables that are no `llava-serve serve` flag: {unknown}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_SERVE_")}
    stderr = io.StringIO()
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True), contextlib.redirect_stderr(stderr):
        parser = build_parser()
        try:
            ns = parser.parse_args(["serve", *args])
        except SystemExit as e:
            raise AssertionError(f"llava-serve serve {shlex.join(args)} refused: {stderr.getvalue()}") from e
    actions = serve_actions()
    given = {a.split("=")[0] for a in args if a.startswith("--")}
    for var, value in env.items():
        action = actions[flags[var]]
        if action.choices is not None and flags[var] not in given:
            assert getattr(ns, action.dest) in action.choices, f"{var}={value!r}: not one of {list(action.choices)}"
    return ns


# -- Dockerfile --------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    value: str  # the rest, continuation lines joined
    line: int  # 1-based line of the keyword
    comments: list[str] = field(default_factory=list)  # the comment lines right above it

    def json_args(self) -> list[str]:
        args = json.loads(self.value)
        assert isinstance(args, list) and all(isinstance(a, str) for a in args), f"line {self.line}: not exec form"
        return args


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    out: list[Instruction] = []
    comments: list[str] = []
    pending: Instruction | None = None
    for num, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if pending is not None:
            if line.startswith("#"):
                continue
            pending.value += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                out.append(pending)
                pending = None
            continue
        if not line:
            comments = []
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        keyword, _, rest = line.partition(" ")
        inst = Instruction(keyword.upper(), rest.rstrip("\\").strip(), num, comments)
        comments = []
        if line.endswith("\\"):
            pending = inst
        else:
            out.append(inst)
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, inst in enumerate(instructions) if inst.keyword == "FROM"]
    return instructions[starts[-1]:]


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV of the final stage (what a container of the image starts with), `$PATH`-style refs kept."""
    env: dict[str, str] = {}
    for inst in final_stage(instructions):
        if inst.keyword == "ENV":
            for pair in shlex.split(inst.value):
                key, sep, value = pair.partition("=")
                assert sep, f"line {inst.line}: ENV {pair!r} is not KEY=VALUE"
                env[key] = value
    return env


def image_server_env(instructions: list[Instruction]) -> dict[str, str]:
    return {k: v for k, v in dockerfile_env(instructions).items() if k.startswith("LLAVA_SERVE_")}


# -- YAML --------------------------------------------------------------------------------------
def load_yaml(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def k8s_documents() -> dict[str, dict]:
    """kind -> resource, for every resource the kustomization lists."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            docs[doc["kind"]] = doc
    return docs


def container_env(container: dict, secret_placeholder: str = "from-a-secret") -> dict[str, str]:
    """The env of a k8s container; a value taken from a secret reads as SECRET_PLACEHOLDER."""
    return {e["name"]: e.get("value", secret_placeholder) for e in container.get("env", [])}


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: str(v) for k, v in env.items() if v is not None}


def expand_compose(text: str, placeholder: str = "NAME") -> str:
    """Compose variable syntax with its defaults: ${A:-d} -> d, ${A:?msg} and ${A} -> placeholder."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+(:?\?[^}]*)?\}", placeholder, text)


# -- PromQL ------------------------------------------------------------------------------------
def grafana_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in sub.get("targets", [])]
    return exprs


def as_plain_promql(expr: str) -> str:
    """Grafana and prometheus-adapter template variables replaced by plain PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = expr.replace("<<.Series>>", "llava_requests_waiting")
    expr = expr.replace("{<<.LabelMatchers>>}", '{namespace="default"}').replace("<<.GroupBy>>", "pod")
    assert "$" not in expr and "<<" not in expr, f"template variable left in {expr!r}"
    return expr


def check_promql(exprs: list[str], tmp_path: Path) -> None:
    """`promtool check rules` on the expressions written as recording rules: fails on a syntax error."""
    rules = {"groups": [{"name": "check", "rules": [
        {"record": f"check:expr_{i}", "expr": as_plain_promql(e)} for i, e in enumerate(exprs)
    ]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def metric_names(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC_NAME.findall(e)}
