"""Where things live. Every location can be moved with an environment variable (CI, shared caches)."""

from __future__ import annotations

import os
from pathlib import Path

from tools import PROJECT_ROOT


def cache_dir() -> Path:
    """Downloads and pristine trees: shared by checkouts, safe to delete."""
    return Path(os.environ.get("FLAGREL_CACHE", Path.home() / ".cache" / "flagrelease"))


def build_dir() -> Path:
    """Per-checkout outputs: logs, rendered contexts, reports, records."""
    return Path(os.environ.get("FLAGREL_BUILD", PROJECT_ROOT / "build"))


def workspaces_dir() -> Path:
    """Vendor workspaces (git repos users edit)."""
    return Path(os.environ.get("FLAGREL_WORKSPACES", PROJECT_ROOT / "workspaces"))


def logs_dir() -> Path:
    path = build_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lock_file() -> Path:
    return Path(os.environ.get("FLAGREL_LOCK", PROJECT_ROOT / "versions.lock"))


def recipes_dir() -> Path:
    return PROJECT_ROOT / "recipes"


def patches_dir() -> Path:
    return Path(os.environ.get("FLAGREL_PATCHES", PROJECT_ROOT / "patches"))
