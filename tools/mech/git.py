"""A thin layer over the git command line. It knows git, not this project: no vendors, no stacks.

Every call runs with the user's global and system git config switched off and a few settings pinned,
so that what we write (base commits, format-patch output) is byte-identical on every machine whatever
the user's ~/.gitconfig says (diff.noprefix, format.signature, core.autocrlf, ...).
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools.mech.proc import Finished, TimedOut
from tools.mech.proc import run as proc_run

# Pinned for every invocation: options that change bytes on disk or in patches.
_PINNED_CONFIG = (
    "core.autocrlf=false",
    "core.safecrlf=false",
    "core.quotepath=true",
    "core.untrackedCache=true",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "diff.renames=true",
    "diff.algorithm=myers",
    "diff.context=3",
    "diff.interHunkContext=0",
    "diff.suppressBlankEmpty=false",
    "format.numbered=false",
    "format.signature=",
    "am.keepcr=true",
    "am.threeWay=false",
    "apply.whitespace=nowarn",
    "gc.auto=0",
    "fastimport.unpackLimit=0",
    "advice.detachedHead=false",
    "init.defaultBranch=main",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "log.showSignature=false",
)

# format-patch options whose output does not depend on the machine, the date or the git checkout state:
# no From <sha> (zero commit), no signature with the git version, no diffstat (its width varies), full
# blob ids (abbreviation length grows with the object database), "[PATCH]" without n/m (inserting a patch
# does not rewrite every other file), binary diffs, rename detection, fixed context and algorithm.
FORMAT_PATCH_OPTIONS = (
    "--no-signature",
    "--zero-commit",
    "--no-numbered",
    "--no-stat",
    "--full-index",
    "--binary",
    "--find-renames=50%",
    "--no-find-copies",
    "--diff-algorithm=myers",
    "--unified=3",
    "--no-color",
    "--no-ext-diff",
    "--no-relative",
    "--no-thread",
    "--no-cover-letter",
    "--no-attach",
    "--no-encode-email-headers",
    "--filename-max-length=64",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)

# Attributes that would make the work tree differ from the committed bytes (EOL conversion, filters);
# upstream trees may ship .gitattributes, and a pristine tree must check out exactly as it was unpacked.
NEUTRAL_ATTRIBUTES = "* -text -eol -filter -ident -working-tree-encoding\n"


class Identity(namedtuple("Identity", "name email date", defaults=(None,))):
    __slots__ = ()
    name: str
    email: str
    date: str | None  # any format git accepts; None: now


class GitError(Exception):
    """A git command failed. The policy layer turns it into a user-facing error."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"git {' '.join(self.args_)} failed ({returncode}): {self.tail()}")

    def tail(self, lines: int = 6) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"

    def said(self) -> str:
        """git's own verdict: its fatal:/error: lines (a long hint after them, such as the one about a
        left-over index.lock, would push them out of tail()), else the tail."""
        verdict = [line for line in (self.stderr or self.stdout).splitlines() if line.startswith(("fatal:", "error:"))]
        return " | ".join(verdict) if verdict else self.tail()

    def fix(self) -> str:
        """What to do, by what went wrong: git missing, too slow, or git's own refusal."""
        if self.returncode == 127:
            return "install git (2.39 or newer) and put it on PATH, then run the command again"
        if self.returncode == 124:
            return "git's words say how long it was given; check the network or proxy, or allow it more time"
        return ("git's words say why; if another git process works in that repository let it finish (a "
                ".git/index.lock left by a crashed one can be removed), then run the command again")

    def subcommand(self) -> str:
        before = ["", *self.args_]  # the option each argument follows ("-C path", "-c key=value")
        return next((a for b, a in zip(before, self.args_, strict=False) if not a.startswith("-")
                     and b not in ("-C", "-c")), "")

    def repository(self) -> str | None:
        """The work tree (or git dir, or -C folder) the command ran in, from its own arguments."""
        for flag in ("--work-tree=", "--git-dir="):
            if found := next((a[len(flag):] for a in self.args_ if a.startswith(flag)), None):
                return found
        return next((b for a, b in zip(self.args_, self.args_[1:], strict=False) if a == "-C"), None)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GIT_")]:
        del env[key]
    env.update({
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ATTR_NOSYSTEM": "1",
        "LC_ALL": "C",
        "LANG": "C",
        # Without the user's config git has no identity, and even `am --abort` and reflog updates need
        # one; commands that record authorship pass their own (identity_env).
        "GIT_AUTHOR_NAME": "FlagRelease",
        "GIT_AUTHOR_EMAIL": "flagrelease@example.invalid",
        "GIT_COMMITTER_NAME": "FlagRelease",
        "GIT_COMMITTER_EMAIL": "flagrelease@example.invalid",
    })
    if extra:
        env.update(extra)
    return env


