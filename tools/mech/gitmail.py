"""Patch mails as git writes and reads them. Knows git, not this project.

- a stack of mails is one mbox stream (what `git am` reads on stdin, `git format-patch --stdout` writes);
- a patch keeps its file name through apply -> edit -> export with a `Patch-Filename:` line in the commit
  message (Electron's script/lib/git.py does the same): added before the diff when a mail is applied,
  taken out again when the commit is exported;
- what a file is (git mail, plain diff, nothing) and where it stops being one, for error messages;
- `IndexAm`: `git am` without a work tree (mailinfo + apply --cached + commit-tree into a private index),
  giving the same commits as `git am --committer-date-is-author-date` on the same base.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

from tools.mech.git import Identity, Repo, identity_env

FILENAME_TRAILER = b"Patch-Filename: "
_TRAILER_LINE = re.compile(rb"^Patch-Filename: ([^\s/]+)\r?$")
# format-patch --zero-commit starts every mail with exactly this line
_ZERO_FROM = rb"(?m)^From 0{40} Mon Sep 17 00:00:00 2001\n"  # export only: compiled on first use
_MBOX_FROM = re.compile(rb"^From \S+ .*\d\d:\d\d:\d\d.*\d{4}\r?$")
_HEADER = re.compile(rb"^[A-Za-z][A-Za-z0-9-]*:[ \t]")


def lines_of(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def patchbreak(line: bytes) -> bool:
    """Where a mail's message ends and its patch begins, by git mailinfo's own rule."""
    line = line.rstrip(b"\r")
    if line.startswith((b"diff -", b"Index: ")):
        return True
    if line.startswith(b"---"):
        rest = line[3:]
        return (rest[:1] == b" " and rest[1:2] not in (b"", b" ", b"\t")) or rest.strip() == b""
    return False


def _message_span(lines: list[bytes]) -> tuple[int, int]:
    """[start, end) line indexes of a mail's message body (after the headers, before the patch)."""
    start = 0
    while start < len(lines) and lines[start].rstrip(b"\r"):
        start += 1
    start += 1
    end = start
    while end < len(lines) and not patchbreak(lines[end]):
        end += 1
    return start, end


def filename_of(mail: bytes) -> str | None:
    """The name a `Patch-Filename:` line in the message gives, if any (the last one counts)."""
    lines = lines_of(mail)
    start, end = _message_span(lines)
    for line in reversed(lines[start:end]):
        found = _TRAILER_LINE.match(line)
        if found:
            return found.group(1).decode("utf-8", "surrogateescape")
    return None


def remove_filename(mail: bytes) -> bytes:
    """The mail without its `Patch-Filename:` line; a paragraph left empty goes with it."""
    lines = lines_of(mail)
    start, end = _message_span(lines)
    for i in range(end - 1, start - 1, -1):
        if _TRAILER_LINE.match(lines[i]):
            del lines[i]
            # a blank line before it that is not the end of the headers, and a blank (or nothing) after it
            if i - 1 >= start and not lines[i - 1].strip() and (i >= len(lines) or not lines[i].strip()):
                del lines[i - 1]
            return b"\n".join(lines)
    return mail


def add_filename(mail: bytes, name: str) -> bytes:
    """The mail with `Patch-Filename: name` as the last line of its message (any older one replaced)."""
    lines = lines_of(remove_filename(mail))
    _, end = _message_span(lines)
    lines.insert(end, FILENAME_TRAILER + name.encode())
    return b"\n".join(lines)


def split_stream(data: bytes) -> list[bytes]:
    """The mails of `git format-patch --zero-commit --stdout` output, each as format-patch writes a file
    (--stdout puts one newline between mails)."""
    starts = [m.start() for m in re.finditer(_ZERO_FROM, data)]
    mails = [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)], strict=True)]
    return [m[:-1] if i < len(mails) - 1 and m.endswith(b"\n\n") else m for i, m in enumerate(mails)]


