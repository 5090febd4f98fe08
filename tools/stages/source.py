"""The pristine upstream tree, materialised once into the cache.

From git at the pinned commit when the remote answers (short timeout), else from the sdist checked
against its sha256 before anything is unpacked. Each tree comes with a bare git repository holding one
base commit of exactly those files; vendor workspaces are cloned from it, so making one costs a checkout
and no import. A marker file, written last, makes every later fetch free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

from tools.core import paths
from tools.core.errors import UserError
from tools.mech import git
from tools.mech.console import info

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any, Literal

    from tools.core.lock import Lock, Upstream

    Origin = Literal["git", "sdist"]
MODES = ("auto", "git", "sdist")

# The base commit of an sdist import is a pure function of the files: fixed author, committer and date.
BASE_AUTHOR = git.Identity("FlagRelease", "flagrelease@example.invalid", "2000-01-01T00:00:00+0000")
PRISTINE_BRANCH = "refs/heads/pristine"
_MARKER_VERSION = 1


class PristineTree(namedtuple("PristineTree", "name version origin pin path repo commit files")):
    __slots__ = ()
    name: str
    version: str
    origin: Origin
    pin: str  # the upstream commit (git) or the sdist sha256
    path: Path  # the files, exactly as upstream ships them
    repo: Path  # bare git dir whose PRISTINE_BRANCH is the base commit of `path`
    commit: str
    files: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.origin} {self.pin[:12]}, base {self.commit[:12]})"


def src_dir() -> Path:
    return paths.cache_dir() / "src"


def downloads_dir() -> Path:
    return paths.cache_dir() / "downloads"


def _pin(up: Upstream, origin: Origin) -> dict[str, str]:
    """What a cache entry must have been made from: origin, URL and the full pin (commit or sha256)."""
    if origin == "git":
        return {"origin": origin, "url": up.git_url, "pin": up.git_commit}
    return {"origin": origin, "url": up.sdist_url, "pin": up.sdist_sha256}


def _stem(up: Upstream, origin: Origin) -> str:
    # the folder name is short; the entry is trusted only when its stored full pin and URL match (_load_marker)
    return f"{up.name}-{up.version}-{_pin(up, origin)['pin'][:12]}"


def cached_source() -> PristineTree | None:
    """The pristine tree the lock names when it is already in the cache, found without validating the
    whole lock (no pydantic: the quick commands start in milliseconds). None when anything is missing,
    odd or not cached: then fetch_source(load_lock().lock) does the full job and reports errors."""
    from tools.core import tomlfile

    mode = os.environ.get("FLAGREL_SOURCE", "auto")
    try:
        lock = paths.lock_file()
        up = tomlfile.loads(lock.read_text(encoding="utf-8"), lock)["upstream"]
        fields = {key: str(up[key]) for key in ("name", "version", "git_commit", "sdist_sha256", "git_url",
                                                "sdist_url")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pins = {"git": fields["git_commit"], "sdist": fields["sdist_sha256"]}
    origins: tuple[Origin, ...] = {"auto": ("git", "sdist"), "git": ("git",), "sdist": ("sdist",)}.get(mode, ())
    for origin in origins:
        if not re.fullmatch(r"[0-9a-f]{7,64}", pins[origin]):
            return None
        # the entry counts only when it was made from this full pin and URL, as in fetch_source
        want = {"origin": origin, "url": fields["git_url" if origin == "git" else "sdist_url"], "pin": pins[origin]}
        tree = _load_marker(f"{fields['name']}-{fields['version']}-{pins[origin][:12]}", want, say=False)
        if tree:
            return tree
    return None


def _marker(stem: str) -> Path:
    return src_dir() / f"{stem}.json"


def _pin_file(stem: str) -> Path:
    """The full pin and URL beside the marker (a separate file: the marker's format is shared with older
    checkouts using the same cache, which refuse unknown marker keys)."""
    return src_dir() / f"{stem}.pin.json"


def _load_marker(stem: str, want: dict[str, str], *, say: bool = True) -> PristineTree | None:
    marker = _marker(stem)
    try:
        data = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.pop("marker_version", None) != _MARKER_VERSION:
        return None
    try:
        # Paths are derived, not stored: a cache restored elsewhere (CI) stays valid.
        tree = PristineTree(**data, path=src_dir() / stem, repo=src_dir() / f"{stem}.git")
    except TypeError:
        return None
    if not tree.path.is_dir() or not (tree.repo / "HEAD").is_file():
        return None
    if (tree.origin, tree.pin) != (want["origin"], want["pin"]):
        if say:
            info(f"  cache entry {stem} was made from another pin ({tree.pin[:16]}...): not the lock's, not used")
        return None
    try:
        stored = json.loads(_pin_file(stem).read_text())
    except FileNotFoundError:
        # an entry made before pin files existed: its full pin matched above; record the URL from now on
        _write_pin(stem, want)
        return tree
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if stored != want:
        if say:
            info(f"  cache entry {stem} was made from another URL ({stored.get('url')}): not the lock's, not used")
        return None
    return tree


def _write_pin(stem: str, want: dict[str, str]) -> None:
    tmp = _pin_file(stem).with_suffix(".tmp")
    tmp.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n")
    tmp.replace(_pin_file(stem))


def _write_marker(stem: str, tree: PristineTree, want: dict[str, str]) -> None:
    _write_pin(stem, want)
    data = {**tree._asdict(), "marker_version": _MARKER_VERSION}
    del data["path"], data["repo"]
    tmp = _marker(stem).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(_marker(stem))


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One materialisation at a time per cache (parallel CI jobs, two terminals)."""
    src_dir().mkdir(parents=True, exist_ok=True)
    with open(src_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_source(lock: Lock, *, mode: str | None = None, git_timeout: float | None = None) -> PristineTree:
    """Materialise the pristine upstream tree (once) and return where it lies."""
    mode = mode or os.environ.get("FLAGREL_SOURCE", "auto")
    if mode not in MODES:
        raise UserError(f"unknown source mode {mode!r}", where="--from / FLAGREL_SOURCE",
                        fix=f"use one of {', '.join(MODES)}")
    timeout = git_timeout if git_timeout is not None else float(os.environ.get("FLAGREL_GIT_TIMEOUT", "20"))
    up = lock.upstream
    origins: tuple[Origin, ...] = {"auto": ("git", "sdist"), "git": ("git",), "sdist": ("sdist",)}[mode]
    for origin in origins:
        tree = _load_marker(_stem(up, origin), _pin(up, origin))
        if tree:
            info(f"  pristine source: {tree.label} (cached) at {tree.path}")
            return tree
    with _cache_lock():
        for origin in origins:  # another process may have finished while we waited
            tree = _load_marker(_stem(up, origin), _pin(up, origin), say=False)
            if tree:
                return tree
        if "git" in origins:
            try:
                return _materialise_git(up, timeout)
            except git.GitError as err:
                if mode == "git":
                    raise UserError(
                        f"cannot fetch {up.git_url} at {up.git_commit}: {err.tail(2)}",
                        where="versions.lock -> upstream.git_url / git_commit",
                        fix="check network access to the git remote, or use the sdist: --from sdist",
                    ) from err
                info(f"  git remote unavailable ({err.tail(1)}); falling back to the sdist")
        return _materialise_sdist(up)


# --- git ------------------------------------------------------------------------------------------------


def _materialise_git(up: Upstream, timeout: float) -> PristineTree:
    import shutil  # the cold path only: the warm commands skip these imports
    import tempfile

    stem = _stem(up, "git")
    work = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=src_dir()))
    try:
        repo = git.init(work / "repo.git", bare=True)
        info(f"  fetching {up.git_url} at {up.git_commit[:12]} (timeout {timeout:.0f}s)")
        # servers fetch full SHAs only: an abbreviated pin is reached through the tag, then checked
        want = up.git_commit if len(up.git_commit) == 40 else f"refs/tags/{up.git_tag}"
        repo.run("fetch", "--quiet", "--depth=1", "--no-tags", up.git_url, want, timeout=timeout)
        got = repo.rev_parse("FETCH_HEAD^{commit}")
        if not got.startswith(up.git_commit):
            raise git.GitError(["fetch"], 1, "", f"remote gave {got}, not the pinned {up.git_commit}")
        repo.update_ref(PRISTINE_BRANCH, got)
        repo.run("symbolic-ref", "HEAD", PRISTINE_BRANCH)
        files = work / "tree"
        files.mkdir()
        env = {"GIT_INDEX_FILE": str(work / "index")}
        checkout = git.Repo(repo.git_dir, files)
        checkout.run("read-tree", got, env=env)
        checkout.run("checkout-index", "--all", "--force", env=env)
        (work / "index").unlink()
        return _publish(stem, up, "git", up.git_commit, files, repo.git_dir, got)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- sdist ----------------------------------------------------------------------------------------------