def identity_env(author: Identity, committer: Identity | None = None) -> dict[str, str]:
    committer = committer or author
    env = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": committer.name,
        "GIT_COMMITTER_EMAIL": committer.email,
    }
    if author.date:
        env["GIT_AUTHOR_DATE"] = author.date
    if committer.date:
        env["GIT_COMMITTER_DATE"] = committer.date
    return env


def command(args: Sequence[str]) -> list[str]:
    """The git command line for `args`, with the pinned settings."""
    cmd = ["git"]
    for item in _PINNED_CONFIG:
        cmd += ["-c", item]
    return cmd + list(args)


def git(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, check: bool = True,
        timeout: float | None = None, input: str | None = None) -> Finished:
    """git with text out (stdout and stderr as str, newlines universal as in text mode), text in."""
    data = None if input is None else input.encode("utf-8", "surrogateescape")
    proc = git_bytes(args, cwd=cwd, env=env, check=check, input=data, timeout=timeout)
    return proc._replace(stdout=_text(proc.stdout, "surrogateescape"), stderr=_text(proc.stderr, "surrogateescape"))


def git_bytes(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
              check: bool = True, input: bytes | None = None, timeout: float | None = None) -> Finished:
    """`git` with bytes in and out: patches hold CRLF and binary data that text mode would translate."""
    # `-C cwd` is git's own chdir, done first: the same as running it there (posix_spawn has no cwd); an
    # error names that folder through it
    args = [*(["-C", str(cwd)] if cwd is not None else []), *args]
    try:
        proc = proc_run(command(args), env=base_env(env), input=input, timeout=timeout)
    except TimedOut as exc:
        raise GitError(args, 124, "", f"timed out after {timeout}s") from exc
    except FileNotFoundError as exc:
        raise GitError(args, 127, "", "git is not installed (not found on PATH)") from exc
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, _text(proc.stdout), _text(proc.stderr))
    return proc


def _text(data: bytes, errors: str = "replace") -> str:
    return data.decode("utf-8", errors).replace("\r\n", "\n").replace("\r", "\n")


class StatusEntry(namedtuple("StatusEntry", "code path orig_path", defaults=(None,))):
    __slots__ = ()
    code: str  # two-letter porcelain v1 code: " M", "A ", "??", "R ", ...
    path: str
    orig_path: str | None

    def __str__(self) -> str:
        return f"{self.code} {self.orig_path} -> {self.path}" if self.orig_path else f"{self.code} {self.path}"


