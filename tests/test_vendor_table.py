"""A fourth vendor is data: a vendors.toml table, a lock section, a template block and a patches folder.

The test copies the project (its tracked files) to a temporary folder, adds vendor `fakechip` there with
nothing but data, and runs the real commands of that copy: render, build --dry-run, check-patches, and the
nox session list. It also checks the table's derived facts in this checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import PROJECT_ROOT
from tools.core import vendors
from tools.core.errors import UserError
from tools.core.profiles import docker_run_flags

FAKE_TABLE = """
[fakechip]
display_name = "FakeChip"
device = "gpu"
runner = ["self-hosted", "linux", "x64", "fakechip"]
run_flags = ["--ipc=host", "--shm-size=16G"]
devices = ["/dev/fakechip_ctl"]
env = { FAKECHIP_VISIBLE_DEVICES = "all" }
"""

FAKE_LOCK = """
[vendors.fakechip]
platforms = ["linux/amd64"]
python = "3.11"
torch = "2.13.0"

[vendors.fakechip.base]
kind = "registry"
image = "registry.example.invalid/fakechip/sdk:1.0"
digest = "sha256:""" + "ab" * 32 + """"
"""

FAKE_TEMPLATE = """{% extends "Dockerfile.j2" %}
{% block torch %}
RUN {{ pip_mounts }} \\
    {{ pip_env }} pip install {{ ("torch==" ~ torch) | q }}
{%- endblock %}
"""


def _copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-z"], capture_output=True, check=True)
    for rel in filter(None, files.stdout.decode().split("\0")):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _add_fakechip(project: Path) -> None:
    with (project / "vendors.toml").open("a") as out:
        out.write(FAKE_TABLE)
    with (project / "versions.lock").open("a") as out:
        out.write(FAKE_LOCK)
    (project / "dockerfiles" / "vendors" / "fakechip.j2").write_text(FAKE_TEMPLATE)
    (project / "patches" / "vllm" / "fakechip").mkdir(parents=True)
    (project / "patches" / "vllm" / "fakechip" / "series").write_text("# fakechip patches, in order\n")
    recipe = (project / "recipes" / "tiny-cpu.yaml").read_text()
    recipe = recipe.replace("name: tiny-cpu", "name: tiny-fakechip").replace("vendor: cpu", "vendor: fakechip")
    (project / "recipes" / "tiny-fakechip.yaml").write_text(recipe)


def _run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project), "FLAGREL_BUILD": str(project / "build"),
           "FLAGREL_WORKSPACES": str(project / "workspaces")}
    for var in ("FLAGREL_LOCK", "FLAGREL_PATCHES", "FLAGREL_VENDORS"):
        env.pop(var, None)
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def fourth_vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = _copy_project(tmp_path_factory.mktemp("project"))
    _add_fakechip(project)
    return project


def test_render_and_dry_run_of_a_data_only_vendor(fourth_vendor):
    rendered = _run(fourth_vendor, "-m", "tools", "render", "tiny-fakechip")
    assert rendered.returncode == 0, rendered.stderr
    assert "FROM registry.example.invalid/fakechip/sdk:1.0@sha256:" + "ab" * 32 in rendered.stdout
    assert "pip install torch==2.13.0" in rendered.stdout
    dry = _run(fourth_vendor, "-m", "tools", "build-fakechip", "tiny-fakechip", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "vendor        fakechip" in dry.stdout
    # the vendor's session refuses another vendor's recipe
    wrong = _run(fourth_vendor, "-m", "tools", "build-fakechip", "tiny-cpu", "--dry-run")
    assert wrong.returncode == 2 and "is for vendor cpu, not fakechip" in wrong.stderr


def test_nox_has_a_build_session_for_it(fourth_vendor):
    listed = _run(fourth_vendor, "-c", "import runpy, nox.registry; runpy.run_path('noxfile.py'); "
                                      "print(' '.join(nox.registry.get()))")
    assert listed.returncode == 0, listed.stderr
    assert {"build-fakechip", "build-cpu", "build-nvidia", "build-ascend"} <= set(listed.stdout.split())


@pytest.mark.e2e
def test_check_patches_covers_it(fourth_vendor):
    checked = _run(fourth_vendor, "-m", "tools", "check-patches")
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"fakechip +[0-9a-f]{12} +2 patches apply on pristine", checked.stderr)


