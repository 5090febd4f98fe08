"""The package shows the pipeline: no import cycles, stages never import a CLI, mechanism knows nothing of
the project, every Docker call goes through tools/mech/docker.py, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tools import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "tools"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {f for f in found if f in mods and f != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle():
    assert _cycle(_imports()) is None


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_point_one_way():
    wrong = []
    for module, deps in _imports().items():
        for dep in deps:
            if module.startswith(("tools.stages", "tools.core", "tools.mech")) and dep.startswith("tools.cli"):
                wrong.append(f"{module} -> {dep}")
            if module.startswith("tools.mech") and dep.startswith(("tools.stages", "tools.pipeline")):
                wrong.append(f"{module} -> {dep}")
            if module.startswith("tools.mech") and dep in {"tools.core.lock", "tools.core.recipe",
                                                          "tools.core.vendors", "tools.core.profiles"}:
                wrong.append(f"{module} -> {dep} (mechanism must not know recipes or vendors)")
            if module.startswith("tools.core") and dep.startswith(("tools.stages", "tools.pipeline")):
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def _docker_calls(tree: ast.AST) -> list[int]:
    """Lines that start a process whose argv literal begins with "docker"."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in {"run", "Popen", "check_output", "check_call", "call"}:
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant) \
                and first.elts[0].value == "docker":
            lines.append(node.lineno)
    return lines


def test_every_docker_call_goes_through_one_module():
    outside = {name: lines for name, path in _modules().items()
               if name != "tools.mech.docker" and (lines := _docker_calls(ast.parse(path.read_text())))}
    assert outside == {}
    assert _docker_calls(ast.parse((PACKAGE / "mech" / "docker.py").read_text()))
    assert _docker_calls(ast.parse('import subprocess\nsubprocess.run(["docker", "ps"])\n')) == [2]


def test_no_module_grows_past_the_limit():
    big = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert big == {}
