"""Vendor workspaces: git repositories holding pristine + one commit per patch, and applying a stack."""

from __future__ import annotations

import json
import os
import re
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

import tools.stages.patches.keys as keys
from tools.core import paths
from tools.core.errors import UserError
from tools.mech.console import info
from tools.mech.git import GitError, Repo, StatusEntry, clone_local
from tools.stages.patches.stack import (
    _SHOWN,
    APPLIED_PREFIX,
    APPLIER,
    BASE_REF,
    BRANCH,
    PROJECT,
    STAMP_MODULE,
    PatchFile,
    StackInfo,
    _strip_prefix,
    stamp_module_text,
)
from tools.stages.source import PristineTree, cached_source, fetch_source

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any

    from tools.core.lock import Lock


def load_lock() -> Any:
    """The validated lock (pydantic), loaded only when the cache cannot answer without it."""
    from tools.core.lock import load_lock as load

    return load()


def pristine_for(lock: Lock | None) -> PristineTree:
    """The pristine tree: straight from the cache when the lock's entry is there (no validation cost), else
    fetched with the validated lock."""
    if lock is None:
        tree = cached_source()
        if tree is not None:
            return tree
    return fetch_source(lock or load_lock().lock)



# --- workspaces --------------------------------------------------------------------------------------------


class WorkspaceState(namedtuple("WorkspaceState", "vendor base stack_hash short_id tip complete applied removes",
                                defaults=(None, None, None, False, {}, False))):
    __slots__ = ()
    vendor: str
    base: str
    stack_hash: str | None
    short_id: str | None
    tip: str | None  # HEAD as `patch` (or export) left it
    complete: bool
    applied: dict[str, str]  # commit -> patch relpath (the shared default is never changed)
    removes: bool  # the applied stack deletes or renames files (unpatch then looks for reborn ones)

    @classmethod
    def read(cls, path: Path) -> WorkspaceState | None:
        """A saved state; None when it is missing or unreadable (the caller then starts from a fresh one,
        under which every commit beyond the base counts as the user's: nothing is discarded)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def load(cls, repo: Repo, vendor: str, base: str) -> WorkspaceState:
        """The workspace's state, or a fresh one for this base."""
        state = cls.read(_state_file(repo))
        return state if state is not None and state.base == base else cls(vendor, base)

    def save(self, repo: Repo, path: Path | None = None) -> None:
        """To the workspace's state file, or to `path`."""
        path = path or _state_file(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._asdict(), indent=2, sort_keys=True) + "\n")


def _state_file(repo: Repo) -> Path:
    return repo.git_dir / "flagrelease" / "state.json"


def _applied_file(repo: Repo, stack_hash: str) -> Path:
    return repo.git_dir / "flagrelease" / "applied" / f"{stack_hash}.json"


def remember_applied(repo: Repo, state: WorkspaceState) -> None:
    """Keep what a complete `git am` of a stack made, for reuse_applied."""
    assert state.complete and state.stack_hash and state.tip
    state.save(repo, _applied_file(repo, state.stack_hash))
    repo.update_ref(f"{APPLIED_PREFIX}/{state.stack_hash}", state.tip, message="flagrelease: applied stack")