def unpack_sdist(archive: Path, top: str, dest: Path) -> int:
    """Unpack `archive`, whose single top folder must be `top`, so that its content becomes `dest`.
    Returns the number of files.

    The 'data' filter refuses absolute paths, links leaving the tree and device files, drops the
    archive's owners (files belong to whoever unpacks, also as root) and group/other write bits.
    One streaming pass: a random-access tarfile would decompress the archive twice.
    """
    import shutil
    import tarfile  # only when unpacking
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    files = 0

    def checked(member: Any, path: str) -> Any:
        nonlocal files
        if member.name.split("/", 1)[0] != top:
            raise UserError(f"{archive.name} does not hold one folder {top}/ (found {member.name})",
                            where=str(archive), fix="check versions.lock -> upstream.sdist_url")
        files += member.isfile()
        return tarfile.data_filter(member, path)

    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            try:
                tar.extractall(work, filter=checked)
            except tarfile.FilterError as exc:
                raise UserError(f"{archive.name} holds an unsafe member: {exc}", where=str(archive),
                                fix="do not use this archive; check the pin") from exc
        (work / top).replace(dest)
        return files
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_sdist_commit(files: Path, up: Upstream) -> None:
    """The sdist records the commit it was cut from; it must be the one the lock pins."""
    version_file = files / up.name / "_version.py"
    if not version_file.is_file():
        return
    found = re.search(r"commit_id = '?g?([0-9a-f]+)", version_file.read_text(encoding="utf-8"))
    if found and not (up.git_commit.startswith(found.group(1)) or found.group(1).startswith(up.git_commit)):
        raise UserError(f"the sdist was cut from commit {found.group(1)}, the lock pins {up.git_commit}",
                        where=f"versions.lock -> upstream.git_commit ({version_file.name})",
                        fix="pin the commit and the sdist of the same release")


