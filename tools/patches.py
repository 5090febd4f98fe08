"""Patch-stack policy: which patches, in which order, where they live, and what a workspace may hold.

Layout: patches/vllm/common/ then patches/vllm/<vendor>/, each with a `series` file naming its patches
(git format-patch mails) in order. A vendor's stack is common + vendor. A vendor workspace
(workspaces/vllm-<vendor>) is a git repository: the pristine upstream tree as base commit
(refs/flagrelease/base), then one commit per patch. Its state (which commit came from which patch file)
lives in .git/flagrelease/state.json. The mechanism (git calls) is tools/git.py; nothing here runs git
directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tools import paths
from tools.console import info, warn
from tools.errors import UserError
from tools.git import GitError, Identity, Repo, StatusEntry, clone_local
from tools.lock import VENDORS, Lock, load_lock
from tools.source import PristineTree, fetch_source

PROJECT = "vllm"
COMMON = "common"
BRANCH = "main"
BASE_REF = "refs/flagrelease/base"
BACKUP_PREFIX = "refs/flagrelease/backup"
STAMP_MODULE = "vllm/_flagos_stack.py"
# Commits made by `patch` carry this committer and the patch's own date, so the same stack on the same base
# gives the same commit ids on every machine.
APPLIER = Identity("FlagRelease", "flagrelease@example.invalid")
_PATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.patch$")
_SHOWN = 8  # edits listed in a message before "and N more"


# --- the stack ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchFile:
    part: str  # "common" or a vendor
    name: str
    path: Path
    sha256: str

    @property
    def relpath(self) -> str:
        """Relative to patches/ (what build plans and labels record)."""
        return f"{PROJECT}/{self.part}/{self.name}"


@dataclass(frozen=True)
class StackInfo:
    vendor: str
    patches: tuple[PatchFile, ...]
    stack_hash: str
    short_id: str
    touched: frozenset[str]  # upstream paths the stack adds, changes, renames or removes


@dataclass(frozen=True)
class Series:
    path: Path
    header: str  # leading comment and blank lines, kept verbatim when export rewrites the file
    names: tuple[str, ...]


def stack_root() -> Path:
    return paths.patches_dir() / PROJECT


def check_vendor(vendor: str) -> str:
    if vendor not in VENDORS:
        raise UserError(f"unknown vendor {vendor!r}", where="--vendor", fix=f"use one of {', '.join(VENDORS)}")
    return vendor


def read_series(part: str) -> Series:
    folder = stack_root() / part
    path = folder / "series"
    if not path.is_file():
        strays = sorted(p.name for p in folder.glob("*.patch")) if folder.is_dir() else []
        if strays:
            raise UserError(f"{folder} holds patches but no series file", where=str(path),
                            fix=f"list the patches in order in {path} (one file name a line)")
        return Series(path, "", ())
    header: list[str] = []
    names: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
        entry = line.strip()
        if not names and (not entry or entry.startswith("#")):
            header.append(line)
            continue
        if not entry or entry.startswith("#"):
            continue
        where = f"{path}:{number}"
        if not _PATCH_NAME.match(entry):
            raise UserError(f"bad series entry {entry!r}", where=where,
                            fix="one patch file name a line (NNNN-subject.patch), no folders")
        if entry in names:
            raise UserError(f"{entry} is listed twice", where=where, fix="remove the duplicate line")
        if not (folder / entry).is_file():
            raise UserError(f"series names {entry}, which does not exist", where=where,
                            fix=f"restore {folder / entry} or remove the line")
        names.append(entry)
    return Series(path, "".join(header), tuple(names))


def stray_patches(part: str) -> list[str]:
    """Patch files in a part's folder that its series does not list (ignored by every command)."""
    folder = stack_root() / part
    if not folder.is_dir():
        return []
    listed = set(read_series(part).names)
    return sorted(p.name for p in folder.glob("*.patch") if p.name not in listed)


