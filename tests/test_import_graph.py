"""The import graph's one-way rules, read from the source (every import, lazy ones in functions too).

- Serving never imports the offline checkpoint tools: no module of `model_runtime` outside
  `model_runtime.checkpoint_tools`, and no server module on the serving path (all but the CLI
  entry points), imports `model_runtime.checkpoint_tools`.
- `model_runtime` imports nothing of `server`.
- `bench/` and `testkit/` import nothing of `tests/` (what they share with the tests is in `testkit/`),
  and neither `server` nor `model_runtime` imports `testkit` (it is not in the wheel).
- The checkpoint packages have no import cycle (the loader once imported lora.py, whose merge_lora
  imported the loader back).
And at run time: importing the serving app loads no checkpoint-tools module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = "model_runtime.checkpoint_tools"
CLI_MODULES = {"server.cli", "server.checkpoint_commands"}  # the `llava-serve` subcommands that run the tools


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module name `path` imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(package: str, forbidden: str, exempt: set[str] | None = None) -> dict[str, list[str]]:
    found = {}
    for name, path in modules(package).items():
        if is_under(name, forbidden) or name in (exempt or set()):
            continue
        bad = sorted(n for n in imported(path) if is_under(n, forbidden))
        if bad:
            found[name] = bad
    return found


def test_the_graph_reader_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(f"import os\n\ndef f():\n    from {TOOLS}.demo import make_demo\n")
    assert {"os", f"{TOOLS}.demo", f"{TOOLS}.demo.make_demo"} <= imported(source)


def test_serving_model_runtime_never_imports_the_checkpoint_tools():
    assert offenders("model_runtime", TOOLS) == {}


def test_serving_server_modules_never_import_the_checkpoint_tools():
    assert offenders("server", TOOLS, exempt=CLI_MODULES) == {}


def test_model_runtime_never_imports_the_server():
    assert offenders("model_runtime", "server") == {}


def test_bench_and_testkit_never_import_the_tests():
    assert offenders("bench", "tests") == {}
    assert offenders("testkit", "tests") == {}


def test_serving_code_never_imports_testkit():
    assert offenders("server", "testkit") == {}
    assert offenders("model_runtime", "testkit") == {}


def test_checkpoint_packages_have_no_import_cycle():
    graph = {}
    for package in ("model_runtime/checkpoint", "model_runtime/checkpoint_tools"):
        for name, path in modules(package).items():
            graph[name] = imported(path)
    # `from package.module import name` names the module; keep the edges inside the two packages
    graph = {
        name: {n if n in graph else n.rsplit(".", 1)[0] for n in deps} & (graph.keys() - {name})
        for name, deps in graph.items()
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path[path.index(name) :], name])}"
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_loading_the_serving_app_loads_no_checkpoint_tool():
    code = (
        "import sys, model_runtime, model_runtime.checkpoint.loader, server.app\n"
        f"print(sorted(m for m in sys.modules if m.startswith({TOOLS!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
