"""Shared fixtures: a real Docker engine (bootstrapped when we can), isolated output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.errors import UserError


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine with buildx: started (and installed, when root on Debian) by tools.engine."""
    from tools import engine

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
