"""check-patches and build inputs: every stack applies on pristine and round-trips byte-identically.

check-patches checks out nothing: each stack is committed through a private index (tools/mech/gitmail.py
IndexAm: the same commits `patch` makes) in a scratch clone that shares the cache's objects, the common
part once for all vendors, and each part's `git format-patch` output is compared in memory with the files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tools.stages.patches.canonical as canonical
from tools.core import paths, vendors
from tools.core.errors import CheckFailed, UserError
from tools.mech.git import GitError, Repo, clone_local
from tools.mech.gitmail import IndexAm, MailFailed
from tools.stages.patches.stack import (
    APPLIER,
    BRANCH,
    COMMON,
    PROJECT,
    PatchFile,
    StackInfo,
    stack_info,
    stack_root,
    stray_message,
    stray_patches,
)
from tools.stages.patches.workspace import (
    ApplyFailure,
    _Failed,
    _write_stamp,
    apply_stack,
    diagnose_apply,
    git_words,
    pristine_for,
    stack_mails,
)
from tools.stages.source import PristineTree

if TYPE_CHECKING:
    from tools.core.lock import Lock


@dataclass(frozen=True)
class VendorCheck:
    vendor: str
    short_id: str
    patches: int
    seconds: float
    problems: tuple[str, ...]
    unchecked: tuple[str, ...] = ()  # encrypted patches without a key (and what came after them)

    @property
    def checked(self) -> int:
        return self.patches - len(self.unchecked)


def _scratch(pristine: PristineTree, dest: Path) -> Repo:
    """A throwaway checkout of the base, sharing the cache's objects (alternates)."""
    repo = clone_local(pristine.repo, dest, shared=True)
    repo.checkout_branch(BRANCH, pristine.commit)
    return repo


@dataclass
class _Applied:
    tip: str
    commits: list[tuple[str, PatchFile]]
    problems: list[str]
    ok: bool


class _Checker:
    """Commits stacks through a private index and compares their export with patches/."""

    def __init__(self, pristine: PristineTree, tmp: Path) -> None:
        self.base = pristine.commit
        self.repo = clone_local(pristine.repo, tmp / "scratch.git", shared=True)  # nothing checked out
        self.am = IndexAm(self.repo, tmp, APPLIER)
        self.parts: dict[tuple[str, ...], _Applied] = {}

    def run(self, base: _Applied, patches: Sequence[PatchFile]) -> _Applied:
        key = (base.tip, *(f"{p.relpath}@{p.sha256}" for p in patches))
        if key in self.parts:  # the common part: once for every vendor
            return self.parts[key]
        if not base.ok or not patches:
            done = _Applied(base.tip, [], [], base.ok)
        else:
            mails = stack_mails(patches)
            try:
                commits = self.am.apply(base.tip, mails)
            except MailFailed as failed:
                file, hunk, reason = diagnose_apply(failed.output, mails[failed.index]) if failed.output \
                    else (None, None, failed.reason)
                failure = ApplyFailure(patches[failed.index], file, hunk, reason, (), git_words(failed.output))
                done = _Applied(base.tip, [], [failure.describe()], False)
            else:
                pairs = list(zip(commits, patches, strict=True))
                done = _Applied(commits[-1], pairs, self._compare(pairs), True)
        self.parts[key] = done
        return done

    def _compare(self, pairs: list[tuple[str, PatchFile]]) -> list[str]:
        exported = canonical.export_mails(self.repo, [sha for sha, _ in pairs])
        problems = []
        for (_, patch), out in zip(pairs, exported, strict=True):
            if out.name != patch.name:
                problems.append(f"{patch.relpath} would be exported as {out.name}")
                continue
            ours = patch.mail()
            if ours != out.mail:
                problems.append(f"{patch.relpath} drifts from what export writes "
                                f"({_first_difference(ours, out.mail, shown=not patch.sealed)})")
        return problems


def check(names: Sequence[str] = (), *, lock: Lock | None = None) -> list[VendorCheck]:
    """Every vendor stack applies on pristine and exports to exactly the files on disk. Encrypted patches
    without a key are reported as unchecked (with the key they need), the rest is still checked.
    Returns per-vendor results; raises one UserError listing every problem."""
    pristine = pristine_for(lock)
    results: list[VendorCheck] = []
    with tempfile.TemporaryDirectory(prefix="flagrelease-check-") as tmp:
        checker = _Checker(pristine, Path(tmp))
        for vendor in names or vendors.names():
            start = time.monotonic()
            problems, unchecked, stack = _check_vendor(checker, vendor)
            results.append(VendorCheck(vendor, stack.short_id if stack else "-", len(stack.patches) if stack else 0,
                                       time.monotonic() - start, tuple(problems), tuple(unchecked)))
    bad = [f"{r.vendor}: {p}" for r in results for p in r.problems]
    if bad:
        raise CheckFailed(
            f"{len(bad)} problem(s) in the patch stacks:\n  - " + "\n  - ".join(bad),
            where=str(stack_root()),
            fix="a patch that does not apply: `nox -s patch -- --vendor V` shows the next steps; "
                "drift: `nox -s patch -- --vendor V` then `export-patches --vendor V` rewrites the files; "
                "a vendor's own series: `nox -s import-patches -- --vendor V DIR`; a file not in the series: "
                "add it to the series or delete it",
        )
    return results