def stack_info(vendor: str) -> StackInfo:
    """The ordered stack for `vendor` and its identity: sha256 over "vendor" and each patch's sha256 and
    path in order (so content, order and vendor all count), short id = first 12 hex digits."""
    check_vendor(vendor)
    files: list[PatchFile] = []
    for part in (COMMON, vendor):
        series = read_series(part)
        for name in series.names:
            path = series.path.parent / name
            files.append(PatchFile(part, name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    digest = hashlib.sha256(f"flagrelease-stack/1\nvendor {vendor}\n".encode())
    touched: set[str] = set()
    for patch in files:
        digest.update(f"{patch.sha256}  {patch.relpath}\n".encode())
        touched |= touched_paths(patch.path.read_bytes())
    if STAMP_MODULE in touched:
        raise UserError(f"the {vendor} stack touches {STAMP_MODULE}, which `patch` generates",
                        where=", ".join(p.relpath for p in files),
                        fix="the stack's identity cannot live inside the stack: drop that change")
    stack_hash = digest.hexdigest()
    return StackInfo(vendor, tuple(files), stack_hash, stack_hash[:12], frozenset(touched))


def stamp_module_text(stack: StackInfo) -> str:
    """vllm/_flagos_stack.py: what the patched engine reads to report "<version>+flagos.<short id>"."""
    quoted = json.dumps  # a JSON string is a valid Python string literal
    listed = "".join(f"    {quoted(p.relpath)},\n" for p in stack.patches)
    return (
        '"""Generated by FlagRelease (tools/patches.py) for the applied patch stack; not part of it."""\n\n'
        f"STACK_ID = {quoted(stack.short_id)}\n"
        f"STACK_HASH = {quoted(stack.stack_hash)}\n"
        f"VENDOR = {quoted(stack.vendor)}\n"
        f"PATCHES = (\n{listed})\n"
    )


# --- reading patch mails -----------------------------------------------------------------------------------


def _unquote(name: str) -> str:
    """A path as git prints it: C-quoted ("a/caf\\303\\251") when it holds unusual bytes."""
    if not (name.startswith('"') and name.endswith('"')):
        return name
    raw = bytearray()
    body = name[1:-1].encode("utf-8", "surrogateescape")
    escapes = {ord("n"): 10, ord("t"): 9, ord('"'): 34, ord("\\"): 92, ord("a"): 7, ord("b"): 8,
               ord("f"): 12, ord("r"): 13, ord("v"): 11}
    i = 0
    while i < len(body):
        if body[i] == 92 and i + 1 < len(body):
            if 48 <= body[i + 1] <= 55:
                raw.append(int(body[i + 1:i + 4], 8))
                i += 4
                continue
            raw.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
            continue
        raw.append(body[i])
        i += 1
    return raw.decode("utf-8", "surrogateescape")


def _strip_prefix(name: str, prefix: str) -> str | None:
    name = _unquote(name.strip())
    if name == "/dev/null":
        return None
    return name[len(prefix):] if name.startswith(prefix) else name


def touched_paths(patch: bytes) -> set[str]:
    """Every path a git patch adds, changes, deletes or renames (both names of a rename)."""
    found: set[str] = set()
    header_only: str | None = None
    named_in_block = False

    def close_block() -> None:
        if header_only and not named_in_block:
            found.add(header_only)

    for line in patch.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("diff --git "):
            close_block()
            header_only, named_in_block = _header_path(line[len("diff --git "):]), False
        elif line.startswith(("rename from ", "copy from ")):
            found.add(_unquote(line.split(" ", 2)[2]))
            named_in_block = True
        elif line.startswith(("rename to ", "copy to ")):
            found.add(_unquote(line.split(" ", 2)[2]))
            named_in_block = True
        elif line.startswith("--- ") and header_only is not None:
            name = _strip_prefix(line[4:], "a/")
            if name:
                found.add(name)
        elif line.startswith("+++ ") and header_only is not None:
            name = _strip_prefix(line[4:], "b/")
            if name:
                found.add(name)
            named_in_block = True
    close_block()
    return found


def _header_path(rest: str) -> str | None:
    """The path of `diff --git a/P b/P` when both sides name it (binary and mode-only changes)."""
    if rest.startswith('"'):
        end = rest.index('"', 1)
        while rest[end - 1] == "\\":
            end = rest.index('"', end + 1)
        return _strip_prefix(rest[: end + 1], "a/")
    if (len(rest) - 5) % 2:
        return None
    half = (len(rest) - 5) // 2
    name = rest[2:2 + half]
    return name if rest == f"a/{name} b/{name}" else None


def patch_subject(patch: bytes) -> str:
    """The commit subject a mail carries (folded header lines joined, "[PATCH]" dropped)."""
    lines = patch.decode("utf-8", "surrogateescape").splitlines()
    for i, line in enumerate(lines):
        if not line:
            break
        if line.startswith("Subject: "):
            text = line[len("Subject: "):]
            for cont in lines[i + 1:]:
                if not cont.startswith((" ", "\t")):
                    break
                text += cont
            return re.sub(r"^\[PATCH[^\]]*\]\s*", "", text).strip()
    return ""


# --- workspaces --------------------------------------------------------------------------------------------


@dataclass
class WorkspaceState:
    vendor: str
    base: str
    stack_hash: str | None = None
    short_id: str | None = None
    tip: str | None = None  # HEAD as `patch` (or export) left it
    complete: bool = False
    applied: dict[str, str] = field(default_factory=dict)  # commit -> patch relpath

    @classmethod
    def load(cls, repo: Repo, vendor: str, base: str) -> WorkspaceState:
        try:
            data = json.loads(_state_file(repo).read_text())
            state = cls(**data)
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return cls(vendor, base)
        return state if state.base == base else cls(vendor, base)

    def save(self, repo: Repo) -> None:
        path = _state_file(repo)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def _state_file(repo: Repo) -> Path:
    return repo.git_dir / "flagrelease" / "state.json"


def workspace_dir(vendor: str) -> Path:
    return paths.workspaces_dir() / f"{PROJECT}-{vendor}"


def _configure(repo: Repo) -> None:
    """The generated stamp must never count as a user edit: exclude it locally (not in any .gitignore)."""
    exclude = repo.git_dir / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    text = exclude.read_text() if exclude.exists() else ""
    line = f"/{STAMP_MODULE}"
    if line not in text.splitlines():
        exclude.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                           + "# generated by FlagRelease `patch`, never part of the stack\n" + line + "\n")


def open_workspace(vendor: str, pristine: PristineTree, *, create: bool) -> Repo | None:
    path = workspace_dir(vendor)
    if (path / ".git").is_dir():
        repo = Repo.at(path)
        base = repo.rev_parse(BASE_REF)
        if base != pristine.commit:
            raise UserError(
                f"workspace {path} was made from another upstream tree (base {str(base)[:12]}); the lock now "
                f"gives {pristine.label}",
                where=str(path),
                fix=f"keep your work (`python -m tools export-patches --vendor {vendor}` or "
                    f"`python -m tools unpatch --vendor {vendor} --backup`), then move {path} away and patch again",
            )
        _configure(repo)
        return repo
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{path} exists and is not a workspace (no .git)", where=str(path),
                        fix="move it away; `patch` makes the workspace itself")
    if not create:
        return None
    info(f"  creating workspace {path} from {pristine.label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hard links into the cache's object store: cheap, and the workspace survives a cleared cache.
    repo = clone_local(pristine.repo, path)
    repo.run("remote", "remove", "origin")
    repo.update_ref(BASE_REF, pristine.commit)
    repo.checkout_branch(BRANCH, pristine.commit)
    _configure(repo)
    WorkspaceState(vendor, pristine.commit).save(repo)
    return repo


@dataclass(frozen=True)
class Edits:
    """What a workspace holds beyond pristine + the commits `patch` made."""

    changed: tuple[StatusEntry, ...]
    untracked: tuple[StatusEntry, ...]
    commits: tuple[str, ...]  # "sha subject"

    def __bool__(self) -> bool:
        return bool(self.changed or self.untracked or self.commits)

    def describe(self) -> str:
        lines: list[str] = []
        for title, items in (("uncommitted changes", [str(e) for e in self.changed]),
                             ("untracked files", [e.path for e in self.untracked]),
                             ("commits not made by `patch`", list(self.commits))):
            if items:
                more = f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                lines.append(f"{title}{more}: " + "; ".join(items[:_SHOWN]))
        return "\n  ".join(lines)


def find_edits(repo: Repo, state: WorkspaceState, base: str) -> Edits:
    entries = repo.status()
    changed = tuple(e for e in entries if e.code != "??")
    untracked = tuple(e for e in entries if e.code == "??")
    head = repo.head()
    commits: list[str] = []
    if head and not repo.is_ancestor(base, head):
        commits.append(f"{head[:12]} (HEAD is not based on the pristine tree)")
    elif head:
        for sha in repo.rev_list(f"{base}..{head}"):
            if sha not in state.applied:
                commits.append(f"{sha[:12]} {repo.subject(sha)}")
        # A file the stack deleted, present again but ignored (*.so, build/): status does not show it,
        # yet going back to pristine would overwrite it.
        assert repo.work_tree is not None
        reborn = [rel for rel in repo.changed_paths(f"{base}..{head}", diff_filter="D")
                  if os.path.lexists(repo.work_tree / rel)]
        untracked += tuple(StatusEntry("!!", rel) for rel in reborn)
    return Edits(changed, untracked, tuple(commits))


def _refuse_busy(repo: Repo, vendor: str) -> None:
    busy = repo.operation_in_progress()
    if busy:
        raise UserError(
            f"a {busy} is in progress in the {vendor} workspace", where=str(repo.work_tree),
            fix=f"finish it (e.g. `git -C {repo.work_tree} am --continue`) or abort it "
                f"(`git -C {repo.work_tree} am --abort`), then retry",
        )


def _write_stamp(repo: Repo, stack: StackInfo) -> None:
    assert repo.work_tree is not None
    path = repo.work_tree / STAMP_MODULE
    text = stamp_module_text(stack)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _remove_stamp(repo: Repo) -> None:
    assert repo.work_tree is not None
    (repo.work_tree / STAMP_MODULE).unlink(missing_ok=True)


# --- applying ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyFailure:
    patch: PatchFile
    file: str | None
    hunk: str | None
    reason: str
    applied: tuple[tuple[str, PatchFile], ...]  # (commit, patch) that did apply, in order

    def describe(self) -> str:
        where = f"{self.file}" if self.file else "(file not identified)"
        hunk = f", {self.hunk}" if self.hunk else ""
        return f"{self.patch.relpath} does not apply: {where}{hunk}: {self.reason}"


class _Failed(Exception):
    def __init__(self, failure: ApplyFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def apply_stack(repo: Repo, patches: Sequence[PatchFile]) -> list[tuple[str, PatchFile]]:
    """Commit each patch on top of HEAD. On failure HEAD stays at the last patch that applied, the work
    tree is clean, and _Failed names the patch, the file and the hunk."""
    if not patches:
        return []
    before = repo.head()
    proc = repo.am([p.path for p in patches], committer=APPLIER)
    commits = repo.rev_list(f"{before}..HEAD")
    applied = list(zip(commits, patches, strict=False))
    if proc.returncode == 0 and len(commits) == len(patches):
        return applied
    repo.am_quit()
    repo.reset_hard("HEAD")
    failed = patches[len(commits)]
    file, hunk, reason = _diagnose(repo, failed, proc.stderr or proc.stdout)
    raise _Failed(ApplyFailure(failed, file, hunk, reason, tuple(applied)))


def _diagnose(repo: Repo, patch: PatchFile, am_output: str) -> tuple[str | None, str | None, str]:
    """Which file and hunk of `patch` fail on the current tree (git apply names them; am in 3-way mode
    only says "conflict")."""
    check = repo.apply_check(patch.path)
    text = check.stderr + check.stdout
    failed = re.search(r"^error: patch failed: (.+):(\d+)$", text, re.M)
    if failed:
        file, line = failed.group(1), int(failed.group(2))
        return file, _hunk_at(patch.path.read_bytes(), file, line), "the hunk's context is not in the file"
    known = (
        (r"^error: (.+): already exists in (?:working directory|index)$", "the file already exists"),
        (r"^error: (.+): (?:does not exist in index|No such file or directory)$", "the file does not exist"),
        (r"^error: (.+): does not match index$", "the file differs from the index"),
        (r"^error: (.+): patch does not apply$", "the patch does not apply"),
    )
    for pattern, reason in known:
        found = re.search(pattern, text, re.M)
        if found:
            return found.group(1), None, reason
    conflict = re.search(r"^CONFLICT \([^)]*\): .* in (.+)$", am_output, re.M)
    last = (am_output.strip().splitlines() or ["git am failed"])[-1]
    return (conflict.group(1) if conflict else None), None, last


def _hunk_at(patch: bytes, file: str, old_start: int) -> str | None:
    current: str | None = None
    number = 0
    for line in patch.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("diff --git "):
            current, number = None, 0
        elif line.startswith("--- "):
            current = _strip_prefix(line[4:], "a/")
        elif line.startswith("@@ ") and current == file:
            number += 1
            found = re.match(r"^@@ -(\d+)", line)
            if found and int(found.group(1)) in (old_start, old_start - 1, old_start + 1):
                return f"hunk #{number} ({line.strip()})"
    return None


def _failure_error(failure: ApplyFailure, repo: Repo, vendor: str, stack: StackInfo) -> UserError:
    ws = repo.work_tree
    done = len(failure.applied)
    position = (f"at the last patch that applied ({done} of {len(stack.patches)}: "
                f"{failure.applied[-1][1].relpath})" if done else "at pristine (no patch applied)")
    rest = [p for p in stack.patches[done + 1:]]
    steps = [
        f"the workspace is {position}",
        f"1. see the conflict: git -C {ws} am --3way --keep-cr {failure.patch.path}",
        f"2. resolve it, `git -C {ws} add` the files, then `git -C {ws} am --continue`",
    ]
    if rest:
        steps.append(f"3. apply the rest: git -C {ws} am --3way --keep-cr " + " ".join(str(p.path) for p in rest))
    steps.append(f"{len(steps)}. write the fixed stack back: python -m tools export-patches --vendor {vendor}")
    return UserError(failure.describe(), where=f"{failure.patch.path} -> {ws}", fix="\n         ".join(steps))


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


def check(vendors: Sequence[str] = VENDORS, *, lock: Lock | None = None) -> list[VendorCheck]:
    """Every vendor stack applies on pristine and exports to exactly the files on disk.
    Returns per-vendor results; raises one UserError listing every problem."""
    pristine = fetch_source(lock or load_lock().lock)
    results: list[VendorCheck] = []
    with tempfile.TemporaryDirectory(prefix="flagrelease-check-") as tmp:
        repo = _scratch(pristine, Path(tmp) / "ws")
        for vendor in vendors:
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