def test_a_vendor_missing_from_the_lock_is_one_clear_error(fourth_vendor, tmp_path):
    project = _copy_project(tmp_path / "p")
    with (project / "vendors.toml").open("a") as out:
        out.write(FAKE_TABLE)
    out = _run(project, "-m", "tools", "render", "tiny-cpu")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "missing vendor section(s): fakechip" in out.stderr


def test_derived_facts_in_this_checkout():
    assert vendors.names() == ("nvidia", "ascend", "cpu")
    assert not vendors.get("cpu").has_device and vendors.get("nvidia").has_device
    assert docker_run_flags("nvidia")[:2] == ["--gpus", "all"]
    flags = docker_run_flags("ascend", enumerate_devices=False)
    assert flags[flags.index("--device") + 1] == "/dev/davinci_manager"
    with pytest.raises(UserError, match="unknown vendor 'nope'"):
        vendors.get("nope")


def test_a_hostile_glob_is_refused(tmp_path, monkeypatch):
    table = tmp_path / "vendors.toml"
    table.write_text('[x1]\ndisplay_name = "X"\ndevice = "gpu"\nrunner = ["r"]\n'
                     'device_globs = ["/dev/x$(reboot)"]\n')
    monkeypatch.setenv("FLAGREL_VENDORS", str(table))
    with pytest.raises(UserError, match="device_globs"):
        vendors.table()


# --- TOML parsed once per content (tools/core/tomlfile.py) -----------------------------------------------------


def test_a_toml_parse_is_reused_only_for_the_very_same_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from tools.core import tomlfile

    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "vendors.toml"
    first = '[a]\nx = 1\nf = 0.1\nlist = ["p", "q"]\n'
    assert tomlfile.loads(first, path) == tomllib.loads(first)
    memos = list((tmp_path / "cache" / "parsed").iterdir())
    assert len(memos) == 1 and memos[0].name.startswith("vendors.toml-")
    # a memo that answers for the same text is used: make it say something else to see that it was read
    memos[0].write_text(json.dumps({"text": first, "data": {"from": "memo"}}))
    assert tomlfile.loads(first, path) == {"from": "memo"}
    # one changed byte: parsed afresh, the memo rewritten
    second = first.replace("x = 1", "x = 2")
    assert tomlfile.loads(second, path) == tomllib.loads(second) and tomllib.loads(second)["a"]["x"] == 2
    assert tomlfile.loads(second, path)["a"]["x"] == 2
    # another file of the same name elsewhere has its own memo
    assert tomlfile.loads(first, tmp_path / "other" / "vendors.toml")["a"]["x"] == 1
    assert len(list((tmp_path / "cache" / "parsed").glob("*.json"))) == 2
    # a corrupt memo and a malformed file behave as without the memo
    for memo in (tmp_path / "cache" / "parsed").glob("*.json"):
        memo.write_text("{not json")
    assert tomlfile.loads(second, path)["a"]["x"] == 2
    with pytest.raises(tomllib.TOMLDecodeError):
        tomlfile.loads("[a\n", path)
    # dates have no JSON form: parsed each time, never memoised
    dated = "[a]\nwhen = 2026-01-02\n"
    assert str(tomlfile.loads(dated, tmp_path / "dated.toml")["a"]["when"]) == "2026-01-02"
    assert not list((tmp_path / "cache" / "parsed").glob("dated.toml-*"))


def test_a_toml_parse_works_without_a_writable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.core import tomlfile

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("FLAGREL_CACHE", str(blocker))
    assert tomlfile.loads("[a]\nx = 1\n", tmp_path / "v.toml") == {"a": {"x": 1}}
    assert blocker.read_text() == "a file where the cache folder would be"
