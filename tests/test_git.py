"""tools/git.py on small repositories: determinism, stable format-patch, every kind of change round-trips."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import write

from tools.mech import git
from tools.mech.git import GitError, Identity, Repo
from tools.mech.gitimport import import_files

AUTHOR = Identity("Ada Author", "ada@example.invalid", "2020-02-02T10:00:00+0000")
BASE = Identity("Base", "base@example.invalid", "2000-01-01T00:00:00+0000")


def upstream_files(root: Path) -> None:
    write(root, "pkg/crlf.py", b"a = 1\r\nb = 2\r\nc = 3\r\n")
    write(root, "pkg/nonl.txt", b"first\nlast without newline")
    write(root, "pkg/old_name.py", "".join(f"line {i}\n" for i in range(40)))
    write(root, "pkg/gone.txt", "to be deleted\n")
    write(root, "pkg/tool.sh", "echo hi\n", 0o644)
    write(root, "pkg/blob.bin", bytes(range(256)) * 4)
    write(root, ".gitignore", "*.bin\nignored_dir/\n")  # upstream ignores a file it ships


def commit_base(tmp: Path) -> tuple[Repo, str]:
    tree = tmp / "tree"
    upstream_files(tree)
    repo = git.init(tmp / "base.git", bare=True)
    sha = repo.snapshot(tree, parents=[], message="base\n", author=BASE, index_file=tmp / "idx",
                        include_ignored=True)
    repo.update_ref("refs/heads/main", sha)
    repo.run("symbolic-ref", "HEAD", "refs/heads/main")
    return repo, sha


def every_kind_of_change(ws: Path) -> None:
    write(ws, "pkg/crlf.py", b"a = 1\r\nb = 20\r\nc = 3\r\n")
    write(ws, "pkg/nonl.txt", b"first\nchanged, still no newline")
    write(ws, "pkg/new_nonl.txt", b"new file, no final newline")
    (ws / "pkg/old_name.py").rename(ws / "pkg/new_name.py")
    with (ws / "pkg/new_name.py").open("a") as handle:
        handle.write("one more line\n")
    (ws / "pkg/gone.txt").unlink()
    (ws / "pkg/tool.sh").chmod(0o755)
    write(ws, "pkg/blob.bin", bytes(reversed(range(256))) * 4 + b"\0tail")
    write(ws, "pkg/new.bin", b"\x00\x01\x02binary\xff" * 10)
    write(ws, "pkg/new_crlf.txt", b"one\r\ntwo\r\n")


def commit_all(repo: Repo, message: str, author: Identity = AUTHOR) -> str:
    repo.run("add", "--all", "--force")
    repo.run("commit", "--quiet", "-m", message, env=git.identity_env(author))
    head = repo.head()
    assert head
    return head


def workspace(tmp: Path, base_repo: Repo, base: str, name: str) -> Repo:
    repo = git.clone_local(base_repo.git_dir, tmp / name)
    repo.checkout_branch("main", base)
    return repo


def test_snapshot_is_a_pure_function_of_the_files(tmp_path: Path) -> None:
    _, first = commit_base(tmp_path / "one")
    _, second = commit_base(tmp_path / "two")
    assert first == second
    other = tmp_path / "three"
    upstream_files(other / "tree")
    write(other / "tree", "pkg/crlf.py", b"a = 1\nb = 2\nc = 3\n")  # same text, LF instead of CRLF
    repo = git.init(other / "base.git", bare=True)
    assert repo.snapshot(other / "tree", parents=[], message="base\n", author=BASE, index_file=other / "i",
                         include_ignored=True) != first


def test_snapshot_keeps_ignored_files_only_when_asked(tmp_path: Path) -> None:
    repo, sha = commit_base(tmp_path)
    assert "pkg/blob.bin" in repo.out("ls-tree", "-r", "--name-only", sha).splitlines()
    plain = repo.snapshot(tmp_path / "tree", parents=[], message="x\n", author=BASE, index_file=tmp_path / "j")
    assert "pkg/blob.bin" not in repo.out("ls-tree", "-r", "--name-only", plain).splitlines()


def test_every_kind_of_change_round_trips_byte_identically(tmp_path: Path) -> None:
    base_repo, base = commit_base(tmp_path)
    source = workspace(tmp_path, base_repo, base, "source")
    every_kind_of_change(tmp_path / "source")
    wanted = commit_all(source, "change every kind of thing\n\nWith a body.\n")
    first = source.format_patch(f"{base}..{wanted}", tmp_path / "out1")
    assert len(first) == 1
    text = first[0].read_bytes()
    for marker in (b"rename from pkg/old_name.py", b"deleted file mode", b"new mode 100755", b"GIT binary patch",
                   b"\\ No newline at end of file", b"b = 20\r\n"):
        assert marker in text, marker

    target = workspace(tmp_path, base_repo, base, "target")
    proc = target.am(first, committer=Identity("Applier", "applier@example.invalid"))
    assert proc.returncode == 0, proc.stderr
    head = target.head()
    assert head and target.tree_of(head) == source.tree_of(wanted)
    assert target.out("log", "-1", "--format=%an <%ae>%n%ad%n%B", "--date=iso-strict", head) == \
        "Ada Author <ada@example.invalid>\n2020-02-02T10:00:00+00:00\nchange every kind of thing\n\nWith a body."
    assert (tmp_path / "target/pkg/crlf.py").read_bytes() == b"a = 1\r\nb = 20\r\nc = 3\r\n"
    assert (tmp_path / "target/pkg/new_nonl.txt").read_bytes() == b"new file, no final newline"
    assert os.access(tmp_path / "target/pkg/tool.sh", os.X_OK)
    assert not (tmp_path / "target/pkg/gone.txt").exists()
    assert target.status() == []
    second = target.format_patch(f"{base}..{head}", tmp_path / "out2")
    assert [p.name for p in second] == [p.name for p in first]
    assert second[0].read_bytes() == text


def test_same_patches_on_same_base_give_the_same_commit_ids(tmp_path: Path) -> None:
    base_repo, base = commit_base(tmp_path)
    source = workspace(tmp_path, base_repo, base, "source")
    write(tmp_path / "source", "pkg/new.txt", "hello\n")
    commit_all(source, "add new.txt")
    mails = source.format_patch(f"{base}..HEAD", tmp_path / "out")
    applier = Identity("Applier", "applier@example.invalid")
    heads = set()
    for name in ("a", "b"):
        repo = workspace(tmp_path, base_repo, base, name)
        assert repo.am(mails, committer=applier).returncode == 0
        heads.add(repo.head())
    assert len(heads) == 1


def test_format_patch_ignores_the_users_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    write(home, ".gitconfig", "[diff]\n\tnoprefix = true\n[format]\n\tsignature = MY-SIGNATURE\n"
          "\tnumbered = true\n[core]\n\tautocrlf = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    base_repo, base = commit_base(tmp_path)
    source = workspace(tmp_path, base_repo, base, "source")
    write(tmp_path / "source", "pkg/crlf.py", b"a = 1\r\nb = 2\r\nc = 4\r\n")
    commit_all(source, "edit")
    text = source.format_patch(f"{base}..HEAD", tmp_path / "out")[0].read_bytes().decode()
    assert text.startswith("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
    assert "diff --git a/pkg/crlf.py b/pkg/crlf.py" in text
    assert "MY-SIGNATURE" not in text and "\n-- \n" not in text
    assert "Subject: [PATCH] edit\n" in text
    assert " 1 file changed" not in text  # no diffstat: its layout varies
    assert "+c = 4\r\n" in text


def test_status_and_operation_in_progress(tmp_path: Path) -> None:
    base_repo, base = commit_base(tmp_path)
    repo = workspace(tmp_path, base_repo, base, "ws")
    assert repo.status() == []
    write(tmp_path / "ws", "pkg/nonl.txt", "edited\n")
    write(tmp_path / "ws", "fresh.txt", "untracked\n")
    write(tmp_path / "ws", "ignored_dir/x.txt", "ignored\n")
    assert sorted((e.code, e.path) for e in repo.status()) == [(" M", "pkg/nonl.txt"), ("??", "fresh.txt")]

    bad = write(tmp_path, "bad.patch", (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: X <x@example.invalid>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: [PATCH] bad\n\n"
        "diff --git a/pkg/gone.txt b/pkg/gone.txt\n--- a/pkg/gone.txt\n+++ b/pkg/gone.txt\n"
        "@@ -1 +1 @@\n-not what the file says\n+new\n"))
    repo.checkout_branch("main", base)
    repo.clean_untracked()
    proc = repo.am([bad], committer=AUTHOR)
    assert proc.returncode != 0
    assert repo.operation_in_progress() == "git am (or rebase)"
    check = repo.apply_check(bad.read_bytes())
    assert "patch failed: pkg/gone.txt:1" in check
    repo.am_abort()
    assert repo.operation_in_progress() is None
    assert repo.head() == base


def test_local_clone_survives_its_source_and_shared_does_not_copy(tmp_path: Path) -> None:
    base_repo, base = commit_base(tmp_path)
    local = git.clone_local(base_repo.git_dir, tmp_path / "local")
    shared = git.clone_local(base_repo.git_dir, tmp_path / "shared", shared=True)
    assert (shared.git_dir / "objects/info/alternates").is_file()
    assert not (local.git_dir / "objects/info/alternates").exists()
    subprocess.run(["rm", "-rf", str(base_repo.git_dir)], check=True)
    local.checkout_branch("main", base)
    assert (tmp_path / "local/pkg/crlf.py").read_bytes() == b"a = 1\r\nb = 2\r\nc = 3\r\n"


def test_attributes_in_the_tree_cannot_rewrite_line_endings(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree, ".gitattributes", "* text=auto eol=lf\n")
    write(tree, "dos.txt", b"x\r\ny\r\n")
    repo = git.init(tmp_path / "b.git", bare=True)
    sha = repo.snapshot(tree, parents=[], message="m\n", author=BASE, index_file=tmp_path / "i")
    ws = git.clone_local(repo.git_dir, tmp_path / "ws")
    ws.checkout_branch("main", sha)
    assert (tmp_path / "ws/dos.txt").read_bytes() == b"x\r\ny\r\n"
    assert ws.status() == []


def test_git_error_carries_the_message(tmp_path: Path) -> None:
    repo = git.init(tmp_path / "r")
    with pytest.raises(GitError) as info:
        repo.run("rev-parse", "--verify", "no-such-ref")
    assert info.value.returncode != 0
    assert "Needed a single revision" in info.value.stderr
    assert str(info.value).endswith("fatal: Needed a single revision")
    assert repo.rev_parse("no-such-ref") is None


def test_snapshot_of_a_work_tree_keeps_the_real_index_untouched(tmp_path: Path) -> None:
    base_repo, base = commit_base(tmp_path)
    repo = workspace(tmp_path, base_repo, base, "ws")
    write(tmp_path / "ws", "pkg/nonl.txt", "edited\n")
    write(tmp_path / "ws", "extra.txt", "new\n")
    before = (repo.git_dir / "index").read_bytes()
    saved = repo.snapshot(tmp_path / "ws", parents=[base], message="backup\n", author=AUTHOR,
                          index_file=repo.git_dir / "tmp.index", seed_index=repo.git_dir / "index")
    assert (repo.git_dir / "index").read_bytes() == before
    assert repo.out("show", f"{saved}:pkg/nonl.txt") == "edited"
    assert repo.out("show", f"{saved}:extra.txt") == "new"
    assert repo.out("rev-parse", f"{saved}^") == base


def test_fast_import_gives_the_same_commit_as_add_and_commit_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    upstream_files(tree)
    for name in ("a b.txt", '"quoted".txt', "back\\slash.txt", "new\nline.txt", "caf\u00e9.py", "tab\there"):
        write(tree, f"odd/{name}", name)
    (tree / "link.py").symlink_to("pkg/crlf.py")
    (tree / "dirlink").symlink_to("pkg")
    write(tree, "pkg/.git/HEAD", "nested repositories are not content\n")
    write(tree, "empty.txt", b"")
    (tree / "pkg/tool.sh").chmod(0o755)
    by_add = git.init(tmp_path / "add.git", bare=True)
    expected = by_add.snapshot(tree, parents=[], message="base\n", author=BASE, index_file=tmp_path / "i",
                               include_ignored=True)
    by_import = git.init(tmp_path / "import.git", bare=True)
    got = import_files(by_import, tree, ref="refs/heads/main", message="base\n", author=BASE)
    assert got == expected
    assert list((tmp_path / "import.git/objects").glob("??/*")) == []  # one pack, no loose objects
    assert "120000 blob" in by_import.out("ls-tree", got, "dirlink")