def _materialise_sdist(up: Upstream) -> PristineTree:
    import shutil  # the cold path only: the warm commands skip these imports
    import tempfile

    stem = _stem(up, "sdist")
    filename = up.sdist_url.rsplit("/", 1)[-1]
    from tools.mech.download import download_verified  # the cold path only (hashlib)

    archive = download_verified(up.sdist_url, downloads_dir() / filename, up.sdist_sha256)
    work = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=src_dir()))
    try:
        files = work / "tree"
        count = unpack_sdist(archive, f"{up.name}-{up.version}", files)
        _check_sdist_commit(files, up)
        info(f"  unpacked {count} files; importing them as the base commit")
        message = (
            f"{up.name} {up.version} (pristine sdist)\n\n"
            f"Unpacked from {up.sdist_url}\n"
            f"sha256 {up.sdist_sha256}; upstream tag {up.git_tag}, commit {up.git_commit}.\n"
        )
        commit = import_tree(files, work / "repo.git", message)
        return _publish(stem, up, "sdist", up.sdist_sha256, files, work / "repo.git", commit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def import_tree(files: Path, repo_dir: Path, message: str) -> str:
    """A new bare repository at `repo_dir` whose PRISTINE_BRANCH is one commit of exactly `files`.
    The commit id depends only on the files and `message` (fixed author, committer and date)."""
    from tools.mech.gitimport import import_files

    repo = git.init(repo_dir, bare=True)
    # Every file, also those upstream's .gitignore lists (the sdist ships vllm/_version.py, egg-info).
    commit = import_files(repo, files, ref=PRISTINE_BRANCH, message=message, author=BASE_AUTHOR)
    repo.run("symbolic-ref", "HEAD", PRISTINE_BRANCH)
    return commit


def _publish(stem: str, up: Upstream, origin: Origin, pin: str, files: Path, repo: Path,
             commit: str) -> PristineTree:
    import shutil

    final_files = src_dir() / stem
    final_repo = src_dir() / f"{stem}.git"
    for stale in (final_files, final_repo):
        if stale.exists():  # a half-made tree from an interrupted run: no marker was written
            shutil.rmtree(stale)
    files.replace(final_files)
    repo.replace(final_repo)
    count = sum(len(names) for _, _, names in os.walk(final_files))
    tree = PristineTree(name=up.name, version=up.version, origin=origin, pin=pin, path=final_files,
                        repo=final_repo, commit=commit, files=count)
    _write_marker(stem, tree, _pin(up, origin))
    info(f"  pristine source: {tree.label} at {final_files}")
    return tree
