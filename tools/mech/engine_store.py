"""What the engine keeps, and its disk: the images a label marks, their last use, BuildKit's cache, the storage
folder. Asked through the docker CLI like every other call (tools/mech/docker.py)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tools.mech import docker


def labelled_images(label: str) -> list[tuple[str, str]]:
    """(id, REPOSITORY:TAG) of every local image carrying LABEL, one row per tag; an untagged image's row
    says <none>:<none>."""
    proc = docker.call(["image", "ls", "--all", "--no-trunc", "--filter", f"label={label}",
                 "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"], check=False)
    return [(parts[0], parts[1]) for line in proc.stdout.splitlines() if len(parts := line.split()) == 2]


def container_image_ids() -> set[str]:
    """Ids of the images that containers (running or stopped) were made from: removing those would fail."""
    ids = docker.call(["ps", "--all", "--quiet", "--no-trunc"], check=False).stdout.split()
    if not ids:
        return set()
    return set(docker.call(["inspect", "--format", "{{.Image}}", *ids], check=False).stdout.split())


def last_used(images: Sequence[str]) -> dict[str, datetime]:
    """When each image was last made or tagged (a build that finds an image by its content key tags it)."""
    if not images:
        return {}
    proc = docker.call(["image", "inspect", "--format", "{{.Id}} {{json .Created}} {{json .Metadata.LastTagTime}}",
                 *images], check=False)
    found: dict[str, datetime] = {}
    for line in proc.stdout.splitlines():
        image, *stamps = line.split()
        found[image] = max(_timestamp(json.loads(stamp)) for stamp in stamps)
    return found


def _timestamp(text: str) -> datetime:
    """Docker's RFC 3339 time (nanoseconds, Z or an offset) as an aware datetime; unreadable reads as long ago."""
    try:
        return datetime.fromisoformat(re.sub(r"\.\d+", "", text).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def untag(refs: Sequence[str]) -> bool:
    """Remove these tags (an image whose last tag goes is deleted); False when the engine refused any."""
    return docker.call(["rmi", *refs], check=False, timeout=300).returncode == 0


def prune_build_cache(keep_bytes: int) -> None:
    """Trim BuildKit's cache to KEEP_BYTES, the least recently used records first."""
    docker.call(["builder", "prune", "--force", "--keep-storage", str(keep_bytes)], timeout=600)


_SIZE = re.compile(r"([0-9.]+)\s*([kMGTP]?B)")
_UNITS = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15}


def build_cache_bytes() -> int:
    """What emptying BuildKit's cache would free (`docker system df`: the cache's own snapshots, not the
    layers that images share with it); 0 when the engine does not say."""
    proc = docker.call(["system", "df", "--format", "{{json .}}"], check=False)
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        if row.get("Type") == "Build Cache" and (size := _SIZE.match(row.get("Reclaimable", ""))):
            return int(float(size.group(1)) * _UNITS[size.group(2)])
    return 0


def root_dir() -> Path | None:
    """The engine's storage folder, when the engine is on this machine (a remote engine's disk is not ours to
    measure)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None
    proc = docker.call(["info", "--format", "{{.DockerRootDir}}"], check=False)
    found = proc.stdout.strip() if proc.returncode == 0 else ""
    return Path(found) if found and Path(found).exists() else None