def subject_of(mail: bytes) -> str:
    """The Subject header, unfolded, as it stands ("[PATCH 2/7] ..." included)."""
    lines = mail.decode("utf-8", "surrogateescape").split("\n")
    for i, line in enumerate(lines):
        if not line.rstrip("\r"):
            break
        if line.startswith("Subject: "):
            text = line[len("Subject: "):].rstrip("\r")
            for cont in lines[i + 1:]:
                if not cont.startswith((" ", "\t")):
                    break
                text += cont.rstrip("\r")
            return text.strip()
    return ""


def strip_subject_prefix(subject: str) -> str:
    """What `git am` keeps of a subject: "[PATCH v2 3/7] x" -> "x" (also "Re:" and "[RFC]" prefixes)."""
    previous = None
    while previous != subject:
        previous = subject
        subject = re.sub(r"^\s*(?:\[[^\]]*\]|[Rr][Ee]:)\s*", "", subject)
    return subject.strip()


def sanitized_subject(subject: str, max_length: int = 58) -> str:
    """A file-name stem from a subject, by git format-patch's rule (letters, digits, '.' and '_' kept,
    every other run becomes one '-'), without format-patch's NNNN- prefix."""
    out: list[str] = []
    space = 2
    i = 0
    while i < len(subject):
        char = subject[i]
        if char.isascii() and (char.isalnum() or char in "._"):
            if space == 1:
                out.append("-")
            space = 0
            out.append(char)
            while char == "." and i + 1 < len(subject) and subject[i + 1] == ".":
                i += 1
        else:
            space |= 1
        i += 1
    stem = "".join(out).rstrip(".-")[:max_length]
    return stem or "patch"


def stripspace(text: str) -> str:
    """git stripspace: trailing whitespace off every line, blank lines at both ends dropped, runs of blank
    lines made one, a final newline."""
    out: list[str] = []
    blank = 0
    for line in text.split("\n"):
        line = line.rstrip(" \t\r\n\v\f")
        if not line:
            blank += 1
            continue
        if blank and out:
            out.append("")
        blank = 0
        out.append(line)
    return "".join(f"{line}\n" for line in out)


# --- what a file is ----------------------------------------------------------------------------------------


class Shape(namedtuple("Shape", "kind line detail")):
    __slots__ = ()
    kind: str  # "mail", "diff", "empty-mail" (a mail with no patch), "none"
    line: int  # 1-based: where the diff starts ("mail", "diff"), or where the file shows it is none
    detail: str


def _diff_start(lines: list[bytes], start: int) -> int | None:
    for i in range(start, len(lines)):
        line = lines[i].rstrip(b"\r")
        if line.startswith(b"diff --git ") or line == b"GIT binary patch":
            return i
        if line.startswith(b"--- ") and i + 2 < len(lines) and lines[i + 1].startswith(b"+++ ") \
                and lines[i + 2].startswith(b"@@ "):
            return i
        if line.startswith(b"Index: ") and i + 1 < len(lines) and lines[i + 1].startswith(b"===="):
            return i
    return None


def shape(data: bytes) -> Shape:
    """Whether `data` is a git mail (headers From:/Subject:, then a diff), a plain diff, or neither."""
    lines = lines_of(data)
    first = lines[0].rstrip(b"\r") if lines else b""
    head = 1 if _MBOX_FROM.match(first) else 0
    headers: dict[bytes, int] = {}
    i = head
    while i < len(lines) and lines[i].rstrip(b"\r"):
        if _HEADER.match(lines[i]):
            headers[lines[i].split(b":", 1)[0].lower()] = i + 1
        elif not lines[i].startswith((b" ", b"\t")):
            break
        i += 1
    last = len(lines) - (1 if lines and not lines[-1] else 0)  # the last line that holds something
    mail = b"from" in headers and b"subject" in headers and (i >= len(lines) or not lines[i].rstrip(b"\r"))
    if mail:
        found = _diff_start(lines, i)
        if found is None:
            return Shape("empty-mail", last, "the mail has a message but no diff")
        return Shape("mail", found + 1, "git mail")
    found = _diff_start(lines, 0)
    if found is not None:
        missing = [h for h in ("From", "Subject") if h.lower().encode() not in headers]
        return Shape("diff", found + 1, f"a diff without mail headers (no {' or '.join(missing)}: line)")
    if head or headers:
        return Shape("empty-mail", last, "mail headers but neither a complete header block nor a diff")
    return Shape("none", 1, "neither mail headers (From:, Subject:) nor a diff (diff --git, ---/+++/@@)")


