"""The GitHub workflows call sessions that exist, run what .ci/run runs, keep secrets and matrix values in env
only, pin every action by commit, and name the runners they need."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import PROJECT_ROOT
from tools.core import vendors
from tools.core.recipe import available, load_recipe
from tools.mech.registry import ENV_PASSWORD, ENV_USER

VENDORS = vendors.names()
RUNNERS = {name: list(info.runner) for name, info in vendors.table().items()}

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
SHELL_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
PINNED_USES = re.compile(r"^\s*(?:-\s+)?uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


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


def with_env(script: str, step: dict[str, Any], values: dict[str, str]) -> str:
    """The script with the step's `env:` variables ($NAME, ${NAME}) replaced by their expanded values."""
    env: dict[str, str] = {}
    for key, value in step.get("env", {}).items():
        try:
            env[key] = shlex.quote(expand(str(value), values))
        except AssertionError:
            continue  # secrets and vars: never part of a session name
    return SHELL_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), script)


def plan_step() -> dict[str, Any]:
    (step,) = [s for _, s in steps(load("release.yml")) if s.get("id") == "plan"]
    return step


def run_plan(tmp_path: Path, recipe: str = "") -> tuple[int, list[dict[str, Any]], str]:
    """The plan step's script as the runner runs it: bash, its env, $GITHUB_OUTPUT (real nox, shared venv)."""
    out = tmp_path / "github_output"
    out.write_text("")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "GITHUB_OUTPUT": str(out), "RECIPE": recipe}
    proc = subprocess.run(["bash", "-e", "-c", plan_step()["run"]], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    matrix = []
    for line in out.read_text().splitlines():
        if line.startswith("matrix="):
            matrix = json.loads(line.removeprefix("matrix="))["include"]
    return proc.returncode, matrix, proc.stdout + proc.stderr  # nox merges the command's stderr into stdout


def test_every_nox_session_the_workflows_and_ci_run_call_exists(tmp_path):
    sessions = noxfile_sessions()
    code, matrix, err = run_plan(tmp_path)
    assert code == 0, err
    called: set[str] = set(nox_sessions_in((PROJECT_ROOT / ".ci" / "run").read_text()))
    # expressions reaching a script through `env:`: the matrix the plan job makes (every recipe), plus every
    # vendor we know, plus the dispatch input
    entries = [{"matrix.recipe": m["recipe"], "matrix.vendor": m["vendor"]} for m in matrix]
    entries += [{"matrix.recipe": "x", "matrix.vendor": v} for v in VENDORS]
    for name in ("ci.yml", "release.yml"):
        for _, step in steps(load(name)):
            for values in entries:
                values = {**values, "inputs.recipe": "tiny-cpu"}
                called |= set(nox_sessions_in(with_env(step.get("run", ""), step, values)))
    assert {"check-patches", "tests", "release-matrix"} <= called
    assert {f"build-{v}" for v in VENDORS} <= called
    missing = sorted(called - sessions)
    assert not missing, f"workflows call nox sessions that noxfile.py lacks: {missing}"


def test_ci_runs_on_every_push_the_same_sessions_as_ci_run():
    workflow = load("ci.yml")
    assert "push" in workflow["on"]
    assert workflow["on"]["push"] is None or not workflow["on"]["push"].get("branches"), "every push, every branch"
    cpu = workflow["jobs"]["cpu"]
    in_workflow = [s for step in cpu["steps"] for s in nox_sessions_in(step.get("run", ""))]
    in_ci_run = nox_sessions_in((PROJECT_ROOT / ".ci" / "run").read_text())
    assert in_workflow == in_ci_run == ["check-patches", "tests"]
    static = workflow["jobs"]["static"]
    assert [s for step in static["steps"] for s in nox_sessions_in(step.get("run", ""))] == ["tests"]
    assert any("tests/test_linters.py" in step.get("run", "") for step in static["steps"])


def test_each_job_names_the_runner_it_needs():
    """cpu work needs root on Debian/Ubuntu and the local torch+cpu wheel: a self-hosted runner, never hosted."""
    ci = load("ci.yml")
    cpu = ci["jobs"]["cpu"]
    assert cpu["runs-on"] == RUNNERS["cpu"] == ["self-hosted", "linux", "x64", "flagrelease-cpu"]
    assert "self-hosted" in cpu["name"] and "flagrelease-cpu" in cpu["name"]
    assert ci["jobs"]["static"]["runs-on"] == "ubuntu-latest" and "hosted" in ci["jobs"]["static"]["name"]
    release = load("release.yml")
    assert release["jobs"]["plan"]["runs-on"] == "ubuntu-latest"
    assert "matrix.runner" in release["jobs"]["release"]["name"]
    for name in ("ci.yml", "release.yml"):
        header = (WORKFLOWS / name).read_text().split("\nname:")[0]
        assert "flagrelease-cpu" in header and "not on PyPI" in header and "root" in header, name
    assert all(labels[0] == "self-hosted" for labels in RUNNERS.values())
    # actionlint must know every custom label (it rejects unknown ones)
    declared = set(yaml.safe_load((PROJECT_ROOT / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]
                   ["labels"])
    custom = {label for labels in RUNNERS.values() for label in labels} - {"self-hosted", "linux", "x64", "arm64"}
    assert custom <= declared


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_actions_are_pinned_by_commit_and_hold_no_credentials(name):
    text = (WORKFLOWS / name).read_text()
    uses = [line for line in text.splitlines() if re.match(r"^\s*(-\s+)?uses:", line)]
    assert uses
    for line in uses:
        assert PINNED_USES.match(line), f"not pinned by a full commit SHA with a # vX.Y.Z comment: {line.strip()}"
    for _, step in steps(load(name)):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, step


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_least_privilege_permissions(name):
    workflow = load(name)
    assert workflow["permissions"] == {}, "nothing by default"
    for job_name, job in workflow["jobs"].items():
        assert job.get("permissions") == {"contents": "read"}, job_name


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_no_template_expansion_inside_run(name):
    """Matrix, input and event values reach a shell only through `env:` ("$VAR"), never as script text."""
    for job_name, step in steps(load(name)):
        assert "${{" not in step.get("run", ""), f"{job_name}: template expansion in run: {step['run']!r}"


def test_release_triggers_on_version_tags_and_by_hand_with_a_recipe():
    on = load("release.yml")["on"]
    assert on["push"]["tags"] == ["v*"]
    assert "recipe" in on["workflow_dispatch"]["inputs"]


def test_release_builds_with_push_on_the_matrix_runner():
    workflow = load("release.yml")
    job = workflow["jobs"]["release"]
    assert job["runs-on"] == "${{ matrix.runner }}"
    assert job["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    (step,) = [s for s in job["steps"] if "--push" in s.get("run", "")]
    assert step["run"] == 'nox -s "build-$VENDOR" -- "$RECIPE" --push'
    assert step["env"]["VENDOR"] == "${{ matrix.vendor }}" and step["env"]["RECIPE"] == "${{ matrix.recipe }}"


def test_plan_calls_the_release_matrix_session_with_the_input_through_env():
    step = plan_step()
    assert nox_sessions_in(step["run"]) == ["release-matrix"]
    assert step["env"] == {"RECIPE": "${{ inputs.recipe }}"}


def test_plan_maps_every_recipe_to_its_vendor_runner(tmp_path):
    code, matrix, err = run_plan(tmp_path)
    assert code == 0, err
    assert sorted(m["recipe"] for m in matrix) == available()
    assert set(RUNNERS) == set(VENDORS)
    for entry in matrix:
        recipe, _ = load_recipe(entry["recipe"])
        assert entry["vendor"] == recipe.vendor
        assert entry["runner"] == RUNNERS[recipe.vendor] and entry["runner"][0] == "self-hosted"


def test_plan_with_a_recipe_input_releases_only_that_one(tmp_path):
    code, matrix, _ = run_plan(tmp_path, "tiny-cpu")
    assert code == 0 and [m["recipe"] for m in matrix] == ["tiny-cpu"]
    code, matrix, err = run_plan(tmp_path, "no-such-recipe")
    assert code != 0 and "no recipe named 'no-such-recipe'" in err and matrix == []
    assert "Traceback" not in err


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
