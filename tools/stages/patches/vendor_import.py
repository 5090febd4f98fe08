"""import-patches: a vendor's own series, as it comes, into patches/<project>/<vendor>/ in canonical form.

A vendor hands over `git format-patch` output (numbered subjects, diffstats, abbreviated index lines, a
signature, maybe a cover letter) or plain `diff -u` files. Each is applied in order on pristine + the
common part (through a private index: nothing is checked out, the user's workspace is not touched), then
exported exactly as export-patches would write it, under the vendor's own file names. What changed per
file is reported. The same series imported again changes no byte. Encrypted files (NAME.patch.age)
stay encrypted.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import tools.stages.patches.keys as keys
from tools.core.errors import UserError
from tools.mech import gitmail
from tools.mech.git import clone_local
from tools.mech.gitmail import IndexAm, MailFailed
from tools.stages.patches.canonical import Exported, export_mails, write_part
from tools.stages.patches.stack import (
    APPLIER,
    COMMON,
    PATCH_NAME,
    check_vendor,
    stack_info,
)
from tools.stages.patches.workspace import diagnose_apply, git_words, pristine_for, stack_mails

if TYPE_CHECKING:
    from tools.core.lock import Lock

_SOURCES = (".patch", ".diff", ".mbox", ".eml", ".patch.age")
_NUMBERED = re.compile(r"\[[^\]]*?(\d+)/(\d+)\]")
_AUTHOR = re.compile(r"^[^<>\n]+ <[^<>@\s]+@[^<>\s]+>$")
_TIMESTAMP = re.compile(rb"^\+\+\+ \S+\t(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ([+-]\d{4})", re.M)
FALLBACK_DATE = "Sat, 01 Jan 2000 00:00:00 +0000"


@dataclass
class Imported:
    source: str  # file name in the vendor's folder
    name: str  # file name in patches/
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    vendor: str
    files: tuple[Imported, ...]
    skipped: tuple[str, ...]  # "file: why"
    written: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass
class _Source:
    path: Path
    data: bytes  # the plaintext
    sealed: bool
    shape: gitmail.Shape
    order: tuple[int, str]


def _read(path: Path) -> tuple[bytes, bool]:
    data = path.read_bytes()
    if not path.name.endswith(keys.SEALED_SUFFIX):
        return data, False
    try:
        return keys.decrypt(path, data, hashlib.sha256(data).hexdigest()), True
    except keys.Unreadable as why:
        raise UserError(f"cannot read {path.name}: {why}", where=str(path),
                        fix=f"set {keys.KEY_FILE_ENV} to the age identity file the vendor encrypted it for") from None


def _sources(folder: Path) -> tuple[list[_Source], list[str]]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder", where=str(folder),
                        fix="give the folder that holds the vendor's patch files")
    listed = folder / "series"
    skipped: list[str] = []
    if listed.is_file():
        names = [line.split("#", 1)[0].strip() for line in listed.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        for number, name in enumerate(names, 1):
            if "/" in name or not (folder / name).is_file():
                raise UserError(f"the vendor's series names {name!r}, which is not a file in {folder}",
                                where=f"{listed}:{number}", fix="fix the vendor's series file or add the file")
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in {*names, "series"})
        skipped += [f"{n}: not listed in the vendor's series" for n in others]
        paths = [folder / n for n in names]
    else:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_SOURCES)
                       and not p.name.startswith("."))
        skipped += [f"{p.name}: not a patch file name ({', '.join(_SOURCES)})" for p in sorted(folder.iterdir())
                    if p.is_file() and p not in paths]
    found = []
    for position, path in enumerate(paths):
        data, sealed = _read(path)
        numbered = _NUMBERED.search(gitmail.subject_of(data))
        order = (int(numbered.group(1)), path.name) if numbered and not listed.is_file() else (position, path.name)
        found.append(_Source(path, data, sealed, gitmail.shape(data), order))
    if not listed.is_file():
        found.sort(key=lambda s: s.order)
    kept = []
    for src in found:
        numbered = _NUMBERED.search(gitmail.subject_of(src.data))
        if src.shape.kind == "empty-mail" and numbered and numbered.group(1) == "0":
            skipped.append(f"{src.path.name}: cover letter ([PATCH 0/{numbered.group(2)}]), no change in it")
            continue
        kept.append(src)
    if not kept:
        raise UserError(f"no patch files in {folder}", where=str(folder),
                        fix=f"put the vendor's patches there ({', '.join(_SOURCES)}), optionally with a series file")
    return kept, skipped


def _out_name(source: str) -> str:
    sealed = source.endswith(keys.SEALED_SUFFIX)
    stem = source.removesuffix(keys.SEALED_SUFFIX)
    for suffix in (".patch", ".diff", ".mbox", ".eml"):
        stem = stem.removesuffix(suffix)
    name = f"{stem}.patch" + (keys.SEALED_SUFFIX if sealed else "")
    if not PATCH_NAME.match(name):
        name = f"{gitmail.sanitized_subject(stem)}.patch" + (keys.SEALED_SUFFIX if sealed else "")
    return name


def _diff_date(data: bytes) -> str | None:
    stamps = [datetime.strptime(f"{d.decode()} {z.decode()}", "%Y-%m-%d %H:%M:%S %z")
              for d, z in _TIMESTAMP.findall(data)]
    from email.utils import format_datetime  # email.utils pulls in socket: only when a diff is converted

    return format_datetime(max(stamps)) if stamps else None


def _as_mail(src: _Source, author: str | None, date: str | None) -> tuple[bytes, list[str]]:
    """A plain diff as a git mail: subject from its leading text (else the file name), author given."""
    where = f"{src.path}:{src.shape.line}"
    if not author:
        raise UserError(f"{src.path.name} is a plain diff, not a git mail: it names no author", where=where,
                        fix="give one: --author 'Name <mail@example.com>' (used for every plain diff)")
    lines = gitmail.lines_of(src.data)
    text = [line.decode("utf-8", "replace").rstrip("\r") for line in lines[:src.shape.line - 1]]
    text = [t for t in text if t.strip()] or [re.sub(r"^\d+[-_]", "", _out_name(src.path.name).split(".")[0])
                                              .replace("-", " ").replace("_", " ")]
    when = date or _diff_date(src.data) or FALLBACK_DATE
    head = (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: {author}\n"
            f"Date: {when}\nSubject: [PATCH] {text[0].strip()}\n\n")
    body = "".join(f"{t}\n" for t in text[1:]) + ("\n" if text[1:] else "")
    mail = head.encode() + body.encode() + b"\n".join(lines[src.shape.line - 1:])
    source = "--date" if date else ("the diff's +++ timestamps" if _diff_date(src.data) else "a fixed default")
    return mail, [f"plain diff made a git mail: author {author}, date {when} (from {source}), "
                  f"subject {text[0].strip()!r}"]


def _notes(original: bytes, out: Exported, src: _Source) -> list[str]:
    notes: list[str] = []
    if original == out.mail:
        return ["already canonical"]
    subject = gitmail.subject_of(original)
    if subject and subject != gitmail.subject_of(out.mail):
        notes.append(f"subject {subject!r} -> {gitmail.subject_of(out.mail)!r}")
    first = original.split(b"\n", 1)[0]
    if first.startswith(b"From ") and first != out.mail.split(b"\n", 1)[0]:
        notes.append("From line: commit id replaced by zeros")
    if re.search(rb"^---\r?\n(?: .* \| .*\n)+", original, re.M):
        notes.append("diffstat dropped")
    if re.search(rb"^index [0-9a-f]{4,39}\.\.[0-9a-f]{4,39}", original, re.M):
        notes.append("abbreviated index lines made full (40 hex)")
    if re.search(rb"^-- \r?\n", original, re.M):
        notes.append("signature (-- / git version) dropped")
    if not notes:
        a, b = original.split(b"\n"), out.mail.split(b"\n")
        number = next((i for i, (x, y) in enumerate(zip(a, b, strict=False), 1) if x != y), min(len(a), len(b)))
        notes.append(f"rewritten in git's canonical form (first difference at line {number})")
    return notes


def import_series(vendor: str, folder: Path, *, author: str | None = None, date: str | None = None,
                  lock: Lock | None = None) -> ImportResult:
    check_vendor(vendor)
    if author and not _AUTHOR.match(author):
        raise UserError(f"--author {author!r} is not 'Name <mail>'", where="--author",
                        fix="e.g. --author 'Ada Vendor <ada@vendor.example>'")
    sources, skipped = _sources(folder)
    stack = stack_info(vendor)
    common = [p for p in stack.patches if p.part == COMMON]
    if any(p.part == COMMON for p, _ in stack.unreadable):
        raise stack.unreadable_error(f"import onto the common part for {vendor}")
    records: list[Imported] = []
    mails: list[bytes] = []
    names: set[str] = set()
    for src in sources:
        where = f"{src.path}:{src.shape.line}"
        record = Imported(src.path.name, _out_name(src.path.name))
        if record.name in names:
            raise UserError(f"two vendor files become {record.name}", where=str(src.path),
                            fix="rename one of them (file names must stay unique in patches/)")
        names.add(record.name)
        if record.name != src.path.name:
            record.notes.append(f"file name {src.path.name} -> {record.name}")
        if src.shape.kind == "none":
            raise UserError(f"{src.path.name} is not a patch: {src.shape.detail}", where=where,
                            fix="remove it from the folder (or from its series file)")
        if src.shape.kind == "empty-mail":
            raise UserError(f"{src.path.name} is an empty patch: {src.shape.detail}", where=where,
                            fix="ask the vendor for the diff, or leave the file out")
        mail = src.data
        if src.shape.kind == "diff":
            mail, made = _as_mail(src, author, date)
            record.notes += made
        mails.append(gitmail.add_filename(mail if mail.endswith(b"\n") else mail + b"\n", record.name))
        records.append(record)
    pristine = pristine_for(lock)
    with tempfile.TemporaryDirectory(prefix="flagrelease-import-") as tmp:
        repo = clone_local(pristine.repo, Path(tmp) / "scratch.git", shared=True)
        am = IndexAm(repo, Path(tmp), APPLIER)
        try:
            base = am.apply(pristine.commit, stack_mails(common))[-1] if common else pristine.commit
        except MailFailed as failed:
            raise UserError(f"the common part does not apply: {common[failed.index].relpath}",
                            where=str(common[failed.index].path),
                            fix="fix the common stack first (`nox -s check-patches` names the hunk)") from None
        try:
            commits = am.apply(base, mails)
        except MailFailed as failed:
            raise _not_applied(sources[failed.index], failed, vendor, pristine.label) from None
        exported = export_mails(repo, commits)
    for record, src, out in zip(records, sources, exported, strict=True):
        record.notes += _notes(src.data, out, src) if src.shape.kind == "mail" else []
        if src.sealed:
            record.notes.append("stays encrypted (age)")
    written, removed = write_part(vendor, exported)
    return ImportResult(vendor, tuple(records), tuple(skipped), tuple(written), tuple(removed))


def _not_applied(src: _Source, failed: MailFailed, vendor: str, base: str) -> UserError:
    file, hunk, reason = diagnose_apply(failed.output, src.data) if failed.output else (None, None, failed.reason)
    line = _hunk_line(src.data, hunk)
    said = git_words(failed.output)
    what = (f"{src.path.name} does not apply on {base} + common: {file or '(file not identified)'}"
            f"{', ' + hunk if hunk else ''}: {reason}" + (f" (git: {said})" if said else ""))
    return UserError(what, where=f"{src.path}:{line or src.shape.line}",
                     fix=f"the series was made on another base: rebase it onto the pristine tree + common "
                         f"(`nox -s patch -- --vendor {vendor}`, `git am --3way` the vendor's files in the "
                         f"workspace, resolve, `nox -s export-patches -- --vendor {vendor}`), or ask the vendor "
                         f"for a series made on {base}")


def _hunk_line(data: bytes, hunk: str | None) -> int | None:
    if not hunk or "(" not in hunk:
        return None
    header = hunk[hunk.index("(") + 1:-1].encode()
    for number, line in enumerate(gitmail.lines_of(data), 1):
        if line.rstrip(b"\r").strip() == header:
            return number
    return None