def _check_vendor(checker: _Checker, vendor: str) -> tuple[list[str], list[str], StackInfo | None]:
    try:
        stack = stack_info(vendor)
    except UserError as err:
        return [f"{err.what} ({err.where})"], [], None
    problems = [stray_message(part, name) for part in (COMMON, vendor) for name in stray_patches(part)]
    unchecked = [f"{p.relpath}: {why}" for p, why in stack.unreadable]
    readable = list(stack.patches)
    if stack.unreadable:
        first = stack.patches.index(stack.unreadable[0][0])
        sealed = {p for p, _ in stack.unreadable}
        unchecked += [f"{p.relpath}: not checked (it applies after an encrypted patch that cannot be read)"
                      for p in stack.patches[first:] if p not in sealed]
        readable = readable[:first]
    pristine = _Applied(checker.base, [], [], True)
    common = checker.run(pristine, [p for p in readable if p.part == COMMON])
    own = checker.run(common, [p for p in readable if p.part == vendor])
    return problems + common.problems + own.problems, unchecked, stack


def _first_difference(ours: bytes, theirs: bytes, *, shown: bool = True) -> str:
    a, b = ours.splitlines(), theirs.splitlines()
    for number, (x, y) in enumerate(zip(a, b, strict=False), 1):
        if x != y:
            if not shown:  # an encrypted patch: its lines never go to a log
                return f"line {number} differs"
            return f"line {number}: {x[:60]!r} vs export {y[:60]!r}"
    return f"{len(a)} lines vs export {len(b)}"


# --- build inputs ------------------------------------------------------------------------------------------


def _make_tree(pristine: PristineTree, stack: StackInfo, dest: Path, vendor: str) -> None:
    repo = _scratch(pristine, dest)
    try:
        apply_stack(repo, stack.patches)
    except _Failed as failed:
        raise CheckFailed(failed.failure.describe(), where=str(failed.failure.patch.path),
                          fix=f"run `nox -s patch -- --vendor {vendor}` for the next steps") from None
    _write_stamp(repo, stack)


def patched_tree(vendor: str, *, lock: Lock | None = None) -> Path:
    """A clean checkout of pristine + `vendor`'s stack (with the stamp module), cached per stack id.
    Independent of the user's workspace: a build takes what patches/ says, never uncommitted edits.
    A stack with encrypted patches is never cached (its plaintext stays out of the cache): use
    patched_source()."""
    stack = stack_info(vendor)
    if any(p.sealed for p in stack.patches):
        raise UserError(f"the {vendor} stack has encrypted patches: its patched tree is never cached",
                        where=", ".join(p.relpath for p in stack.patches if p.sealed),
                        fix="use patches.patched_source(vendor), which removes the tree after use")
    pristine = pristine_for(lock)
    root = paths.cache_dir() / "patched"
    dest = root / f"{PROJECT}-{pristine.version}-{vendor}-{stack.short_id}"
    marker = dest / ".git" / "flagrelease-complete"
    if marker.is_file() and marker.read_text() == pristine.commit:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=root))
    try:
        _make_tree(pristine, stack, work / "tree", vendor)
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


@contextlib.contextmanager
def patched_source(vendor: str, *, lock: Lock | None = None, near: Path | None = None) -> Iterator[Path]:
    """The patched tree for a build context. Public stacks: the cached patched_tree(). Stacks with
    encrypted patches: a private tree (mode 700) made beside the build contexts (`near`, default
    build/contexts) and deleted when the block ends, so their plaintext is never cached."""
    stack = stack_info(vendor)
    if stack.unreadable:
        raise stack.unreadable_error(f"build the {vendor} image")
    if not any(p.sealed for p in stack.patches):
        yield patched_tree(vendor, lock=lock)
        return
    root = near or paths.build_dir() / "contexts"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".patched-{vendor}-", dir=root))
    os.chmod(work, 0o700)
    try:
        try:
            _make_tree(pristine_for(lock), stack, work / "tree", vendor)
        except GitError as err:
            raise UserError(f"cannot make the patched {vendor} tree: {err.tail(2)}", where=str(work),
                            fix="see the git error above") from err
        yield work / "tree"
    finally:
        shutil.rmtree(work, ignore_errors=True)

