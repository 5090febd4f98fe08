"""The GitHub workflows call sessions that exist, run what .ci/run runs, and keep secrets in env only."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import PROJECT_ROOT
from tools.core.recipe import available, load_recipe
from tools.core.vendors import names as vendor_names
from tools.mech.registry import ENV_PASSWORD, ENV_USER

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def noxfile_sessions() -> set[str]:
    """Session names as nox registers them when it loads noxfile.py (build-<vendor> come from vendors.toml)."""
    import runpy

    import nox.registry

    runpy.run_path(str(PROJECT_ROOT / "noxfile.py"))
    return set(nox.registry.get())


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job_name, step) for job_name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def nox_sessions_in(script: str) -> list[str]:
    """Sessions a shell script runs with `nox -s A [B ...]` / `nox --session A` (ignores `-- args`)."""
    found: list[str] = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token != "nox":
                continue
            j = i + 1
            while j < len(tokens) and tokens[j] != "--":
                if tokens[j] in {"-s", "--session", "--sessions"}:
                    j += 1
                    while j < len(tokens) and not tokens[j].startswith("-"):
                        found.append(tokens[j])
                        j += 1
                    continue
                j += 1
    return found


def expand(text: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise AssertionError(f"unknown expression {match.group(0)} in a nox call")
        return values[key]

    return EXPR.sub(sub, text)


def plan_script() -> str:
    workflow = load("release.yml")
    (step,) = [s for _, s in steps(workflow) if s.get("id") == "plan"]
    return step["run"]


def run_plan(tmp_path: Path, recipe: str = "") -> tuple[int, list[dict[str, Any]], str]:
    out = tmp_path / "github_output"
    out.write_text("")
    env = {**os.environ, "GITHUB_OUTPUT": str(out), "RECIPE": recipe}
    proc = subprocess.run(["bash", "-e", "-c", plan_script()], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    matrix = []
    for line in out.read_text().splitlines():
        if line.startswith("matrix="):
            matrix = json.loads(line.removeprefix("matrix="))["include"]
    return proc.returncode, matrix, proc.stderr


def test_every_nox_session_the_workflows_and_ci_run_call_exists(tmp_path):
    sessions = noxfile_sessions()
    code, matrix, err = run_plan(tmp_path)
    assert code == 0, err
    called: set[str] = set(nox_sessions_in((PROJECT_ROOT / ".ci" / "run").read_text()))
    for name in ("ci.yml", "release.yml"):
        for _, step in steps(load(name)):
            script = step.get("run", "")
            if "${{" not in script:
                called |= set(nox_sessions_in(script))
                continue
            if step.get("id") == "plan":
                continue
            # expressions: the matrix the plan job makes (every recipe), plus every vendor we know
            entries = [{"matrix.recipe": m["recipe"], "matrix.vendor": m["vendor"]} for m in matrix]
            entries += [{"matrix.recipe": "x", "matrix.vendor": v} for v in vendor_names()]
            for values in entries:
                called |= set(nox_sessions_in(expand(script, values)))
    assert {"check-patches", "tests"} <= called
    assert {f"build-{v}" for v in vendor_names()} <= called
    missing = sorted(called - sessions)
    assert not missing, f"workflows call nox sessions that noxfile.py lacks: {missing}"


def test_ci_runs_on_every_push_the_same_sessions_as_ci_run():
    workflow = load("ci.yml")
    assert "push" in workflow["on"]
    assert workflow["on"]["push"] is None or not workflow["on"]["push"].get("branches"), "every push, every branch"
    in_workflow = [s for _, step in steps(workflow) for s in nox_sessions_in(step.get("run", ""))]
    in_ci_run = nox_sessions_in((PROJECT_ROOT / ".ci" / "run").read_text())
    assert in_workflow == in_ci_run == ["check-patches", "tests"]


def test_release_triggers_on_version_tags_and_by_hand_with_a_recipe():
    on = load("release.yml")["on"]
    assert on["push"]["tags"] == ["v*"]
    assert "recipe" in on["workflow_dispatch"]["inputs"]


def test_release_builds_with_push_on_the_matrix_runner():
    workflow = load("release.yml")
    job = workflow["jobs"]["release"]
    assert job["runs-on"] == "${{ matrix.runner }}"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    runs = [step.get("run", "") for step in job["steps"]]
    assert "nox -s build-${{ matrix.vendor }} -- ${{ matrix.recipe }} --push" in runs


def test_plan_maps_every_recipe_to_its_vendor_runner(tmp_path):
    code, matrix, err = run_plan(tmp_path)
    assert code == 0, err
    assert sorted(m["recipe"] for m in matrix) == available()
    want = {"nvidia": ["self-hosted", "nvidia"], "ascend": ["self-hosted", "ascend"]}
    for entry in matrix:
        recipe, _ = load_recipe(entry["recipe"])
        assert entry["vendor"] == recipe.vendor
        if recipe.vendor == "cpu":
            assert entry["runner"][0].startswith("ubuntu")
        else:
            assert entry["runner"] == want[recipe.vendor]


def test_plan_with_a_recipe_input_releases_only_that_one(tmp_path):
    code, matrix, _ = run_plan(tmp_path, "tiny-cpu")
    assert code == 0 and [m["recipe"] for m in matrix] == ["tiny-cpu"]
    code, matrix, err = run_plan(tmp_path, "no-such-recipe")
    assert code != 0 and "no recipe named" in err and matrix == []


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_secrets_reach_steps_only_through_env(name):
    for _, step in steps(load(name)):
        for key in ("run", "with"):
            assert "secrets." not in json.dumps(step.get(key, "")), f"a secret inline in `{key}` of {step}"


def test_release_passes_the_credentials_publish_reads():
    job = load("release.yml")["jobs"]["release"]
    (step,) = [s for s in job["steps"] if "--push" in s.get("run", "")]
    env = step["env"]
    assert env[ENV_USER] == "${{ secrets.FLAGREL_REGISTRY_USER }}"
    assert env[ENV_PASSWORD] == "${{ secrets.FLAGREL_REGISTRY_PASSWORD }}"
    assert "FLAGREL_REGISTRY" in env and "FLAGREL_NAMESPACE" in env