class Repo:
    """One repository: a work tree with .git, or a bare git dir (work_tree None)."""

    def __init__(self, git_dir: Path, work_tree: Path | None = None) -> None:
        self.git_dir = git_dir
        self.work_tree = work_tree

    @classmethod
    def at(cls, work_tree: Path) -> Repo:
        return cls(work_tree / ".git", work_tree)

    def run(self, *args: str, env: Mapping[str, str] | None = None, check: bool = True,
            timeout: float | None = None, input: str | None = None) -> Finished:
        prefix = [f"--git-dir={self.git_dir}"]
        if self.work_tree is not None:
            prefix.append(f"--work-tree={self.work_tree}")
        return git(prefix + list(args), cwd=self.work_tree or self.git_dir, env=env, check=check,
                   timeout=timeout, input=input)

    def out(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return self.run(*args, env=env).stdout.strip()

    def run_bytes(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None,
                  check: bool = True) -> Finished:
        prefix = [f"--git-dir={self.git_dir}"]
        if self.work_tree is not None:
            prefix.append(f"--work-tree={self.work_tree}")
        return git_bytes(prefix + list(args), cwd=self.work_tree or self.git_dir, env=env, check=check,
                         input=input)

    # --- objects and refs ---------------------------------------------------------------------------

    def rev_parse(self, rev: str) -> str | None:
        proc = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.strip() or None

    def ref(self, name: str) -> str | None:
        """A full ref name's commit, read from the ref files (no process); rev-parse when it is packed or
        symbolic beyond HEAD."""
        if name == "HEAD":
            try:
                text = (self.git_dir / "HEAD").read_text().strip()
            except OSError:
                return self.rev_parse("HEAD")
            if not text.startswith("ref: "):
                return text if re.fullmatch(r"[0-9a-f]{40}", text) else self.rev_parse("HEAD")
            name = text[5:]
        try:
            text = (self.git_dir / name).read_text().strip()
        except OSError:
            return self.rev_parse(name)
        return text if re.fullmatch(r"[0-9a-f]{40}", text) else self.rev_parse(name)

    def head(self) -> str | None:
        return self.ref("HEAD")

    def current_branch(self) -> str | None:
        try:
            text = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            return None
        return text[len("ref: refs/heads/"):] if text.startswith("ref: refs/heads/") else None

    def update_ref(self, ref: str, sha: str, message: str = "flagrelease") -> None:
        self.run("update-ref", "-m", message, ref, sha)

    def refs(self, prefix: str) -> list[str]:
        return self.out("for-each-ref", "--format=%(refname)", prefix).splitlines()

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self.run("merge-base", "--is-ancestor", ancestor, descendant, check=False).returncode == 0

    def rev_list(self, rev_range: str, *extra: str) -> list[str]:
        """Commits in `rev_range`, oldest first."""
        return self.out("rev-list", "--reverse", *extra, rev_range).split()

    def merges_in(self, rev_range: str) -> list[str]:
        return self.out("rev-list", "--min-parents=2", rev_range).split()

    def changed_paths(self, rev_range: str, *paths: str, diff_filter: str | None = None) -> list[str]:
        """Paths that differ across `rev_range` (limited to `paths`, and to a --diff-filter, when given)."""
        extra = [f"--diff-filter={diff_filter}"] if diff_filter else []
        return self.out("diff", "--name-only", "--no-renames", *extra, rev_range, "--", *paths).splitlines()

    def subject(self, rev: str) -> str:
        return self.out("log", "-1", "--format=%s", rev)

    def commit_tree(self, tree: str, parents: Sequence[str], message: str, author: Identity,
                    committer: Identity | None = None) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self.run(*args, env=identity_env(author, committer), input=message).stdout.strip()

    def snapshot(self, work_tree: Path, *, parents: Sequence[str], message: str, author: Identity,
                 index_file: Path, seed_index: Path | None = None, include_ignored: bool = False,
                 also: Sequence[str] = ()) -> str:
        """Commit every file under `work_tree` through a private index, leaving the repository's own
        index alone. `seed_index` (a copy of the real index) keeps git from re-hashing unchanged files;
        `also` names ignored paths to include anyway."""
        env = {"GIT_INDEX_FILE": str(index_file)}
        other = Repo(self.git_dir, work_tree)
        index_file.unlink(missing_ok=True)
        try:
            if seed_index is not None and seed_index.exists():
                import shutil

                shutil.copyfile(seed_index, index_file)
            other.run("add", "--all", *(["--force"] if include_ignored else []), "--", ".", env=env)
            if also:
                other.run("add", "--force", "--", *also, env=env)
            tree = other.out("write-tree", env=env)
        finally:
            index_file.unlink(missing_ok=True)
        return self.commit_tree(tree, parents, message, author)

    def tree_of(self, rev: str) -> str:
        return self.out("rev-parse", f"{rev}^{{tree}}")

    # --- work tree ----------------------------------------------------------------------------------

    def status(self, *, untracked: bool = True) -> list[StatusEntry]:
        """Changed and (with `untracked`) untracked files, each untracked file listed. A clean tree costs
        one quick pass: untracked folders are first found whole (the untracked cache answers that mode)
        and listed file by file only when there are some. It does not write the index (status would, to
        keep what it refreshed, 3-4 ms after a move): the move that follows a status writes it anyway."""
        args = ["--no-optional-locks", "status", "--porcelain=v1", "-z", "--no-renames", "--ignore-submodules=none"]
        entries = self._status(*args, "--untracked-files=normal" if untracked else "--untracked-files=no")
        if untracked and any(e.code == "??" and e.path.endswith("/") for e in entries):
            entries = self._status(*args, "--untracked-files=all")
        return entries

    def _status(self, *args: str) -> list[StatusEntry]:
        raw = self.run(*args).stdout
        return [StatusEntry(item[:2], item[3:]) for item in raw.split("\0") if item]

    def operation_in_progress(self) -> str | None:
        """The name of an unfinished am/rebase/merge/cherry-pick/revert, if any."""
        markers = {
            "rebase-apply": "git am (or rebase)", "rebase-merge": "git rebase", "MERGE_HEAD": "git merge",
            "CHERRY_PICK_HEAD": "git cherry-pick", "REVERT_HEAD": "git revert",
        }
        for name, what in markers.items():
            if (self.git_dir / name).exists():
                return what
        return None

    def checkout_branch(self, branch: str, rev: str) -> None:
        """Point `branch` at `rev` and make the work tree match it, discarding tracked changes."""
        self.run("checkout", "--quiet", "--force", "-B", branch, rev)

    def fast_forward_tree(self, rev: str, message: str = "flagrelease") -> None:
        """Move the current branch from HEAD to `rev`, writing only the files that differ between the two
        (`reset --keep`: a two-way merge, no full refresh; one git process where read-tree + update-ref
        took two). A file that differs and holds an edit makes it refuse, changing nothing (GitError)."""
        if self.current_branch() is None:
            raise GitError(["reset"], 1, "", "HEAD is detached")
        self.run("reset", "--quiet", "--keep", rev, env={"GIT_REFLOG_ACTION": message})

    def reset_hard(self, rev: str) -> None:
        self.run("reset", "--quiet", "--hard", rev)

    def clean_untracked(self) -> None:
        """Remove untracked files and directories, leaving ignored ones (build outputs, caches) alone."""
        self.run("clean", "--quiet", "--force", "-d")

    # --- patches ------------------------------------------------------------------------------------

    def am(self, mbox: bytes | Sequence[Path], *, committer: Identity | None = None,
           three_way: bool = True) -> Finished:
        """Apply a stream of mails (an mbox, on stdin: nothing is written beside the repository) as
        commits. CRs are kept (CRLF files), the committer date is the author date so that the same patches
        on the same base give the same commit ids. Returns the process, stdout and stderr as text (git
        says why it stopped on either); check it."""
        args = ["am", "--quiet", "--keep-cr", "--committer-date-is-author-date", "--no-gpg-sign"]
        args.append("--3way" if three_way else "--no-3way")
        env = identity_env(committer) if committer else None
        files = [] if isinstance(mbox, bytes) else [str(p) for p in mbox]
        data = mbox if isinstance(mbox, bytes) else None
        proc = self.run_bytes(*args, *files, input=data, env=env, check=False)
        return proc._replace(stdout=_text(proc.stdout), stderr=_text(proc.stderr))

    def am_abort(self) -> None:
        self.run("am", "--abort", check=False)

    def am_quit(self) -> None:
        self.run("am", "--quit", check=False)

    def apply_check(self, patch: bytes) -> str:
        """Would `patch` apply to the work tree? git's own words (verbose: names the hunk that does not),
        stderr then stdout; empty when it applies."""
        proc = self.run_bytes("apply", "--check", "--verbose", input=patch, check=False)
        if proc.returncode == 0:
            return ""
        return (proc.stderr + proc.stdout).decode("utf-8", "replace")

    def format_patch(self, rev_range: str, out_dir: Path, *, start_number: int = 1) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = self.run("format-patch", *FORMAT_PATCH_OPTIONS, f"--start-number={start_number}",
                        f"--output-directory={out_dir}", rev_range)
        return [Path(line) for line in proc.stdout.splitlines() if line.strip()]

    def format_patch_stream(self, rev_range: str) -> bytes:
        """`git format-patch --stdout` of `rev_range` with the pinned options: the mails, in memory."""
        return self.run_bytes("format-patch", *FORMAT_PATCH_OPTIONS, "--stdout", rev_range).stdout

    # --- set-up -------------------------------------------------------------------------------------

    def write_info(self, name: str, text: str) -> None:
        info = self.git_dir / "info"
        info.mkdir(parents=True, exist_ok=True)
        path = info / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def init(path: Path, *, bare: bool = False) -> Repo:
    path.mkdir(parents=True, exist_ok=True)
    git(["init", "--quiet", *(["--bare"] if bare else []), str(path)])
    repo = Repo(path, None) if bare else Repo.at(path)
    repo.write_info("attributes", NEUTRAL_ATTRIBUTES)
    return repo


def clone_local(source_git_dir: Path, dest: Path, *, shared: bool = False) -> Repo:
    """A new repository at `dest` holding `source_git_dir`'s objects without a network round trip:
    hard links (independent of the source afterwards) or, with `shared`, alternates (cheapest; the
    source must outlive the clone). Nothing is checked out."""
    mode = "--shared" if shared else "--local"
    git(["clone", "--quiet", mode, "--no-checkout", str(source_git_dir), str(dest)])
    repo = Repo.at(dest)
    repo.write_info("attributes", NEUTRAL_ATTRIBUTES)
    return repo
