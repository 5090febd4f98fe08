"""Disk space: a build stops before it starts when the engine's disk is short, and `prune` gives back only
what this tool built and a newer build replaced."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tools import PROJECT_ROOT
from tools.core import labels as L
from tools.core.errors import UserError
from tools.core.vendor_model import VendorInfo
from tools.mech import docker, engine_store
from tools.stages import space

A, B, C, D = ("sha256:" + ch * 64 for ch in "abcd")
LOCAL = L.LOCAL_REPOSITORY


def test_only_replaced_images_of_ours_are_superseded():
    rows = [
        (A, f"{LOCAL}/r:key1"),                          # replaced by B: goes
        (B, f"{LOCAL}/r:key2"), (B, f"{LOCAL}/r:latest"),  # the recipe's latest: stays
        (C, "<none>:<none>"),                            # ours, untagged (a relabelled build's old config): goes
        (D, "registry.example/team/r:1.0"),              # carries our labels but was pulled, not built here
    ]
    found = space.superseded(rows, in_use=set())
    assert [(s.image_id, s.refs) for s in found] == [(A, (f"{LOCAL}/r:key1",)), (C, ())]


def test_an_image_a_container_uses_or_this_process_holds_stays():
    rows = [(A, f"{LOCAL}/r:key1"), (C, f"{LOCAL}/r:key3"), (B, f"{LOCAL}/r:latest")]
    assert [s.image_id for s in space.superseded(rows, in_use={A})] == [C]
    space.hold(C)
    try:
        assert space.superseded(rows, in_use={A}) == []
    finally:
        space._in_use_here.discard(C)


def test_a_pushed_copy_of_a_replaced_build_goes_with_it():
    rows = [(A, f"{LOCAL}/r:key1"), (A, "127.0.0.1:5000/flagrelease:r-key1"), (B, f"{LOCAL}/r:latest")]
    assert space.superseded(rows, set())[0].refs == (f"{LOCAL}/r:key1", "127.0.0.1:5000/flagrelease:r-key1")


@pytest.mark.parametrize("text, when", [
    ("2026-11-23T21:03:22.949924222Z", datetime(2026, 11, 23, 21, 3, 22, tzinfo=UTC)),
    ("2026-11-23T22:03:22+01:00", datetime(2026, 11, 23, 21, 3, 22, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("garbage", datetime.min.replace(tzinfo=UTC)),
])
def test_docker_times_are_read_with_their_zone(text, when):
    assert engine_store._timestamp(text) == when


def test_recently_used_images_are_spared_when_asked(monkeypatch, tmp_path):
    now = datetime.now(UTC)
    monkeypatch.setattr(engine_store, "root_dir", lambda: tmp_path)
    monkeypatch.setattr(engine_store, "labelled_images", lambda label: [(A, f"{LOCAL}/r:k1"), (C, f"{LOCAL}/r:k3")])
    monkeypatch.setattr(engine_store, "container_image_ids", set)
    used = {A: now - timedelta(hours=3), C: now - timedelta(minutes=5)}
    monkeypatch.setattr(engine_store, "last_used", lambda ids: used)
    removed: list[tuple[str, ...]] = []
    monkeypatch.setattr(engine_store, "untag", lambda refs: removed.append(tuple(refs)) or True)
    trimmed: list[int] = []
    monkeypatch.setattr(engine_store, "prune_build_cache", trimmed.append)
    done = space.reclaim(spare_recent=timedelta(hours=1), keep_cache_gb=2)
    assert removed == [(f"{LOCAL}/r:k1",)] and [s.image_id for s in done.removed] == [A]
    assert trimmed == [2 * space.GB]
    removed.clear()
    space.reclaim()
    assert removed == [(f"{LOCAL}/r:k1",), (f"{LOCAL}/r:k3",)]


def test_needed_space_comes_from_the_vendor_or_a_checked_override(monkeypatch):
    monkeypatch.delenv(space.NEED_ENV, raising=False)
    assert space.needed_bytes(10) == 10 * space.GB
    monkeypatch.setenv(space.NEED_ENV, "2.5")
    assert space.needed_bytes(10) == int(2.5 * space.GB)
    for bad in ("ten", "-1", "nan", "1e9"):
        monkeypatch.setenv(space.NEED_ENV, bad)
        with pytest.raises(UserError, match="is not a number of GB") as err:
            space.needed_bytes(10)
        assert err.value.where == f"environment {space.NEED_ENV}"


def test_vendor_table_refuses_a_senseless_disk_estimate():
    row = {"name": "cpu", "display_name": "CPU", "device": "none", "runner": ["x"]}
    assert VendorInfo.model_validate(row).build_disk_gb == 40
    for bad in (0, -5, "lots"):
        with pytest.raises(ValidationError):
            VendorInfo.model_validate({**row, "build_disk_gb": bad})


@pytest.fixture
def short_disk(monkeypatch, tmp_path):
    """An engine folder with 3 GB free, 5 GB after giving back images (what reclaim reports), 6 GB with the
    build cache emptied."""
    free = iter([3 * space.GB, 6 * space.GB])
    monkeypatch.setattr(engine_store, "root_dir", lambda: tmp_path)
    monkeypatch.setattr(space, "free_bytes", lambda folder: next(free))
    calls: list[object] = []

    def reclaim(**kw):
        calls.append(kw.get("spare_recent"))
        return space.Reclaimed((), (), 3 * space.GB, 5 * space.GB)

    monkeypatch.setattr(space, "reclaim", reclaim)
    monkeypatch.setattr(engine_store, "prune_build_cache", lambda keep: calls.append(f"cache kept: {keep}"))
    monkeypatch.setattr(engine_store, "build_cache_bytes", lambda: 1 * space.GB)
    monkeypatch.delenv(space.NEED_ENV, raising=False)
    return calls


def test_a_build_short_of_space_gives_back_first_and_then_stops_with_one_message(short_disk, tmp_path):
    with pytest.raises(UserError) as err:
        space.ensure_space("cpu", 10)
    assert short_disk == [space.SPARE_RECENT]  # 5 GB + a 1 GB cache cannot make 10: the cache is kept
    assert err.value.what == "only 5.0 GB free where the Docker engine keeps images; this cpu build needs about 10.0 GB"
    assert str(tmp_path) in err.value.where and "build_disk_gb" in err.value.where
    assert "nox -s prune" in err.value.fix and space.NEED_ENV in err.value.fix


def test_giving_back_images_is_enough(short_disk):
    space.ensure_space("cpu", 4)
    assert short_disk == [space.SPARE_RECENT]


def test_the_build_cache_is_emptied_only_when_that_makes_room(short_disk):
    space.ensure_space("cpu", 5.5)  # 3 -> 5 after images, 6 with the cache emptied
    assert short_disk == [space.SPARE_RECENT, "cache kept: 0"]


@pytest.mark.parametrize("row, size", [
    ('{"Type":"Build Cache","Reclaimable":"7.613GB","Size":"7.613GB"}', 7_613_000_000),
    ('{"Type":"Build Cache","Reclaimable":"512.5kB","Size":"1GB"}', 512_500),
    ('{"Type":"Build Cache","Reclaimable":"0B","Size":"0B"}', 0),
    ('{"Type":"Images","Reclaimable":"3GB (100%)","Size":"3GB"}', 0),
])
def test_the_build_cache_size_is_read_from_docker(monkeypatch, row, size):
    monkeypatch.setattr(docker, "call", lambda args, **kw: subprocess.CompletedProcess(args, 0, row + "\n", ""))
    assert engine_store.build_cache_bytes() == size


def test_enough_space_or_no_check_touches_nothing(short_disk, monkeypatch):
    space.ensure_space("cpu", 2)
    monkeypatch.setenv(space.NEED_ENV, "0")
    space.ensure_space("cpu", 10_000)
    assert short_disk == []


# --- against the real engine ----------------------------------------------------------------------------------


def _tool(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", *args], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={**os.environ, "COLUMNS": "200", **env}, timeout=900, check=False)


@pytest.mark.e2e
def test_prune_removes_only_what_a_newer_build_replaced(debian_base):
    recipe = f"prunetest-{secrets.token_hex(4)}"
    repo = f"{LOCAL}/{recipe}"
    def image(key: str, tags: list[str]) -> str:  # config-only images on the base: seconds to make
        return docker.relabel(debian_base, {L.RECIPE: recipe, L.CONTENT_KEY: key * 32}, tags)

    old = image("k1", [f"{repo}:k1"])
    latest = image("k2", [f"{repo}:k2", f"{repo}:latest"])
    used = image("k3", [f"{repo}:k3"])
    pulled = image("k4", [f"registry.invalid/{recipe}:1"])
    container = docker.call(["create", "--label", docker.OWNER_LABEL, used, "true"]).stdout.strip()
    try:
        dry = _tool("prune", "--recipe", recipe, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would remove {old[7:19]} {repo}:k1" in dry.stderr
        assert "1 superseded images would be removed" in dry.stderr
        assert docker.image_exists(old)

        done = _tool("prune", "--recipe", recipe, "--keep-cache", "100000")
        assert done.returncode == 0, done.stderr
        assert f"removed {old[7:19]} {repo}:k1" in done.stderr and "1 superseded images removed" in done.stderr
        assert not docker.image_exists(old)
        assert all(docker.image_exists(i) for i in (latest, used, pulled))
    finally:
        docker.call(["rm", "-f", container], check=False)
        for ref in (f"{repo}:k1", f"{repo}:k2", f"{repo}:latest", f"{repo}:k3", f"registry.invalid/{recipe}:1"):
            docker.call(["rmi", ref], check=False)


@pytest.mark.e2e
def test_a_build_the_disk_cannot_hold_stops_before_it_starts(debian_base, tmp_path):
    # --no-cache: no image is reused by content key, so the build would really start
    proc = _tool("build-cpu", "tiny-cpu", "--no-cache", FLAGREL_BUILD=str(tmp_path), FLAGREL_BUILD_DISK_GB="100000")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "this cpu build needs about 100000.0 GB" in proc.stderr
    assert f"where: {engine_store.root_dir()}" in proc.stderr and "Traceback" not in proc.stderr
    assert "giving back superseded images and build cache" in proc.stderr
    assert not list((tmp_path / "logs").glob("*build-tiny-cpu*"))


def test_an_engine_we_start_keeps_a_bounded_build_cache(tmp_path, monkeypatch):
    from tools.mech import host

    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path))
    args = host._dockerd_args(tmp_path / "no-daemon.json")
    assert args == ["dockerd", "--config-file", str(tmp_path / "dockerd.json")]
    config = json.loads((tmp_path / "dockerd.json").read_text())
    assert config == {"builder": {"gc": {"enabled": True, "defaultKeepStorage": "10GB"}}}
    (tmp_path / "daemon.json").write_text("{}")
    assert host._dockerd_args(tmp_path / "daemon.json") == ["dockerd"]  # the machine's own configuration wins


def test_prune_says_when_the_engines_disk_is_not_here(monkeypatch, capsys):
    import argparse

    from tools.cli import prune
    from tools.mech import host

    monkeypatch.setattr(host, "ensure_engine", lambda: None)
    gone = space.Superseded(A, (f"{LOCAL}/r:k1",))
    monkeypatch.setattr(space, "reclaim", lambda **kw: space.Reclaimed((gone,), (), None, None))
    args = argparse.Namespace(recipe=None, keep_cache=10.0, dry_run=False)
    assert prune.command("prune", args) == 0
    said = capsys.readouterr().err
    assert "1 superseded images removed" in said and "not known here" in said and "0.0 GB free" not in said


def test_a_bad_disk_override_stops_even_a_dry_run(tmp_path):
    proc = _tool("build-cpu", "tiny-cpu", "--dry-run", FLAGREL_BUILD=str(tmp_path), FLAGREL_BUILD_DISK_GB="lots")
    assert proc.returncode == 2 and "FLAGREL_BUILD_DISK_GB='lots' is not a number of GB" in proc.stderr
    assert "Traceback" not in proc.stderr and "FROM " not in proc.stdout
