"""The commands users run on a workspace: patch, unpatch (never losing an edit) and export-patches."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools.core.errors import UserError
from tools.core.lock import Lock, load_lock
from tools.mech.console import warn
from tools.mech.git import Identity, Repo
from tools.stages.patches.stack import (
    _SHOWN,
    APPLIER,
    BACKUP_PREFIX,
    BASE_REF,
    BRANCH,
    COMMON,
    PROJECT,
    STAMP_MODULE,
    Series,
    StackInfo,
    check_vendor,
    patch_subject,
    read_series,
    stack_info,
    stack_root,
)
from tools.stages.patches.workspace import (
    Edits,
    WorkspaceState,
    _Failed,
    _failure_error,
    _refuse_busy,
    _remove_stamp,
    _write_stamp,
    apply_stack,
    find_edits,
    open_workspace,
    workspace_dir,
)
from tools.stages.source import fetch_source

# --- commands ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchResult:
    vendor: str
    workspace: Path
    stack: StackInfo
    applied: int
    changed: bool  # False: the workspace already held exactly this stack


def patch(vendor: str, *, lock: Lock | None = None) -> PatchResult:
    stack = stack_info(vendor)
    pristine = fetch_source(lock or load_lock().lock)
    repo = open_workspace(vendor, pristine, create=True)
    assert repo is not None and repo.work_tree is not None
    _refuse_busy(repo, vendor)
    state = WorkspaceState.load(repo, vendor, pristine.commit)
    head = repo.head()
    edits = find_edits(repo, state, pristine.commit)
    if not edits and state.complete and state.stack_hash == stack.stack_hash and head == state.tip \
            and repo.current_branch() == BRANCH:
        _write_stamp(repo, stack)
        return PatchResult(vendor, repo.work_tree, stack, len(stack.patches), changed=False)
    if edits:
        raise UserError(
            f"the {vendor} workspace has edits that are not in the stack; patching would discard them",
            where=f"{repo.work_tree}\n  {edits.describe()}",
            fix=f"keep them as patches: commit them, then `python -m tools export-patches --vendor {vendor}`; "
                f"or save them on a backup ref: `python -m tools unpatch --vendor {vendor} --backup`",
        )
    _remove_stamp(repo)
    if head != pristine.commit or repo.current_branch() != BRANCH:
        repo.checkout_branch(BRANCH, pristine.commit)
    try:
        applied = apply_stack(repo, stack.patches)
    except _Failed as failed:
        WorkspaceState(vendor, pristine.commit, stack.stack_hash, stack.short_id, repo.head(), False,
                       {sha: p.relpath for sha, p in failed.failure.applied}).save(repo)
        raise _failure_error(failed.failure, repo, vendor, stack) from None
    WorkspaceState(vendor, pristine.commit, stack.stack_hash, stack.short_id, repo.head(), True,
                   {sha: p.relpath for sha, p in applied}).save(repo)
    _write_stamp(repo, stack)
    return PatchResult(vendor, repo.work_tree, stack, len(applied), changed=True)


@dataclass(frozen=True)
class UnpatchResult:
    vendor: str
    workspace: Path
    backup_ref: str | None
    changed: bool


def unpatch(vendor: str, *, backup: bool = False, lock: Lock | None = None) -> UnpatchResult:
    check_vendor(vendor)
    pristine = fetch_source(lock or load_lock().lock)
    repo = open_workspace(vendor, pristine, create=False)
    if repo is None or repo.work_tree is None:
        return UnpatchResult(vendor, workspace_dir(vendor), None, changed=False)
    _refuse_busy(repo, vendor)
    state = WorkspaceState.load(repo, vendor, pristine.commit)
    head = repo.head()
    edits = find_edits(repo, state, pristine.commit)
    if edits and not backup:
        raise UserError(
            f"the {vendor} workspace has edits that are not in the stack; unpatch never discards them",
            where=f"{repo.work_tree}\n  {edits.describe()}",
            fix=f"keep them as patches: commit them, then `python -m tools export-patches --vendor {vendor}`; "
                f"or save them on a backup ref and unpatch: `python -m tools unpatch --vendor {vendor} --backup`",
        )
    ref = _backup(repo, vendor, edits) if edits else None
    stamp = repo.work_tree / STAMP_MODULE
    changed = bool(edits) or head != pristine.commit or stamp.exists() or repo.current_branch() != BRANCH
    if head != pristine.commit or repo.current_branch() != BRANCH or edits.changed:
        repo.checkout_branch(BRANCH, pristine.commit)
    if edits.untracked:
        repo.clean_untracked()  # saved on the backup ref above
    _remove_stamp(repo)
    WorkspaceState(vendor, pristine.commit).save(repo)
    return UnpatchResult(vendor, repo.work_tree, ref, changed)


def _backup(repo: Repo, vendor: str, edits: Edits) -> str:
    assert repo.work_tree is not None
    head = repo.head()
    assert head is not None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    ref = f"{BACKUP_PREFIX}/{vendor}/{stamp}"
    taken = set(repo.refs(f"{BACKUP_PREFIX}/{vendor}/"))
    suffix = 2
    while ref in taken:
        ref, suffix = f"{BACKUP_PREFIX}/{vendor}/{stamp}-{suffix}", suffix + 1
    commit = head
    if edits.changed or edits.untracked:
        message = (f"flagrelease backup: uncommitted work in {PROJECT}-{vendor}\n\n"
                   f"Saved by `unpatch --backup` at {stamp} on top of {head}\n"
                   f"(branch {repo.current_branch() or 'detached'}).\n")
        commit = repo.snapshot(repo.work_tree, parents=[head], message=message,
                               author=Identity("FlagRelease backup", APPLIER.email),
                               index_file=repo.git_dir / "flagrelease" / "backup.index",
                               seed_index=repo.git_dir / "index",
                               also=[e.path for e in edits.untracked if e.code == "!!"])
    repo.update_ref(ref, commit, message="flagrelease unpatch --backup")
    return ref


@dataclass(frozen=True)
class ExportResult:
    vendor: str
    counts: dict[str, int]  # part -> patches exported
    written: tuple[str, ...]  # files (relative to patches/) whose bytes changed
    removed: tuple[str, ...]


def export(vendor: str, *, new_into: str = "vendor", lock: Lock | None = None) -> ExportResult:
    """Write the workspace's commits above base back to patches/: commits that came from the common part
    stay common, new ones go to the vendor part unless a common commit follows them (or new_into=common)."""
    check_vendor(vendor)
    pristine = fetch_source(lock or load_lock().lock)
    repo = open_workspace(vendor, pristine, create=False)
    if repo is None or repo.work_tree is None:
        raise UserError(f"no {vendor} workspace to export", where=str(workspace_dir(vendor)),
                        fix=f"run `python -m tools patch --vendor {vendor}` first")
    _refuse_busy(repo, vendor)
    base = pristine.commit
    state = WorkspaceState.load(repo, vendor, base)
    edits = find_edits(repo, state, base)
    if edits.changed:
        raise UserError(
            f"the {vendor} workspace has uncommitted changes; export writes commits only",
            where=f"{repo.work_tree}\n  {edits.describe()}",
            fix=f"commit them (`git -C {repo.work_tree} commit -a`), or stash them, then export again",
        )
    head = repo.head()
    assert head is not None
    if not repo.is_ancestor(base, head):
        raise UserError("HEAD is not based on the pristine tree", where=str(repo.work_tree),
                        fix=f"rebase your commits onto {BASE_REF}")
    if repo.merges_in(f"{base}..{head}"):
        raise UserError("the workspace history has merge commits; a patch stack is linear",
                        where=str(repo.work_tree), fix=f"rebase onto {BASE_REF} to make it linear")
    if repo.changed_paths(f"{base}..{head}", STAMP_MODULE):
        raise UserError(
            f"a commit in the {vendor} workspace adds {STAMP_MODULE}, which `patch` generates",
            where=str(repo.work_tree),
            fix=f"drop it from that commit (`git rm --cached {STAMP_MODULE}`, then amend or rebase); it was "
                "ignored until something added it with --force",
        )
    if edits.untracked:
        warn("untracked files are not exported: " + "; ".join(e.path for e in edits.untracked[:_SHOWN]))
    commits = repo.rev_list(f"{base}..{head}")
    parts = _classify(repo, commits, state, vendor, new_into)
    written: list[str] = []
    removed: list[str] = []
    counts: dict[str, int] = {}
    applied: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="flagrelease-export-") as tmp:
        for part in (COMMON, vendor):
            mine = [c for c, p in zip(commits, parts, strict=True) if p == part]
            files = repo.format_patch(f"{mine[0]}^..{mine[-1]}", Path(tmp) / part) if mine else []
            counts[part] = len(files)
            w, r = _sync_part(part, files)
            written += w
            removed += r
            applied.update({sha: f"{PROJECT}/{part}/{f.name}" for sha, f in zip(mine, files, strict=True)})
    stack = stack_info(vendor)
    WorkspaceState(vendor, base, stack.stack_hash, stack.short_id, head, True, applied).save(repo)
    _write_stamp(repo, stack)
    return ExportResult(vendor, counts, tuple(written), tuple(removed))


def _classify(repo: Repo, commits: list[str], state: WorkspaceState, vendor: str, new_into: str) -> list[str]:
    by_subject: dict[str, str] = {}
    try:
        for p in stack_info(vendor).patches:
            subject = patch_subject(p.path.read_bytes())
            by_subject[subject] = p.part if subject not in by_subject else ""
    except UserError:
        pass  # a broken series: fall back to what the workspace state remembers
    known: list[str | None] = []
    for sha in commits:
        part: str | None = None
        if sha in state.applied:
            part = state.applied[sha].split("/")[1]
        elif by_subject.get(repo.subject(sha)):
            part = by_subject.pop(repo.subject(sha))
        known.append(part if part in (COMMON, vendor) else None)
    parts: list[str] = []
    for i, part in enumerate(known):
        if part is None:
            later_common = COMMON in known[i + 1:]
            earlier_vendor = vendor in parts
            part = COMMON if later_common or (new_into == COMMON and not earlier_vendor) else vendor
        parts.append(part)
    for i, part in enumerate(parts):
        if part == COMMON and vendor in parts[:i]:
            raise UserError(
                f"commit {commits[i][:12]} ({repo.subject(commits[i])}) is a common patch after "
                f"{vendor} patches; the stack is common first, then {vendor}",
                where=str(repo.work_tree),
                fix=f"reorder with `git -C {repo.work_tree} rebase -i {BASE_REF}` (common commits first)",
            )
    return parts


def _sync_part(part: str, files: list[Path]) -> tuple[list[str], list[str]]:
    folder = stack_root() / part
    folder.mkdir(parents=True, exist_ok=True)
    try:
        old = read_series(part)
    except UserError:
        old = Series(folder / "series", "", ())
    written: list[str] = []
    names = [f.name for f in files]
    for generated in files:
        dest = folder / generated.name
        data = generated.read_bytes()
        if not dest.is_file() or dest.read_bytes() != data:
            dest.write_bytes(data)
            written.append(f"{PROJECT}/{part}/{dest.name}")
    removed = []
    for name in old.names:
        if name not in names:
            (folder / name).unlink(missing_ok=True)
            removed.append(f"{PROJECT}/{part}/{name}")
    text = old.header + "".join(f"{n}\n" for n in names)
    series = folder / "series"
    if not series.is_file() or series.read_text(encoding="utf-8") != text:
        series.write_text(text, encoding="utf-8")
        written.append(f"{PROJECT}/{part}/series")
    return written, removed


