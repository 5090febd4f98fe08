"""Disk space for builds: checked before a build starts, and what this tool left behind given back.

Every build of a changed recipe leaves the image it replaced (tagged by its old content key) and more
BuildKit cache; a machine that builds releases day after day fills up, and a build that runs out of
space fails minutes in with a half-written layer. So a build first asks for the space its vendor needs
(vendors.toml build_disk_gb), and when it is short takes back only what is this tool's and rebuildable:
images it built that a newer build of the same recipe replaced, and build cache beyond a bound.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tools.core import labels as L
from tools.core.errors import UserError
from tools.mech import engine_store
from tools.mech.console import info
from tools.mech.host import BUILD_CACHE_KEEP_GB

GB = 10**9
KEEP_CACHE_GB = BUILD_CACHE_KEEP_GB
NEED_ENV = "FLAGREL_BUILD_DISK_GB"
_NONE = "<none>:<none>"
# a build short of space leaves alone what was made or used this recently (a parallel job's image)
SPARE_RECENT = timedelta(hours=1)

# images this process built or uses: a build later in the same run must not take them back
_in_use_here: set[str] = set()


@dataclass(frozen=True)
class Superseded:
    image_id: str
    refs: tuple[str, ...]  # its tags (none: an untagged image of ours)

    def describe(self) -> str:
        return f"{self.image_id[7:19]} {', '.join(self.refs) or '(untagged)'}"


@dataclass(frozen=True)
class Reclaimed:
    removed: tuple[Superseded, ...]
    kept: tuple[Superseded, ...]  # the engine refused to remove them (in use meanwhile)
    free_before: int | None  # None: the engine's disk is not on this machine
    free_after: int | None


def hold(image_id: str) -> None:
    """Keep IMAGE_ID for the rest of this process, whatever builds come after it."""
    _in_use_here.add(image_id)


def superseded(rows: list[tuple[str, str]], in_use: set[str]) -> list[Superseded]:
    """Images of ours (rows: id, REPOSITORY:TAG of the images with a content-key label) that no recipe's
    :latest names and no container uses: each was replaced by a newer build of its recipe, and its content
    key rebuilds it. Only images built here count (a flagrelease-local tag, or none left at all)."""
    latest = {image for image, ref in rows if ref.startswith(f"{L.LOCAL_REPOSITORY}/") and ref.endswith(":latest")}
    refs: dict[str, list[str]] = {}
    for image, ref in rows:
        refs.setdefault(image, [])
        if ref != _NONE:
            refs[image].append(ref)
    found = []
    for image, tags in refs.items():
        ours = not tags or any(t.startswith(f"{L.LOCAL_REPOSITORY}/") for t in tags)
        if ours and image not in latest and image not in in_use and image not in _in_use_here:
            found.append(Superseded(image, tuple(tags)))
    return found


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def reclaim(*, recipe: str | None = None, keep_cache_gb: float = KEEP_CACHE_GB, dry_run: bool = False,
            spare_recent: timedelta | None = None, root: Path | None = None) -> Reclaimed:
    """Remove superseded images of ours (of RECIPE only, when given) and trim BuildKit's cache to
    KEEP_CACHE_GB. With spare_recent, an image made or tagged within that time stays: another job on this
    engine may be about to validate it. ROOT: the engine's storage folder, when the caller has asked."""
    root = root or engine_store.root_dir()
    before = free_bytes(root) if root else None
    label = f"{L.RECIPE}={recipe}" if recipe else L.CONTENT_KEY
    stale = superseded(engine_store.labelled_images(label), engine_store.container_image_ids())
    if spare_recent is not None:
        used = engine_store.last_used([image.image_id for image in stale])
        since = datetime.now(UTC) - spare_recent
        stale = [image for image in stale if used.get(image.image_id, since) < since]
    removed: list[Superseded] = []
    kept: list[Superseded] = []
    for image in stale:
        if dry_run:
            info(f"  would remove {image.describe()}")
            removed.append(image)
        elif engine_store.untag(image.refs or (image.image_id,)):
            info(f"  removed {image.describe()}")
            removed.append(image)
        else:
            kept.append(image)
    if not dry_run:
        engine_store.prune_build_cache(int(keep_cache_gb * GB))
    after = free_bytes(root) if root else None
    return Reclaimed(tuple(removed), tuple(kept), before, after)


def needed_bytes(vendor_gb: float) -> int:
    """The space a build asks for: the vendor's estimate, or FLAGREL_BUILD_DISK_GB where a machine knows
    better (0 turns the check off)."""
    raw = os.environ.get(NEED_ENV)
    if raw is None:
        return int(vendor_gb * GB)
    try:
        return int(gigabytes(raw) * GB)
    except ValueError:
        raise UserError(f"{NEED_ENV}={raw[:40]!r} is not a number of GB", where=f"environment {NEED_ENV}",
                        fix="give a number of gigabytes from 0 (no check) to 100000, e.g. 12") from None


def gigabytes(text: str) -> float:
    """A size in GB as users write it: a plain number from 0 to 100000 (ValueError otherwise)."""
    value = float(text)
    if not 0 <= value <= 100_000:
        raise ValueError(text)
    return value


def ensure_space(vendor: str, vendor_gb: float) -> None:
    """Stop before a build that would run out of disk; take back superseded images and cache first."""
    need = needed_bytes(vendor_gb)
    root = engine_store.root_dir()
    free = free_bytes(root) if root and need else None
    if free is None or free >= need:
        return
    info(f"  only {gb(free)} free in {root}; this {vendor} build needs about {gb(need)}: "
         "giving back superseded images and build cache")
    done = reclaim(spare_recent=SPARE_RECENT, root=root)
    free = done.free_after or 0
    info(f"  {len(done.removed)} images removed, {gb(max(free - (done.free_before or free), 0))} given back")
    # a removed image's layers stay on disk while the build cache holds them, and so do its downloads: empty
    # it, but only when that can make room (a build that cannot start anyway keeps its cache)
    if free < need and free + engine_store.build_cache_bytes() >= need:
        info("  still short: emptying the build cache (this build downloads and installs afresh)")
        engine_store.prune_build_cache(0)
        free = free_bytes(root) or 0
    if free < need:
        raise UserError(
            f"only {gb(free)} free where the Docker engine keeps images; this {vendor} build needs about {gb(need)}",
            where=f"{root} (the engine's storage; vendors.toml {vendor}.build_disk_gb)",
            fix="free disk space there (`docker system df` shows what the engine holds; `nox -s prune` "
                f"gives back what this tool built and no longer uses), or set {NEED_ENV} to a smaller "
                "estimate if this build needs less")