def reuse_applied(repo: Repo, stack: StackInfo, base: str) -> WorkspaceState | None:
    """The state of an earlier `git am` of exactly this stack (same patch bytes, order and vendor) on this
    base, with the work tree moved to its tip: the same mails, base, applier and dates give the same
    commits, so `git am` would make this very tip again. A two-way merge (reset --keep) writes only the
    stack's files and refuses, changing nothing, when one of them holds an edit. None: nothing known, or
    refused (the caller then runs `git am`, which stops on the edit and says so)."""
    known = WorkspaceState.read(_applied_file(repo, stack.stack_hash))
    tip = repo.ref(f"{APPLIED_PREFIX}/{stack.stack_hash}")
    if (known is None or not known.complete or known.base != base or known.stack_hash != stack.stack_hash
            or tip != known.tip or len(known.applied) != len(stack.patches) or repo.head() != base):
        return None
    try:
        repo.fast_forward_tree(tip, message=f"flagrelease patch: stack {stack.short_id}, applied before")
    except GitError:
        return None
    return known


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
        base = repo.ref(BASE_REF)
        if base != pristine.commit:
            raise UserError(
                f"workspace {path} was made from another upstream tree (base {str(base)[:12]}); the lock now "
                f"gives {pristine.label}",
                where=str(path),
                fix=f"keep your work (`nox -s export-patches -- --vendor {vendor}` or "
                    f"`nox -s unpatch -- --vendor {vendor} --backup`), then move {path} away and patch again",
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


class Edits(namedtuple("Edits", "changed untracked commits")):
    """What a workspace holds beyond pristine + the commits `patch` made."""

    __slots__ = ()
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
    # HEAD where `patch` left it: its commits are the stack's (no history walk needed)
    ours = head == base or (head == state.tip and set(state.applied) and state.base == base)
    if head and not ours and not repo.is_ancestor(base, head):
        commits.append(f"{head[:12]} (HEAD is not based on the pristine tree)")
    elif head and head != base:
        if not ours:
            for sha in repo.rev_list(f"{base}..{head}"):
                if sha not in state.applied:
                    commits.append(f"{sha[:12]} {repo.subject(sha)}")
        # A file the stack deleted, present again but ignored (*.so, build/): status does not show it,
        # yet going back to pristine would overwrite it.
        if state.removes or not ours:
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


class ApplyFailure(namedtuple("ApplyFailure", "patch file hunk reason applied git_says", defaults=("",))):
    __slots__ = ()
    patch: PatchFile
    file: str | None
    hunk: str | None
    reason: str
    applied: tuple[tuple[str, PatchFile], ...]  # (commit, patch) that did apply, in order
    git_says: str  # git's own words (stderr and stdout), noise dropped

    def describe(self) -> str:
        where = f"{self.file}" if self.file else "(file not identified)"
        hunk = f", {self.hunk}" if self.hunk else ""
        said = f" (git: {self.git_says})" if self.git_says else ""
        return f"{self.patch.relpath} does not apply: {where}{hunk}: {self.reason}{said}"


class _Failed(Exception):
    def __init__(self, failure: ApplyFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def stack_mails(patches: Sequence[PatchFile]) -> list[bytes]:
    """Each patch's mail (decrypted in memory) carrying its file name, as `git am` should commit it."""
    from tools.mech import gitmail  # mail handling: not needed by `unpatch`

    out = []
    for patch in patches:
        mail = gitmail.add_filename(patch.mail(), patch.name)
        out.append(mail if mail.endswith(b"\n") else mail + b"\n")
    return out


class _Unverified(Exception):
    """`git am` stopped on a work tree nobody checked for edits; it was aborted (edits kept)."""


def apply_stack(repo: Repo, patches: Sequence[PatchFile], *, clean: bool = True) -> list[tuple[str, PatchFile]]:
    """Commit each patch on top of HEAD (one `git am`, mails on stdin: an encrypted patch's plaintext
    goes nowhere but the repository). On failure HEAD stays at the last patch that applied, the work
    tree is clean, and _Failed names the patch, the file, the hunk and what git said. `clean=False`: the
    work tree may hold edits, so a failure only aborts the am (HEAD and files as before) and raises
    _Unverified."""
    if not patches:
        return []
    before = repo.head()
    mails = stack_mails(patches)
    proc = repo.am(b"".join(mails), committer=APPLIER)
    commits = repo.rev_list(f"{before}..HEAD")
    applied = list(zip(commits, patches, strict=False))
    if proc.returncode == 0 and len(commits) == len(patches):
        return applied
    if not clean:
        repo.am_abort()
        raise _Unverified()
    repo.am_quit()
    repo.reset_hard("HEAD")
    failed = len(commits)
    file, hunk, reason = _diagnose(repo, patches[failed], mails[failed])
    raise _Failed(ApplyFailure(patches[failed], file, hunk, reason, tuple(applied),
                               git_words(proc.stderr + "\n" + proc.stdout)))


# compiled on first use (re caches it): only a failing `git am` needs it
_NOISE = (r"^(hint:|warning: quoted CRLF detected|Applying: |Using index info|"
          r"When you have resolved|If you prefer to skip|To restore the original|"
          r"Falling back to patching|Patch failed at )")


def git_words(output: str, lines: int = 4) -> str:
    """The lines of git's output that say what went wrong (its advice and unrelated warnings dropped)."""
    kept = [line.strip() for line in output.splitlines() if line.strip() and not re.match(_NOISE, line.strip())]
    return " | ".join(dict.fromkeys(kept[-lines:]))


def _diagnose(repo: Repo, patch: PatchFile, mail: bytes) -> tuple[str | None, str | None, str]:
    """Which file and hunk of `patch` fail on the current tree (git apply names them; am in 3-way mode
    only says "conflict")."""
    text = repo.apply_check(mail)
    return diagnose_apply(text, mail)


def diagnose_apply(text: str, mail: bytes) -> tuple[str | None, str | None, str]:
    """File, hunk and reason from `git apply` output for `mail`."""
    failed = re.search(r"^error: patch failed: (.+):(\d+)$", text, re.M)
    if failed:
        file, line = failed.group(1), int(failed.group(2))
        hunk = _hunk_at(mail, file, line)
        return file, hunk, (f"at line {line} the file does not hold the hunk's context (wrong base: the patch "
                            "was made against other upstream code, or an earlier patch changed these lines)")
    known = (
        (r"^error: (.+): already exists in (?:working directory|index)$", "the file already exists"),
        (r"^error: (.+): (?:does not exist in index|No such file or directory)$", "the file does not exist"),
        (r"^error: (.+): does not match index$", "the file differs from the index"),
        (r"^error: (.+): patch does not apply$", "the patch does not apply"),
        (r"^error: (.+): wrong type$", "the path has another type (file, link, folder)"),
    )
    for pattern, reason in known:
        found = re.search(pattern, text, re.M)
        if found:
            return found.group(1), None, reason
    return None, None, git_words(text) or "git apply failed"


def _hunk_at(patch: bytes, file: str, old_start: int) -> str | None:
    current: str | None = None
    number = 0
    for line in patch.decode("utf-8", "surrogateescape").splitlines():
        if line.startswith("diff --git "):
            current, number = None, 0
        elif line.startswith("--- "):
            current = _strip_prefix(line[4:].split("\t")[0], "a/")
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

    def feed(patch: PatchFile) -> str:
        if patch.sealed:
            return f"age -d -i \"${keys.KEY_FILE_ENV}\" {patch.path} | git -C {ws} am --3way --keep-cr"
        return f"git -C {ws} am --3way --keep-cr {patch.path}"

    steps = [
        f"the workspace is {position}",
        f"1. see the conflict: {feed(failure.patch)}",
        f"2. resolve it, `git -C {ws} add` the files, then `git -C {ws} am --continue`",
    ]
    if rest:
        plain = [p for p in rest if not p.sealed]
        if len(plain) == len(rest):
            steps.append(f"3. apply the rest: git -C {ws} am --3way --keep-cr " + " ".join(str(p.path) for p in rest))
        else:
            steps.append("3. apply the rest, one at a time: " + "; ".join(feed(p) for p in rest))
    steps.append(f"{len(steps)}. write the fixed stack back: nox -s export-patches -- --vendor {vendor}")
    return UserError(failure.describe(), where=f"{failure.patch.path} -> {ws}", fix="\n         ".join(steps))
