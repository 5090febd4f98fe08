"""Shared fixtures: a real Docker engine (bootstrapped when we can), isolated output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.core.errors import UserError


def write(root: Path, rel: str, data: bytes | str, mode: int | None = None) -> Path:
    """A file in a fake tree, bytes exact (CRLF, no final newline, modes)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine with buildx: started (and installed, when root on Debian) by tools.engine."""
    from tools.mech import host as engine

    try:
        return engine.ensure_engine()
    except UserError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Docker engine: {err.what}")


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "build"
    monkeypatch.setenv("FLAGREL_BUILD", str(out))
    return out


@pytest.fixture(scope="session")
def debian_base(docker_engine) -> str:
    """The locked Debian 12 base (debootstrap + import, cached): python3, no vLLM."""
    from tools.core.lock import DebootstrapBase, load_lock
    from tools.mech import host as engine

    base = load_lock().lock.vendors["cpu"].base
    assert isinstance(base, DebootstrapBase)
    return engine.ensure_debootstrap_base(base)


def build_recipe(recipe: str, vendor: str, options=None):
    """The build sessions' stages, without validation: plan, patched source, context, image (with facts)."""
    from tools.pipeline import built_image, context_for
    from tools.stages.plan import BuildOptions, plan_for

    options = options or BuildOptions()
    plan, loaded, _, recipe_file = plan_for(recipe, vendor, options)
    ctx = context_for(plan, loaded, recipe_file, options)
    return ctx, built_image(ctx, loaded, options, revision="test")


@pytest.fixture(scope="session")
def tiny_cpu_image(debian_base):
    """The real tiny-cpu image, built once per run (a no-op when the content key already exists)."""
    return build_recipe("tiny-cpu", "cpu")


@pytest.fixture(scope="session")
def tiny_cpu_flagscale_image(debian_base):
    """tiny-cpu served through `flagscale serve`: the tiny-cpu image's layers plus its own baked config."""
    return build_recipe("tiny-cpu-flagscale", "cpu")


@pytest.fixture(scope="session")
def tiny_cpu_2node_image(debian_base):
    """tiny-cpu over a two-node Ray cluster: the cpu image with Ray (and an ssh client) in it."""
    return build_recipe("tiny-cpu-2node", "cpu")



def _free_disk() -> str:
    import shutil
    import tempfile

    by_disk: dict[int, list[str]] = {}
    for folder in dict.fromkeys([tempfile.gettempdir(), "/var/lib/docker", str(Path.home())]):
        if Path(folder).is_dir():
            by_disk.setdefault(Path(folder).stat().st_dev, []).append(folder)
    return "; ".join(f"{shutil.disk_usage(f[0]).free / 1e9:.1f} GB free in {', '.join(f)}" for f in by_disk.values())


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that fails for want of space says how much it began and ended with (printed under -q too)."""
    session.config.stash[_DISK_AT_START] = _free_disk()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(f"disk at start: {config.stash.get(_DISK_AT_START, '?')}")
    terminalreporter.write_line(f"disk at end:   {_free_disk()}")


_DISK_AT_START = pytest.StashKey[str]()
