"""Patch stacks: series files, patch files (git mails, some encrypted) and what a stack touches."""

from __future__ import annotations

import json
import re
from collections import namedtuple
from pathlib import Path

import tools.stages.patches.keys as keys
from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.textfile import read_utf8
from tools.mech.git import Identity

PROJECT = "vllm"
COMMON = "common"
BRANCH = "main"
BASE_REF = "refs/flagrelease/base"
BACKUP_PREFIX = "refs/flagrelease/backup"
# the tip of each stack `git am` made in a workspace (keeps those commits reachable for `patch` to reuse)
APPLIED_PREFIX = "refs/flagrelease/applied"
STAMP_MODULE = "vllm/_flagos_stack.py"
# Commits made by `patch` carry this committer and the patch's own date, so the same stack on the same base
# gives the same commit ids on every machine.
APPLIER = Identity("FlagRelease", "flagrelease@example.invalid")
PATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.patch(?:\.age)?$")
_STRAY_GLOBS = ("*.patch", "*.patch.age", "*.diff", "*.mbox", "*.eml")
_SHOWN = 8  # edits listed in a message before "and N more"


# --- the stack ---------------------------------------------------------------------------------------------


class PatchFile(namedtuple("PatchFile", "part name path sha256")):
    __slots__ = ()
    part: str  # "common" or a vendor
    name: str
    path: Path
    sha256: str  # of the file as it lies in patches/ (the ciphertext for an encrypted patch)

    @property
    def relpath(self) -> str:
        """Relative to patches/ (what build plans and labels record)."""
        return f"{PROJECT}/{self.part}/{self.name}"

    @property
    def sealed(self) -> bool:
        return self.name.endswith(keys.SEALED_SUFFIX)

    def mail(self) -> bytes:
        """The git mail: the file's bytes, decrypted in memory when encrypted (keys.Unreadable without
        the key)."""
        data = self.path.read_bytes()
        return keys.decrypt(self.path, data, self.sha256) if self.sealed else data


class StackInfo(namedtuple("StackInfo", "vendor patches stack_hash short_id touched unreadable removes",
                           defaults=((), False))):
    __slots__ = ()
    vendor: str
    patches: tuple[PatchFile, ...]
    stack_hash: str
    short_id: str
    touched: frozenset[str]  # upstream paths the stack adds, changes, renames or removes (readable patches)
    unreadable: tuple[tuple[PatchFile, str], ...]  # encrypted patches without a key, and why
    removes: bool  # some patch deletes or renames a file

    def unreadable_error(self, action: str) -> UserError:
        names = "\n  ".join(f"{p.relpath}: {why}" for p, why in self.unreadable)
        return UserError(f"cannot {action}: {len(self.unreadable)} encrypted patch(es) cannot be read",
                         where=names, fix=f"give the key: export {keys.KEY_FILE_ENV}=/path/outside/the/repo/key.txt "
                                          f"(an age identity file), or {keys.KEY_ENV}=AGE-SECRET-KEY-1...")


class Series(namedtuple("Series", "path header names")):
    __slots__ = ()
    path: Path
    header: str  # leading comment and blank lines, kept verbatim when export rewrites the file
    names: tuple[str, ...]


def stack_root() -> Path:
    return paths.patches_dir() / PROJECT


def check_vendor(vendor: str) -> str:
    if vendor not in vendors.names():
        raise UserError(f"unknown vendor {vendor!r}", where="--vendor",
                        fix=f"use one of {', '.join(vendors.names())}")
    return vendor


def read_series(part: str) -> Series:
    folder = stack_root() / part
    path = folder / "series"
    if not path.is_file():
        strays = sorted(p.name for g in _STRAY_GLOBS for p in folder.glob(g)) if folder.is_dir() else []
        if strays:
            raise UserError(f"{folder} holds patches but no series file", where=str(path),
                            fix=f"list the patches in order in {path} (one file name a line)")
        return Series(path, "", ())
    header: list[str] = []
    names: list[str] = []
    text = read_utf8(path, what="series file", fix="save it as UTF-8: one patch file name a line (ASCII names)")
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        entry = line.strip()
        if not names and (not entry or entry.startswith("#")):
            header.append(line)
            continue
        if not entry or entry.startswith("#"):
            continue
        where = f"{path}:{number}"
        if not PATCH_NAME.match(entry):
            raise UserError(f"bad series entry {entry!r}", where=where,
                            fix="one patch file name a line (NAME.patch, or NAME.patch.age when encrypted), "
                                "no folders")
        if entry in names:
            raise UserError(f"{entry} is listed twice", where=where, fix="remove the duplicate line")
        if not (folder / entry).is_file():
            raise UserError(f"series names {entry}, which does not exist", where=where,
                            fix=f"restore {folder / entry} or remove the line")
        names.append(entry)
    return Series(path, "".join(header), tuple(names))


