"""The build sessions as a user runs them: `python -m tools build-<vendor> RECIPE ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tools import PROJECT_ROOT


def run(*args: str, build_dir=None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    if build_dir is not None:
        env["FLAGREL_BUILD"] = str(build_dir)
    return subprocess.run([sys.executable, "-m", "tools", *args], capture_output=True, text=True, env=env,
                          cwd=PROJECT_ROOT, timeout=1800, check=False)


def test_wrong_vendor_session_is_one_clear_error(build_dir):
    proc = run("build-nvidia", "tiny-cpu", build_dir=build_dir)
    assert proc.returncode == 2
    assert "recipe tiny-cpu is for vendor cpu, not nvidia" in proc.stderr
    assert "nox -s build-cpu -- tiny-cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_the_plan_and_builds_nothing(build_dir):
    proc = run("build-nvidia", "robobrain2-7b-fp8dynamic-nvidia", "--dry-run", build_dir=build_dir)
    assert proc.returncode == 0, proc.stderr
    assert "install       wheel-overlay" in proc.stdout
    assert "FROM nvidia/cuda:13.0.3-devel-ubuntu24.04@sha256:" in proc.stdout
    assert not (build_dir / "contexts").exists()


def test_unpinned_base_is_refused_before_anything_runs(build_dir):
    proc = run("build-ascend", "robobrain2-32b-ascend", build_dir=build_dir)
    assert proc.returncode == 2
    assert "has no digest in the lock" in proc.stderr and "imagetools inspect" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_render_writes_dockerfile_and_plan(build_dir):
    proc = run("render", "tiny-cpu", build_dir=build_dir)
    assert proc.returncode == 0, proc.stderr
    assert (build_dir / "rendered" / "tiny-cpu" / "Dockerfile").read_text() in proc.stdout
    assert (build_dir / "rendered" / "tiny-cpu" / "plan.json").is_file()


def readme_command(heading: str) -> str:
    """The command the README gives under a bold heading (its first indented line after it)."""
    lines = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{heading}**"))
    return next(line.strip() for line in lines[start + 1:] if line.startswith("    "))


def test_readme_names_the_two_commands_ci_runs():
    assert readme_command("Main job").endswith("nox -s build-cpu -- tiny-cpu --push --local-registry")
    tests = readme_command("Tests")
    assert tests.split("&& ")[-1] in (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.e2e
@pytest.mark.docker
def test_readme_main_job_as_written(tiny_cpu_image, build_dir):
    """The README's main job, run by bash exactly as a user pastes it: the image (reused by content key),
    the real smoke serve, the op tests, and the push to the local authenticated registry."""
    command = readme_command("Main job")
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", FLAGREL_BUILD=str(build_dir))
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                          timeout=2400, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "reused (content key matched)" in out
    assert "smoke    passed" in out and "op-tests passed" in out and "publish  pushed" in out
    assert list((build_dir / "results").glob("*/tiny-cpu/smoke.json"))
    assert list((build_dir / "results").glob("*/tiny-cpu/op-tests.json"))
    # one record per registry target: build/releases/<registry>/<namespace>/<image>/<build tag>/
    records = list((build_dir / "releases" / "127.0.0.1:5000").glob("**/tiny-cpu-cpu-*/record.json"))
    assert len(records) == 1 and (records[0].parent / "README.md").is_file()
    # what is in the image, read from it; the SBOM and pip-audit made at publish lie beside the record
    contents = json.loads(records[0].read_text())["contents"]
    installed = contents["distributions"]
    assert contents["lock_matches"] is True and installed["torch"] == "2.13.0+cpu"
    sbom = json.loads((records[0].parent / contents["sbom"]).read_text())
    assert sorted(c["name"] for c in sbom["components"]) == sorted(installed)
    audit = json.loads((records[0].parent / "pip-audit.json").read_text())
    assert len(audit["dependencies"]) == contents["audit"]["packages"] == len(installed)


@pytest.mark.e2e
@pytest.mark.docker
def test_skipping_a_check_is_recorded_and_blocks_publishing(tiny_cpu_image, build_dir):
    proc = run("build-cpu", "tiny-cpu", "--skip-smoke", "known flaky host", "--skip-op-tests", "no time",
               build_dir=build_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "smoke    skipped: known flaky host" in proc.stdout
    refused = run("publish", "tiny-cpu", "--registry", "127.0.0.1:1", build_dir=build_dir)
    assert refused.returncode == 1  # a check failed (README "Exit codes"), before any registry is asked
    assert "smoke was skipped with --skip-smoke ('known flaky host')" in refused.stderr
