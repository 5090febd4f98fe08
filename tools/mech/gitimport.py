"""One commit of a whole directory written by git fast-import: no index, no loose objects."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tools.mech.git import GitError, Identity, Repo, base_env, command


def import_files(repo: Repo, root: Path, *, ref: str, message: str, author: Identity) -> str:
    """One commit of every file under `root` (ignore rules do not apply), written by fast-import
    straight into a pack: no loose objects, no index, no second compression pass. `author.date` must
    be ISO 8601. The commit is exactly what `git add -A -f` + commit-tree would give."""
    if not author.date:
        raise ValueError("import_files needs a fixed author date")
    when = datetime.fromisoformat(author.date)
    offset = int(when.utcoffset().total_seconds()) // 60 if when.utcoffset() else 0
    sign = "-" if offset < 0 else "+"
    stamp = f"{int(when.timestamp())} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    person = f"{author.name} <{author.email}> {stamp}".encode()
    cmd = command([f"--git-dir={repo.git_dir}", "fast-import", "--quiet", "--done"])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=base_env())
    assert proc.stdin is not None
    entries: list[bytes] = []
    try:
        for mark, (mode, rel, data) in enumerate(_walk_files(root), 1):
            proc.stdin.write(b"blob\nmark :%d\ndata %d\n" % (mark, len(data)))
            proc.stdin.write(data)
            proc.stdin.write(b"\n")
            entries.append(b"M %s :%d %s\n" % (mode, mark, _fast_import_path(rel)))
        body = message.encode()
        proc.stdin.write(b"commit %s\nauthor %s\ncommitter %s\ndata %d\n%s\n" % (
            ref.encode(), person, person, len(body), body))
        proc.stdin.writelines(entries)
        proc.stdin.write(b"\ndone\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise GitError(cmd[-4:], proc.returncode, "", stderr)
    sha = repo.rev_parse(ref)
    assert sha is not None
    return sha


def _walk_files(root: Path) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(git mode, path relative to root, content) of every file and symlink, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = os.fsencode(path.relative_to(root))
            if path.is_symlink():
                yield b"120000", rel, os.fsencode(os.readlink(path))
            else:
                yield (b"100755" if path.stat().st_mode & 0o100 else b"100644"), rel, path.read_bytes()
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]


def _fast_import_path(rel: bytes) -> bytes:
    """fast-import reads a path literally unless it starts with a quote; one holding LF cannot be
    literal. C-quote anything unusual (quoting is always allowed)."""
    if not (rel.startswith(b'"') or any(c in rel for c in b"\n\\\"") or any(c < 32 for c in rel)):
        return rel
    out = bytearray(b'"')
    for c in rel:
        if c in b'"\\':
            out += b"\\" + bytes([c])
        elif c < 32 or c == 127:
            out += b"\\%03o" % c
        else:
            out.append(c)
    return bytes(out + b'"')
