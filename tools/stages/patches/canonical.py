"""The canonical form of a stack part: what export-patches (and import-patches) write to patches/.

Each commit becomes `git format-patch` output with the pinned options (tools/mech/git.py), without the
`Patch-Filename:` line that carried its file name through the workspace. A patch keeps its file name; a new
commit gets one from its subject (no number: inserting a patch renames nothing else). A name ending in
.patch.age is written encrypted; an encrypted file whose plaintext did not change keeps its bytes (age
output is random, so re-encrypting would rewrite it on every export).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tools.stages.patches.keys as keys
from tools.core.errors import UserError
from tools.mech import gitmail
from tools.mech.git import Repo
from tools.stages.patches.stack import PATCH_NAME, PROJECT, Series, read_series, stack_root


@dataclass(frozen=True)
class Exported:
    name: str
    mail: bytes  # canonical plaintext
    subject: str


def export_mails(repo: Repo, commits: Sequence[str], taken: set[str] | None = None) -> list[Exported]:
    """The commits (a contiguous run, oldest first) as canonical mails with their file names."""
    if not commits:
        return []
    mails = gitmail.split_stream(repo.format_patch_stream(f"{commits[0]}^..{commits[-1]}"))
    if len(mails) != len(commits):
        raise UserError(f"format-patch gave {len(mails)} mails for {len(commits)} commits",
                        where=str(repo.work_tree or repo.git_dir),
                        fix="a commit message may hold a line `From 000... Mon Sep 17 00:00:00 2001`: reword it")
    names: list[str | None] = []
    used = set(taken or ())
    for mail in mails:  # names carried by the commits first, so that a new commit never takes one
        name = gitmail.filename_of(mail)
        name = name if name and PATCH_NAME.match(name) and name not in used else None
        if name:
            used.add(name)
        names.append(name)
    out = []
    for mail, name in zip(mails, names, strict=True):
        subject = gitmail.strip_subject_prefix(gitmail.subject_of(mail))
        if name is None:
            stem = gitmail.sanitized_subject(subject)
            name, suffix = f"{stem}.patch", 2
            while name in used:
                name, suffix = f"{stem}-{suffix}.patch", suffix + 1
            used.add(name)
        out.append(Exported(name, gitmail.remove_filename(mail), subject))
    return out


def stored_plaintext(path: Path) -> bytes | None:
    """What an existing patch file says in plaintext (None when it is missing)."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not path.name.endswith(keys.SEALED_SUFFIX):
        return data
    return keys.decrypt(path, data, hashlib.sha256(data).hexdigest())


def file_bytes(part: str, exported: Exported) -> bytes:
    """The bytes to store: the mail, or its encryption (the old ciphertext when the plaintext is the same)."""
    folder = stack_root() / part
    dest = folder / exported.name
    if not exported.name.endswith(keys.SEALED_SUFFIX):
        return exported.mail
    try:
        old = stored_plaintext(dest)
    except keys.Unreadable as why:
        raise UserError(f"cannot tell whether {PROJECT}/{part}/{exported.name} changed: {why}",
                        where=str(dest), fix=f"set {keys.KEY_FILE_ENV} (the key that opens it), then retry") from None
    if old == exported.mail:
        return dest.read_bytes()
    return keys.encrypt_for(folder, exported.mail, exported.name)


def write_part(part: str, exported: Sequence[Exported]) -> tuple[list[str], list[str]]:
    """Make patches/<project>/<part>/ hold exactly `exported`, in order: (written, removed) relpaths."""
    folder = stack_root() / part
    folder.mkdir(parents=True, exist_ok=True)
    try:
        old = read_series(part)
    except UserError:
        old = Series(folder / "series", "", ())
    contents = [(e.name, file_bytes(part, e)) for e in exported]
    written: list[str] = []
    for name, data in contents:
        dest = folder / name
        if not dest.is_file() or dest.read_bytes() != data:
            dest.write_bytes(data)
            written.append(f"{PROJECT}/{part}/{name}")
    names = [name for name, _ in contents]
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
