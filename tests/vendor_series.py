"""A chip vendor's patch series as vendors make them: commits in their own git clone of our base, then plain
`git format-patch --numbered --cover-letter` with git's defaults (diffstat, abbreviated index lines,
signature), and the same changes as plain `diff -u` files."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VENDOR_ENV = {"GIT_AUTHOR_NAME": "Vendor Dev", "GIT_AUTHOR_EMAIL": "dev@vendor.example",
              "GIT_COMMITTER_NAME": "Vendor Dev", "GIT_COMMITTER_EMAIL": "dev@vendor.example"}


@dataclass(frozen=True)
class Spec:
    """Which upstream files the seven changes use (they differ between the fake and the real tree)."""

    multi_hunk: str  # a text file of 20+ lines: two hunks far apart
    deleted: str
    renamed: tuple[str, str]  # (old, new): renamed and edited
    mode: str  # its executable bit is flipped
    binary: str  # a new binary file (add -f: *.bin may be ignored)
    crlf: str  # a CRLF file, edited and left without its final newline
    package: str = "vllm/vendorpkg"


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    clean.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", **VENDOR_ENV, **(env or {})})
    return subprocess.run(["git", *args], cwd=cwd, env=clean, input=data, capture_output=True, check=True).stdout


def _multi_hunk(root: Path, spec: Spec) -> None:
    path = root / spec.multi_hunk
    lines = path.read_bytes().split(b"\n")
    lines.insert(len(lines) - 3, b"# vendor: second hunk, near the end")
    lines.insert(2, b"# vendor: first hunk, near the top")
    path.write_bytes(b"\n".join(lines))


def _package(root: Path, spec: Spec) -> None:
    (root / spec.package).mkdir(parents=True)
    (root / spec.package / "__init__.py").write_text('"""Vendor kernels."""\n\nfrom .ops import fused_op\n')
    (root / spec.package / "ops.py").write_text("def fused_op(x):\n    return x\n")


def _delete(root: Path, spec: Spec) -> None:
    (root / spec.deleted).unlink()


def _rename(root: Path, spec: Spec) -> None:
    old, new = root / spec.renamed[0], root / spec.renamed[1]
    data = old.read_bytes()
    old.unlink()
    new.write_bytes(b"# moved by the vendor\n" + data)


def _mode(root: Path, spec: Spec) -> None:
    path = root / spec.mode
    path.chmod(path.stat().st_mode ^ 0o111)


def _binary(root: Path, spec: Spec) -> None:
    (root / spec.binary).write_bytes(bytes(range(256)) * 4 + b"\x00vendor blob")


def _crlf(root: Path, spec: Spec) -> None:
    path = root / spec.crlf
    data = path.read_bytes()
    assert b"\r\n" in data
    path.write_bytes(data.replace(b"\r\n", b"\r\n# vendor: CRLF line\r\n", 1).rstrip(b"\r\n"))


CHANGES: list[tuple[str, str, Callable[[Path, Spec], None]]] = [
    ("0001", "vendor: tune two places in one file", _multi_hunk),
    ("0002", "vendor: add the vendorpkg package", _package),
    ("0003", "vendor: drop an unused file", _delete),
    ("0004", "vendor: move and adjust a module", _rename),
    ("0005", "vendor: flip a script's mode", _mode),
    ("0006", "vendor: ship a kernel blob", _binary),
    ("0007", "vendor: edit a CRLF file, no final newline", _crlf),
]


def vendor_clone(pristine_repo: Path, base: str, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(pristine_repo), str(dest)], check=True,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull})
    (dest / ".git/info").mkdir(exist_ok=True)
    (dest / ".git/info/attributes").write_text("* -text -eol -filter\n")
    _git(dest, "checkout", "-q", "-B", "main", base)
    return dest


def make_series(pristine_repo: Path, base: str, work: Path, out: Path, spec: Spec,
                common: list[Path] = ()) -> tuple[list[Path], str]:
    """The seven commits on base (+ the common patches, as our release ships them) in the vendor's clone;
    `git format-patch --numbered --cover-letter` into `out`. Returns the files and the vendor's tree id."""
    repo = vendor_clone(pristine_repo, base, work)
    if common:
        _git(repo, "am", "-q", "--keep-cr", *map(str, common))
    start = _git(repo, "rev-parse", "HEAD").decode().strip()
    for number, (_, subject, change) in enumerate(CHANGES):
        change(repo, spec)
        _git(repo, "add", "-A")
        _git(repo, "add", "-f", "--", spec.binary) if change is _binary else None
        when = f"2026-11-{10 + number:02d}T09:00:00+08:00"
        _git(repo, "commit", "-q", "-m", f"{subject}\n\nWhy: the vendor's reason number {number + 1}.\n\n"
             "Signed-off-by: Vendor Dev <dev@vendor.example>", env={"GIT_AUTHOR_DATE": when,
                                                                  "GIT_COMMITTER_DATE": when})
    out.mkdir(parents=True, exist_ok=True)
    _git(repo, "format-patch", "-q", "--numbered", "--cover-letter", "-o", str(out), f"{start}..HEAD")
    tree = _git(repo, "rev-parse", "HEAD^{tree}").decode().strip()
    return sorted(out.iterdir()), tree


def plain_diffs(pristine_repo: Path, base: str, work: Path, out: Path, spec: Spec) -> list[Path]:
    """Text-only changes as `diff -u` makes them (orig/ and new/ trees): an edit with two hunks and a new
    file (diff -N). Plain diffs carry no author, message or mode."""
    repo = vendor_clone(pristine_repo, base, work)
    orig, new = work.parent / "orig", work.parent / "new"
    for rel in (spec.multi_hunk,):
        for side in (orig, new):
            (side / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, side / rel)
    _multi_hunk(new, spec)
    (new / spec.package).mkdir(parents=True)
    (new / spec.package / "plain.py").write_text("PLAIN = True\n")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rel in (("tune-two-places.diff", spec.multi_hunk), ("add-plain-module.diff", f"{spec.package}/plain.py")):
        proc = subprocess.run(["diff", "-uN", f"orig/{rel}", f"new/{rel}"], cwd=work.parent, capture_output=True,
                              check=False)
        assert proc.returncode == 1, proc.stderr
        header = b"Tune two places.\n\nThe vendor's plain diff, with a description.\n\n" \
            if name.startswith("tune") else b""
        (out / name).write_bytes(header + proc.stdout)
        files.append(out / name)
    (out / "series").write_text("tune-two-places.diff\nadd-plain-module.diff\n")
    return files