# --- am without a work tree --------------------------------------------------------------------------------


class MailInfo(namedtuple("MailInfo", "author subject body patch")):
    __slots__ = ()
    author: Identity
    subject: str
    body: str
    patch: bytes

    @property
    def message(self) -> str:
        """The commit message `git am` makes: subject, blank line, body, cleaned like git stripspace."""
        return stripspace(f"{self.subject}\n\n{self.body}")


def mailinfo(repo: Repo, mail: bytes, scratch: Path) -> MailInfo:
    """`git mailinfo` (what `git am` runs on each mail): author, subject without [PATCH], body, patch."""
    msg, patch = scratch / "mailinfo-msg", scratch / "mailinfo-patch"
    try:
        proc = repo.run_bytes("mailinfo", str(msg), str(patch), input=mail)
        fields: dict[str, str] = {}
        for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                fields[key] = value
        body = msg.read_bytes().decode("utf-8", "surrogateescape")
        diff = patch.read_bytes()
    finally:
        msg.unlink(missing_ok=True)
        patch.unlink(missing_ok=True)
    author = Identity(fields.get("Author", ""), fields.get("Email", ""), fields.get("Date") or None)
    return MailInfo(author, fields.get("Subject", ""), body, diff)


class MailFailed(Exception):
    def __init__(self, index: int, reason: str, output: str) -> None:
        super().__init__(f"mail {index + 1}: {reason}")
        self.index = index
        self.reason = reason
        self.output = output  # git's own words, stderr and stdout together


class IndexAm:
    """Commit mails on top of a commit through a private index: nothing is checked out.

    The commits equal `git am --keep-cr --committer-date-is-author-date` with `committer` on the same
    base (same message clean-up, author, dates), without 3-way fallback. Objects land in `repo`, so give
    it a scratch repository (e.g. a shared clone) when they must not outlive the check."""

    def __init__(self, repo: Repo, scratch: Path, committer: Identity) -> None:
        self.repo = repo
        self.scratch = scratch
        self.committer = committer
        self.env = {"GIT_INDEX_FILE": str(scratch / "index")}

    def apply(self, base: str, mails: Sequence[bytes]) -> list[str]:
        """One commit per mail, oldest first; MailFailed names the first mail that does not apply."""
        self.repo.run("read-tree", base, env=self.env)
        parent, commits = base, []
        for index, mail in enumerate(mails):
            info = mailinfo(self.repo, mail, self.scratch)
            if not info.patch.strip():
                raise MailFailed(index, "the mail holds no patch", "")
            proc = self.repo.run_bytes("apply", "--cached", "--verbose", input=info.patch, env=self.env,
                                       check=False)
            if proc.returncode != 0:
                output = (proc.stderr + proc.stdout).decode("utf-8", "replace")
                raise MailFailed(index, "the patch does not apply", output)
            tree = self.repo.out("write-tree", env=self.env)
            committer = Identity(self.committer.name, self.committer.email, info.author.date)
            env = {**self.env, **identity_env(info.author, committer)}
            parent = self.repo.run("commit-tree", tree, "-p", parent, env=env, input=info.message).stdout.strip()
            commits.append(parent)
        return commits