def stray_patches(part: str) -> list[str]:
    """Patch files in a part's folder that its series does not list (every command ignores them)."""
    folder = stack_root() / part
    if not folder.is_dir():
        return []
    listed = set(read_series(part).names)
    return sorted({p.name for g in _STRAY_GLOBS for p in folder.glob(g)} - listed)


def stray_message(part: str, name: str) -> str:
    series = stack_root() / part / "series"
    return (f"{PROJECT}/{part}/{name} is not listed in {series}, so no command applies it: add it to the "
            f"series (in order) or delete it")


def check_mail(patch: PatchFile, data: bytes) -> None:
    """A patch file must be one git mail with a diff: say precisely what it is instead."""
    from tools.mech import gitmail

    found = gitmail.shape(data)
    where = f"{patch.path}:{found.line}"
    importer = f"nox -s import-patches -- --vendor {patch.part} DIR --author 'Name <mail>'"
    if found.kind == "none":
        raise UserError(f"{patch.relpath} is not a patch: {found.detail}", where=where,
                        fix=f"remove it from {patch.path.parent / 'series'}, or replace it with the patch meant")
    if found.kind == "diff":
        raise UserError(f"{patch.relpath} is not a git mail: {found.detail}", where=where,
                        fix=f"turn plain diffs into mails with an author: put them in a folder and run {importer}")
    if found.kind == "empty-mail":
        raise UserError(f"{patch.relpath} is an empty patch: {found.detail}", where=where,
                        fix=f"remove it from {patch.path.parent / 'series'}, or add the change it should carry")
    if gitmail.filename_of(data) is not None:
        raise UserError(f"{patch.relpath} carries a Patch-Filename line, which only workspace commits have",
                        where=str(patch.path), fix=f"rewrite it with `export-patches --vendor {patch.part}` "
                                                   "or `import-patches`")


def stack_info(vendor: str) -> StackInfo:
    """The ordered stack for `vendor` and its identity: sha256 over "vendor" and each patch's sha256 and
    path in order (so content, order and vendor all count), short id = first 12 hex digits. Encrypted
    patches count by their ciphertext; without the key they are listed in `unreadable`."""
    try:  # CPython's own SHA-256: hashlib would load OpenSSL first, 2-3 ms of `patch`'s start for a few KB
        from _sha256 import sha256
    except ImportError:  # another Python (3.12 calls it _sha2): the same digest through hashlib
        from hashlib import sha256

    check_vendor(vendor)
    files: list[PatchFile] = []
    for part in (COMMON, vendor):
        series = read_series(part)
        for name in series.names:
            path = series.path.parent / name
            files.append(PatchFile(part, name, path, sha256(path.read_bytes()).hexdigest()))
    digest = sha256(f"flagrelease-stack/1\nvendor {vendor}\n".encode())
    touched: set[str] = set()
    unreadable: list[tuple[PatchFile, str]] = []
    removes = False
    for patch in files:
        digest.update(f"{patch.sha256}  {patch.relpath}\n".encode())
        try:
            data = patch.mail()
        except keys.Unreadable as why:
            unreadable.append((patch, str(why)))
            continue
        check_mail(patch, data)
        touched |= touched_paths(data)
        removes = removes or b"\ndeleted file mode " in data or b"\nrename from " in data
    if STAMP_MODULE in touched:
        raise UserError(f"the {vendor} stack touches {STAMP_MODULE}, which `patch` generates",
                        where=", ".join(p.relpath for p in files),
                        fix="the stack's identity cannot live inside the stack: drop that change")
    stack_hash = digest.hexdigest()
    return StackInfo(vendor, tuple(files), stack_hash, stack_hash[:12], frozenset(touched), tuple(unreadable),
                     removes)


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
    """The commit subject a mail carries (folded header lines joined, "[PATCH n/m]" dropped)."""
    from tools.mech import gitmail

    return gitmail.strip_subject_prefix(gitmail.subject_of(patch))


