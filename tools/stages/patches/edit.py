"""The commands users run on a workspace: patch, unpatch (never losing an edit) and export-patches."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

from tools.core.errors import UserError
from tools.mech.console import warn
from tools.mech.git import Identity, Repo
from tools.stages.patches.stack import (
    _SHOWN,
    APPLIER,
    BACKUP_PREFIX,
    BASE_REF,
    BRANCH,
    COMMON,
    PATCH_NAME,
    PROJECT,
    STAMP_MODULE,
    StackInfo,
    check_vendor,
    patch_subject,
    read_series,
    stack_info,
    stray_message,
    stray_patches,
)
from tools.stages.patches.workspace import (
    Edits,
    WorkspaceState,
    _Failed,
    _failure_error,
    _refuse_busy,
    _remove_stamp,
    _Unverified,
    _write_stamp,
    apply_stack,
    find_edits,
    open_workspace,
    pristine_for,
    remember_applied,
    reuse_applied,
    workspace_dir,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from tools.core.lock import Lock


def warn_strays(vendor: str) -> None:
    for part in (COMMON, vendor):
        for name in stray_patches(part):
            warn(stray_message(part, name) + " (check-patches refuses this)")

# --- commands ----------------------------------------------------------------------------------------------


class PatchResult(namedtuple("PatchResult", "vendor workspace stack applied changed")):
    __slots__ = ()
    vendor: str
    workspace: Path
    stack: StackInfo
    applied: int
    changed: bool  # False: the workspace already held exactly this stack


def patch(vendor: str, *, lock: Lock | None = None) -> PatchResult:
    stack = stack_info(vendor)
    if stack.unreadable:
        raise stack.unreadable_error(f"patch the {vendor} workspace (nothing was applied)")
    warn_strays(vendor)
    pristine = pristine_for(lock)
    repo = open_workspace(vendor, pristine, create=True)
    assert repo is not None and repo.work_tree is not None
    _refuse_busy(repo, vendor)
    state = WorkspaceState.load(repo, vendor, pristine.commit)
    head, branch = repo.head(), repo.current_branch()
    same = state.complete and state.stack_hash == stack.stack_hash and head == state.tip and branch == BRANCH
    at_pristine = head == pristine.commit and branch == BRANCH
    if same or not at_pristine:  # going back to pristine first would discard edits: look for them
        edits = find_edits(repo, state, pristine.commit)
        if same and not edits:
            _write_stamp(repo, stack)
            return PatchResult(vendor, repo.work_tree, stack, len(stack.patches), changed=False)
        if edits:
            raise _edits_error(repo, vendor, edits)
        repo.checkout_branch(BRANCH, pristine.commit)
    _remove_stamp(repo)
    reused = reuse_applied(repo, stack, pristine.commit)  # no work twice: this stack on this base before
    if reused is not None:
        reused.save(repo)
    else:
        _apply_fresh(repo, vendor, stack, state, pristine.commit, at_pristine)
    _write_stamp(repo, stack)
    return PatchResult(vendor, repo.work_tree, stack, len(stack.patches), changed=True)


def _apply_fresh(repo: Repo, vendor: str, stack: StackInfo, state: WorkspaceState, base: str,
                 at_pristine: bool) -> None:
    """`git am` of the whole stack on base; the result is remembered for reuse_applied."""
    try:
        try:
            # At pristine nothing is discarded: `git am` keeps edits and stops when one is in its way.
            applied = apply_stack(repo, stack.patches, clean=not at_pristine)
        except _Unverified:  # it stopped; am --abort left pristine and the edits: which was it?
            edits = find_edits(repo, state, base)
            if edits:
                raise _edits_error(repo, vendor, edits) from None
            applied = apply_stack(repo, stack.patches)
    except _Failed as failed:
        WorkspaceState(vendor, base, stack.stack_hash, stack.short_id, repo.head(), False,
                       {sha: p.relpath for sha, p in failed.failure.applied}, stack.removes).save(repo)
        raise _failure_error(failed.failure, repo, vendor, stack) from None
    done = WorkspaceState(vendor, base, stack.stack_hash, stack.short_id, repo.head(), True,
                          {sha: p.relpath for sha, p in applied}, stack.removes)
    done.save(repo)
    if stack.patches:
        remember_applied(repo, done)


def _edits_error(repo: Repo, vendor: str, edits: Edits) -> UserError:
    return UserError(
        f"the {vendor} workspace has edits that are not in the stack; patching would discard them",
        where=f"{repo.work_tree}\n  {edits.describe()}",
        fix=f"keep them as patches: commit them, then `nox -s export-patches -- --vendor {vendor}`; "
            f"or save them on a backup ref: `nox -s unpatch -- --vendor {vendor} --backup`",
    )


class UnpatchResult(namedtuple("UnpatchResult", "vendor workspace backup_ref changed")):
    __slots__ = ()
    vendor: str
    workspace: Path
    backup_ref: str | None
    changed: bool


def unpatch(vendor: str, *, backup: bool = False, lock: Lock | None = None) -> UnpatchResult:
    check_vendor(vendor)
    pristine = pristine_for(lock)
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
            fix=f"keep them as patches: commit them, then `nox -s export-patches -- --vendor {vendor}`; "
                f"or save them on a backup ref and unpatch: `nox -s unpatch -- --vendor {vendor} --backup`",
        )
    ref = _backup(repo, vendor, edits) if edits else None
    stamp = repo.work_tree / STAMP_MODULE
    branch = repo.current_branch()
    changed = bool(edits) or head != pristine.commit or stamp.exists() or branch != BRANCH
    if not edits and branch == BRANCH and head != pristine.commit:
        repo.fast_forward_tree(pristine.commit, message="flagrelease unpatch")  # clean: only the stack's files
    elif head != pristine.commit or branch != BRANCH or edits.changed:
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
    from datetime import UTC, datetime

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


class ExportResult(namedtuple("ExportResult", "vendor counts written removed")):
    __slots__ = ()
    vendor: str
    counts: dict[str, int]  # part -> patches exported
    written: tuple[str, ...]  # files (relative to patches/) whose bytes changed
    removed: tuple[str, ...]


def export(vendor: str, *, new_into: str = "vendor", lock: Lock | None = None) -> ExportResult:
    """Write the workspace's commits above base back to patches/: commits that came from the common part
    stay common, new ones go to the vendor part unless a common commit follows them (or new_into=common).
    Every patch keeps its file name (its commit's Patch-Filename line); new ones are named by subject."""
    check_vendor(vendor)
    pristine = pristine_for(lock)
    repo = open_workspace(vendor, pristine, create=False)
    if repo is None or repo.work_tree is None:
        raise UserError(f"no {vendor} workspace to export", where=str(workspace_dir(vendor)),
                        fix=f"run `nox -s patch -- --vendor {vendor}` first")
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
    import tools.stages.patches.canonical as canonical  # export only

    commits = repo.rev_list(f"{base}..{head}")
    parts = _classify(repo, commits, state, vendor, new_into)
    written: list[str] = []
    removed: list[str] = []
    counts: dict[str, int] = {}
    applied: dict[str, str] = {}
    for part in (COMMON, vendor):
        mine = [c for c, p in zip(commits, parts, strict=True) if p == part]
        exported = canonical.export_mails(repo, mine)
        counts[part] = len(exported)
        w, r = canonical.write_part(part, exported)
        written += w
        removed += r
        applied.update({sha: f"{PROJECT}/{part}/{e.name}" for sha, e in zip(mine, exported, strict=True)})
    stack = stack_info(vendor)
    WorkspaceState(vendor, base, stack.stack_hash, stack.short_id, head, True, applied, stack.removes).save(repo)
    _write_stamp(repo, stack)
    return ExportResult(vendor, counts, tuple(written), tuple(removed))


def _trailer_names(repo: Repo, commits: list[str]) -> dict[str, str]:
    """commit -> the file name its message carries (Patch-Filename), for the commits that have one."""
    if not commits:
        return {}
    from tools.mech import gitmail  # export only: `patch` and `unpatch` never read mails back

    raw = repo.out("log", "--format=%H%x00%B%x01", f"{commits[0]}^..{commits[-1]}")
    names: dict[str, str] = {}
    for entry in raw.split("\x01"):
        sha, _, message = entry.strip("\n").partition("\x00")
        mail = b"Subject: x\n\n" + message.encode("utf-8", "surrogateescape") + b"\n"
        name = gitmail.filename_of(mail)
        if sha and name and PATCH_NAME.match(name):
            names[sha] = name
    return names


def _classify(repo: Repo, commits: list[str], state: WorkspaceState, vendor: str, new_into: str) -> list[str]:
    by_name: dict[str, str] = {}
    by_subject: dict[str, str] = {}
    try:
        for part in (COMMON, vendor):
            for name in read_series(part).names:
                by_name[name] = part if name not in by_name else ""
        for p in stack_info(vendor).patches:
            if p.sealed:
                continue
            subject = patch_subject(p.path.read_bytes())
            by_subject[subject] = p.part if subject not in by_subject else ""
    except UserError:
        pass  # a broken series: fall back to what the workspace state remembers
    trailers = _trailer_names(repo, commits)
    known: list[str | None] = []
    for sha in commits:
        part: str | None = None
        if sha in state.applied:
            part = state.applied[sha].split("/")[1]
        elif by_name.get(trailers.get(sha, "")):
            part = by_name[trailers[sha]]
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
