"""check-patches and build inputs: every stack applies on pristine and round-trips byte-identically."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.lock import Lock, load_lock
from tools.mech.git import GitError, Repo, clone_local
from tools.stages.patches.stack import (
    BRANCH,
    COMMON,
    PROJECT,
    StackInfo,
    read_series,
    stack_info,
    stack_root,
    stray_patches,
)
from tools.stages.patches.workspace import _Failed, _write_stamp, apply_stack
from tools.stages.source import PristineTree, fetch_source

# --- checks and build inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VendorCheck:
    vendor: str
    short_id: str
    patches: int
    seconds: float
    problems: tuple[str, ...]


def _scratch(pristine: PristineTree, dest: Path) -> Repo:
    """A throwaway checkout of the base, sharing the cache's objects (alternates)."""
    repo = clone_local(pristine.repo, dest, shared=True)
    repo.checkout_branch(BRANCH, pristine.commit)
    return repo


def check(names: Sequence[str] = (), *, lock: Lock | None = None) -> list[VendorCheck]:
    """Every vendor stack applies on pristine and exports to exactly the files on disk.
    Returns per-vendor results; raises one UserError listing every problem."""
    pristine = fetch_source(lock or load_lock().lock)
    results: list[VendorCheck] = []
    with tempfile.TemporaryDirectory(prefix="flagrelease-check-") as tmp:
        repo = _scratch(pristine, Path(tmp) / "ws")
        for vendor in names or vendors.names():
            start = time.monotonic()
            problems, stack = _check_vendor(repo, pristine, vendor, Path(tmp) / "out" / vendor)
            results.append(VendorCheck(vendor, stack.short_id if stack else "-", len(stack.patches) if stack else 0,
                                       time.monotonic() - start, tuple(problems)))
    bad = [f"{r.vendor}: {p}" for r in results for p in r.problems]
    if bad:
        raise UserError(
            f"{len(bad)} problem(s) in the patch stacks:\n  - " + "\n  - ".join(bad),
            where=str(stack_root()),
            fix="a patch that does not apply: `python -m tools patch --vendor V` shows the next steps; "
                "drift: `python -m tools patch --vendor V` then `export-patches --vendor V` rewrites the files",
        )
    return results


def _check_vendor(repo: Repo, pristine: PristineTree, vendor: str, out: Path) -> tuple[list[str], StackInfo | None]:
    try:
        stack = stack_info(vendor)
    except UserError as err:
        return [f"{err.what} ({err.where})"], None
    problems = [f"{PROJECT}/{part}/{name} is not listed in the series (ignored by every command)"
                for part in (COMMON, vendor) for name in stray_patches(part)]
    repo.checkout_branch(BRANCH, pristine.commit)
    try:
        applied = apply_stack(repo, stack.patches)
    except _Failed as failed:
        return problems + [failed.failure.describe()], stack
    for part in (COMMON, vendor):
        mine = [sha for sha, p in applied if p.part == part]
        files = repo.format_patch(f"{mine[0]}^..{mine[-1]}", out / part) if mine else []
        series = read_series(part)
        if [f.name for f in files] != list(series.names):
            problems.append(f"{PROJECT}/{part}/series lists {list(series.names)}, export would write "
                            f"{[f.name for f in files]}")
            continue
        for generated in files:
            ours = series.path.parent / generated.name
            if ours.read_bytes() != generated.read_bytes():
                problems.append(f"{PROJECT}/{part}/{generated.name} drifts from what export writes "
                                f"({_first_difference(ours.read_bytes(), generated.read_bytes())})")
    return problems, stack


def _first_difference(ours: bytes, theirs: bytes) -> str:
    a, b = ours.splitlines(), theirs.splitlines()
    for number, (x, y) in enumerate(zip(a, b, strict=False), 1):
        if x != y:
            return f"line {number}: {x[:60]!r} vs export {y[:60]!r}"
    return f"{len(a)} lines vs export {len(b)}"


def patched_tree(vendor: str, *, lock: Lock | None = None) -> Path:
    """A clean checkout of pristine + `vendor`'s stack (with the stamp module), cached per stack id.
    Independent of the user's workspace: a build takes what patches/ says, never uncommitted edits."""
    stack = stack_info(vendor)
    pristine = fetch_source(lock or load_lock().lock)
    root = paths.cache_dir() / "patched"
    dest = root / f"{PROJECT}-{pristine.version}-{vendor}-{stack.short_id}"
    marker = dest / ".git" / "flagrelease-complete"
    if marker.is_file() and marker.read_text() == pristine.commit:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=root))
    try:
        repo = _scratch(pristine, work / "tree")
        try:
            apply_stack(repo, stack.patches)
        except _Failed as failed:
            raise UserError(failed.failure.describe(), where=str(failed.failure.patch.path),
                            fix=f"run `python -m tools patch --vendor {vendor}` for the next steps") from None
        _write_stamp(repo, stack)
        (work / "tree" / ".git" / "flagrelease-complete").write_text(pristine.commit)
        for old in root.glob(f"{PROJECT}-{pristine.version}-{vendor}-*"):
            shutil.rmtree(old, ignore_errors=True)
        try:
            (work / "tree").replace(dest)
        except OSError:
            if not (marker.is_file() and marker.read_text() == pristine.commit):
                raise  # not another process finishing the same tree first
    except OSError as err:
        raise UserError(f"cannot write the patched {vendor} tree: {err}", where=str(dest),
                        fix=f"check free space and permissions under {root}") from err
    except GitError as err:
        raise UserError(f"cannot make the patched {vendor} tree: {err.tail(2)}", where=str(work),
                        fix="see the git error above") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
