"""Patch-stack policy and source fetching on a small fake upstream (fast; the real tree is in the e2e tests)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import write

from tools import cli
from tools.core.errors import UserError
from tools.core.lock import Upstream
from tools.mech import git
from tools.mech.git import Identity, Repo
from tools.stages import patches, source
from tools.stages.patches import workspace as patches_ws
from tools.stages.source import PristineTree

AUTHOR = Identity("FlagRelease", "flagrelease@example.invalid", "2026-01-02T03:04:05+0000")
HEADER = "# test series header, kept by export\n"


def fake_upstream(root: Path) -> None:
    write(root, "vllm/__init__.py", "".join(f"# line {i}\n" for i in range(30)))
    write(root, "vllm/plugins.py", "def load():\n    return []\n")
    write(root, "vllm/dos.py", b"x = 1\r\ny = 2\r\n")
    write(root, "vllm/tail.txt", b"no final newline")
    write(root, "vllm/old.py", "".join(f"value_{i} = {i}\n" for i in range(20)))
    write(root, "vllm/gone.py", "removed later\n")
    write(root, "vllm/run.sh", "echo run\n", 0o644)
    write(root, "vllm/data.bin", bytes(range(256)))
    write(root, ".gitignore", "*.bin\n__pycache__/\n")


@dataclass
class Env:
    root: Path
    pristine: PristineTree
    project: Path  # a git repo holding patches/, like the real project

    @property
    def patches_dir(self) -> Path:
        return self.project / "patches"

    def ws(self, vendor: str) -> Path:
        return patches.workspace_dir(vendor)

    def repo(self, vendor: str) -> Repo:
        return Repo.at(self.ws(vendor))

    def project_status(self) -> str:
        return subprocess.run(["git", "-C", str(self.project), "status", "--porcelain", "--untracked-files=all"],
                              capture_output=True, text=True, check=True).stdout

    def snapshot_project(self) -> None:
        git.git(["-C", str(self.project), "add", "-A"])
        git.git(["-C", str(self.project), "commit", "-q", "--allow-empty", "-m", "snapshot"])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLAGREL_WORKSPACES", str(tmp_path / "workspaces"))
    monkeypatch.setenv("FLAGREL_PATCHES", str(tmp_path / "project" / "patches"))
    tree = tmp_path / "upstream"
    fake_upstream(tree)
    commit = source.import_tree(tree, tmp_path / "upstream.git", "fake upstream 9.9.9\n")
    pristine = PristineTree("vllm", "9.9.9", "sdist", "0" * 64, tree, tmp_path / "upstream.git", commit, 9)
    monkeypatch.setattr(patches_ws, "fetch_source", lambda lock: pristine)
    monkeypatch.setattr(patches_ws, "load_lock", lambda: SimpleNamespace(lock=None))
    project = tmp_path / "project"
    for part in ("common", "nvidia", "ascend", "cpu"):
        write(project, f"patches/vllm/{part}/series", HEADER)
    git.git(["init", "-q", str(project)])
    environment = Env(tmp_path, pristine, project)
    environment.snapshot_project()
    return environment


Change = Callable[[Path], None]


def make_stack(env: Env, stack: dict[str, list[tuple[str, Change]]]) -> None:
    """Write patches the way a developer would: commits on pristine, then format-patch per part."""
    scratch = git.clone_local(env.pristine.repo, env.root / "scratch", shared=True)
    scratch.checkout_branch("main", env.pristine.commit)
    for part in ("common", "nvidia", "ascend", "cpu"):
        changes = stack.get(part, [])
        start = scratch.head()
        for message, change in changes:
            change(env.root / "scratch")
            scratch.run("add", "--all")
            scratch.run("commit", "-q", "-m", message, env=git.identity_env(AUTHOR))
        folder = env.patches_dir / "vllm" / part
        files = scratch.format_patch(f"{start}..HEAD", folder) if changes else []
        (folder / "series").write_text(HEADER + "".join(f"{f.name}\n" for f in files))
        if part == "common":
            base_for_vendors = scratch.head()
        else:
            scratch.checkout_branch("main", base_for_vendors)
    subprocess.run(["rm", "-rf", str(env.root / "scratch")], check=True)
    env.snapshot_project()


def edit(rel: str, old: str, new: str) -> Change:
    def change(root: Path) -> None:
        path = root / rel
        text = path.read_bytes().decode()
        assert old in text
        path.write_bytes(text.replace(old, new, 1).encode())
    return change


def add(rel: str, data: bytes | str) -> Change:
    return lambda root: write(root, rel, data) and None


STACK: dict[str, list[tuple[str, Change]]] = {
    "common": [
        ("common: first change\n\nWhy the first change exists.\n", edit("vllm/plugins.py", "return []", "return [1]")),
        ("common: add a module\n", add("vllm/flagos.py", "ENABLED = True\n")),
    ],
    "nvidia": [("nvidia: tune a line\n\nBody of the nvidia patch.\n",
                edit("vllm/__init__.py", "# line 5\n", "# five\n"))],
    "ascend": [("ascend: tune another line\n", edit("vllm/__init__.py", "# line 20\n", "# twenty\n"))],
}


# --- series and identity -----------------------------------------------------------------------------------


def test_series_keeps_its_header_and_rejects_bad_entries(env: Env) -> None:
    make_stack(env, STACK)
    series = patches.read_series("common")
    assert series.header == HEADER
    assert series.names == ("0001-common-first-change.patch", "0002-common-add-a-module.patch")
    path = env.patches_dir / "vllm/common/series"
    for text, message in ((HEADER + "../evil.patch\n", "bad series entry"),
                          (HEADER + "0001-common-first-change.patch\n" * 2, "listed twice"),
                          (HEADER + "0009-missing.patch\n", "does not exist")):
        path.write_text(text)
        with pytest.raises(UserError) as err:
            patches.read_series("common")
        assert message in err.value.what
        assert err.value.where and err.value.where.startswith(f"{path}:")
    path.unlink()
    with pytest.raises(UserError, match="no series file"):
        patches.read_series("common")


def test_stack_identity_depends_on_content_order_and_vendor(env: Env) -> None:
    make_stack(env, STACK)
    nvidia = patches.stack_info("nvidia")
    assert [p.relpath for p in nvidia.patches] == [
        "vllm/common/0001-common-first-change.patch", "vllm/common/0002-common-add-a-module.patch",
        "vllm/nvidia/0001-nvidia-tune-a-line.patch"]
    assert nvidia.short_id == nvidia.stack_hash[:12] and len(nvidia.stack_hash) == 64
    assert nvidia.patches[0].sha256 == hashlib.sha256(nvidia.patches[0].path.read_bytes()).hexdigest()
    expected = hashlib.sha256(b"flagrelease-stack/1\nvendor nvidia\n")  # hashlib's, beside the builtin stack_info uses
    for p in nvidia.patches:
        expected.update(f"{hashlib.sha256(p.path.read_bytes()).hexdigest()}  {p.relpath}\n".encode())
    assert nvidia.stack_hash == expected.hexdigest()
    assert patches.stack_info("nvidia") == nvidia
    assert patches.stack_info("ascend").stack_hash != nvidia.stack_hash
    assert nvidia.touched == {"vllm/plugins.py", "vllm/flagos.py", "vllm/__init__.py"}

    series = env.patches_dir / "vllm/common/series"
    series.write_text(HEADER + "0002-common-add-a-module.patch\n0001-common-first-change.patch\n")
    assert patches.stack_info("nvidia").stack_hash != nvidia.stack_hash
    series.write_text(HEADER + "0001-common-first-change.patch\n0002-common-add-a-module.patch\n")
    assert patches.stack_info("nvidia").stack_hash == nvidia.stack_hash
    first = nvidia.patches[0].path
    first.write_bytes(first.read_bytes().replace(b"Why the first", b"Why the 1st"))
    assert patches.stack_info("nvidia").stack_hash != nvidia.stack_hash


def test_touched_paths_reads_every_kind_of_git_diff() -> None:
    text = b"""Subject: [PATCH] x

diff --git a/pkg/a.py b/pkg/a.py
index 1..2 100644
--- a/pkg/a.py
+++ b/pkg/a.py
@@ -1 +1 @@
-a
+b
diff --git a/old name.py b/new name.py
similarity index 90%
rename from old name.py
rename to new name.py
diff --git a/tool.sh b/tool.sh
old mode 100644
new mode 100755
diff --git a/img.bin b/img.bin
new file mode 100644
index 0000000000000000000000000000000000000000..1111111111111111111111111111111111111111
GIT binary patch
literal 3
Kcmb=ke_a3v

literal 0
HcmV?d00001

diff --git a/gone.py b/gone.py
deleted file mode 100644
--- a/gone.py
+++ /dev/null
@@ -1 +0,0 @@
-x
diff --git "a/caf\\303\\251.py" "b/caf\\303\\251.py"
new file mode 100644
--- /dev/null
+++ "b/caf\\303\\251.py"
@@ -0,0 +1 @@
+x
"""
    assert patches.touched_paths(text) == {"pkg/a.py", "old name.py", "new name.py", "tool.sh", "img.bin",
                                           "gone.py", "caf\u00e9.py"}


def test_patch_subject_unfolds_long_subjects() -> None:
    mail = b"From: X <x@y>\nSubject: [PATCH] a long subject that git folds\n onto a second line\n\nbody\n"
    assert patches.patch_subject(mail) == "a long subject that git folds onto a second line"


def test_stamp_module_is_python_naming_the_stack(env: Env) -> None:
    make_stack(env, STACK)
    stack = patches.stack_info("cpu")
    namespace: dict[str, object] = {}
    exec(compile(patches.stamp_module_text(stack), "_flagos_stack.py", "exec"), namespace)  # noqa: S102
    assert namespace["STACK_ID"] == stack.short_id
    assert namespace["STACK_HASH"] == stack.stack_hash
    assert namespace["VENDOR"] == "cpu"
    assert namespace["PATCHES"] == tuple(p.relpath for p in stack.patches)


def test_a_stack_may_not_touch_the_stamp_module(env: Env) -> None:
    make_stack(env, {"cpu": [("cpu: sneak in an identity\n", add(patches.STAMP_MODULE, "STACK_ID = 'x'\n"))]})
    with pytest.raises(UserError, match="_flagos_stack.py"):
        patches.stack_info("cpu")


def test_unknown_vendor_is_a_user_error(env: Env) -> None:
    with pytest.raises(UserError, match="unknown vendor"):
        patches.stack_info("tpu")


# --- patch / unpatch ---------------------------------------------------------------------------------------


def test_patch_makes_one_commit_per_patch_and_is_idempotent(env: Env) -> None:
    make_stack(env, STACK)
    result = patches.patch("nvidia")
    assert result.changed and result.applied == 3
    repo = env.repo("nvidia")
    log = repo.out("log", "--reverse", "--format=%an <%ae>|%ad|%s|%b", "--date=iso-strict",
                   f"{patches.BASE_REF}..HEAD").splitlines()
    assert log[0] == "FlagRelease <flagrelease@example.invalid>|2026-01-02T03:04:05+00:00|common: first change|" \
                     "Why the first change exists."
    assert [line.split("|")[2] for line in log if "|" in line] == [
        "common: first change", "common: add a module", "nvidia: tune a line"]
    assert repo.rev_parse(patches.BASE_REF) == env.pristine.commit
    assert (env.ws("nvidia") / "vllm/__init__.py").read_text().count("# five\n") == 1
    stamp = env.ws("nvidia") / patches.STAMP_MODULE
    assert f'STACK_ID = "{result.stack.short_id}"' in stamp.read_text()
    assert repo.status() == []  # the stamp is excluded locally, never a user edit
    head = repo.head()

    again = patches.patch("nvidia")
    assert not again.changed and repo.head() == head and repo.status() == []


def test_patch_reapplies_when_the_stack_changed(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    first = env.repo("nvidia").head()
    retuned = [("nvidia: a different tune\n", edit("vllm/__init__.py", "# line 7\n", "#7\n"))]
    make_stack(env, {**STACK, "nvidia": retuned})
    result = patches.patch("nvidia")
    assert result.changed and env.repo("nvidia").head() != first
    text = (env.ws("nvidia") / "vllm/__init__.py").read_text()
    assert "#7\n" in text and "# five" not in text


def make_edit(env: Env, vendor: str, kind: str) -> None:
    ws, repo = env.ws(vendor), env.repo(vendor)
    if kind in ("uncommitted", "all"):
        write(ws, "vllm/plugins.py", "def load():\n    return ['mine']\n")
    if kind in ("untracked", "all"):
        write(ws, "vllm/my_new_module.py", "MINE = 1\n")
    if kind in ("commit", "all"):
        write(ws, "vllm/committed.py", "COMMITTED = 1\n")
        repo.run("add", "vllm/committed.py")
        repo.run("commit", "-q", "-m", "my own commit", env=git.identity_env(AUTHOR))
        if kind == "all":
            write(ws, "vllm/plugins.py", "def load():\n    return ['mine']\n")


@pytest.mark.parametrize("kind", ["uncommitted", "untracked", "commit"])
def test_unpatch_refuses_to_discard_edits(env: Env, kind: str) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    make_edit(env, "nvidia", kind)
    repo = env.repo("nvidia")
    head, status = repo.head(), repo.status()
    with pytest.raises(UserError) as err:
        patches.unpatch("nvidia")
    assert "never discards" in err.value.what
    assert "nox -s export-patches -- --vendor nvidia" in (err.value.fix or "")
    assert "--backup" in (err.value.fix or "")
    expected = {"uncommitted": "vllm/plugins.py", "untracked": "vllm/my_new_module.py", "commit": "my own commit"}
    assert expected[kind] in (err.value.where or "")
    assert repo.head() == head and repo.status() == status
    with pytest.raises(UserError, match="patching would discard them"):
        patches.patch("nvidia")
    assert repo.head() == head and repo.status() == status


def test_unpatch_backup_saves_every_edit_on_a_named_ref(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    make_edit(env, "nvidia", "all")
    repo = env.repo("nvidia")
    own_commit = repo.head()
    result = patches.unpatch("nvidia", backup=True)
    assert result.backup_ref and result.backup_ref.startswith("refs/flagrelease/backup/nvidia/")
    ref = result.backup_ref
    assert repo.out("show", f"{ref}:vllm/plugins.py") == "def load():\n    return ['mine']"
    assert repo.out("show", f"{ref}:vllm/my_new_module.py") == "MINE = 1"
    assert repo.out("show", f"{ref}:vllm/committed.py") == "COMMITTED = 1"
    assert repo.is_ancestor(own_commit, ref)
    assert repo.head() == env.pristine.commit and repo.current_branch() == "main"
    assert repo.status() == []
    assert not (env.ws("nvidia") / patches.STAMP_MODULE).exists()
    assert not (env.ws("nvidia") / "vllm/my_new_module.py").exists()
    assert (env.ws("nvidia") / "vllm/plugins.py").read_bytes() == (env.pristine.path / "vllm/plugins.py").read_bytes()
    second = patches.unpatch("nvidia", backup=True)
    assert second.backup_ref is None and not second.changed


def test_an_ignored_file_where_the_stack_deleted_one_is_an_edit_too(env: Env) -> None:
    make_stack(env, {"cpu": [("cpu: drop the data file\n", lambda root: (root / "vllm/data.bin").unlink())]})
    patches.patch("cpu")
    mine = write(env.ws("cpu"), "vllm/data.bin", b"my own build output")  # *.bin is ignored upstream
    assert env.repo("cpu").status() == []
    with pytest.raises(UserError) as err:
        patches.unpatch("cpu")
    assert "vllm/data.bin" in (err.value.where or "")
    assert mine.read_bytes() == b"my own build output"
    ref = patches.unpatch("cpu", backup=True).backup_ref
    assert ref and env.repo("cpu").out("show", f"{ref}:vllm/data.bin") == "my own build output"
    assert mine.read_bytes() == bytes(range(256))  # pristine again, and the user's bytes are on the ref


def test_unpatch_of_a_clean_patched_workspace_needs_no_backup(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("cpu")
    result = patches.unpatch("cpu")
    assert result.changed and result.backup_ref is None
    repo = env.repo("cpu")
    assert repo.head() == env.pristine.commit and repo.status() == []
    assert repo.refs(patches.BACKUP_PREFIX) == []


# --- export ------------------------------------------------------------------------------------------------


def project_files(env: Env) -> dict[str, bytes]:
    return {str(p.relative_to(env.patches_dir)): p.read_bytes()
            for p in sorted(env.patches_dir.rglob("*")) if p.is_file()}


def test_patch_then_export_leaves_the_project_unchanged(env: Env) -> None:
    make_stack(env, STACK)
    before = project_files(env)
    for vendor in ("nvidia", "ascend", "cpu"):
        patches.patch(vendor)
        result = patches.export(vendor)
        assert result.written == () and result.removed == ()
    assert project_files(env) == before
    assert env.project_status() == ""


def test_every_kind_of_change_round_trips_through_export(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    ws, repo = env.ws("nvidia"), env.repo("nvidia")
    write(ws, "vllm/dos.py", b"x = 1\r\ny = 20\r\n")
    write(ws, "vllm/tail.txt", b"still no final newline")
    write(ws, "vllm/new_tail.txt", b"new, no final newline")
    (ws / "vllm/old.py").rename(ws / "vllm/renamed.py")
    (ws / "vllm/gone.py").unlink()
    (ws / "vllm/run.sh").chmod(0o755)
    write(ws, "vllm/data.bin", bytes(reversed(range(256))))
    write(ws, "vllm/new.bin", b"\x00\xff" * 64)
    repo.run("add", "--all")
    repo.run("add", "--force", "vllm/new.bin")  # upstream's .gitignore says *.bin
    repo.run("commit", "-q", "-m", "nvidia: every kind of change\n\nNew, deleted, renamed, mode, binary, CRLF.",
             env=git.identity_env(AUTHOR))
    wanted_tree = repo.tree_of("HEAD")
    result = patches.export("nvidia")
    assert result.counts == {"common": 2, "nvidia": 2}
    # a new commit is named by its subject, without a number (numbers would shift on every insert)
    assert "vllm/nvidia/nvidia-every-kind-of-change.patch" in result.written
    new_patch = (env.patches_dir / "vllm/nvidia/nvidia-every-kind-of-change.patch").read_bytes()
    for marker in (b"rename from vllm/old.py", b"deleted file mode", b"new mode 100755", b"GIT binary patch",
                   b"\\ No newline at end of file", b"+y = 20\r\n"):
        assert marker in new_patch, marker
    assert patches.read_series("nvidia").names[-1] == "nvidia-every-kind-of-change.patch"
    assert b"Patch-Filename" not in new_patch
    env.snapshot_project()
    exported = project_files(env)

    patches.unpatch("nvidia")
    assert repo.status() == [] and (ws / "vllm/old.py").exists()
    patches.patch("nvidia")
    assert repo.tree_of("HEAD") == wanted_tree
    assert (ws / "vllm/dos.py").read_bytes() == b"x = 1\r\ny = 20\r\n"
    assert (ws / "vllm/new_tail.txt").read_bytes() == b"new, no final newline"
    assert os.access(ws / "vllm/run.sh", os.X_OK)
    assert patches.export("nvidia").written == ()
    assert project_files(env) == exported and env.project_status() == ""


def test_export_splits_common_and_vendor_by_origin_and_position(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    ws, repo, ident = env.ws("nvidia"), env.repo("nvidia"), git.identity_env(AUTHOR)
    first, second, vendor = repo.rev_list(f"{patches.BASE_REF}..HEAD")
    # Rewritten history (new commit ids): origins are found again by subject. A new commit followed by a
    # common patch is common; a new commit at the end is the vendor's.
    repo.run("checkout", "-q", "-B", "main", first)
    write(ws, "vllm/shared.py", "SHARED = 1\n")
    repo.run("add", "--all")
    repo.run("commit", "-q", "-m", "common: shared helper", env=ident)
    repo.run("cherry-pick", second, vendor, env=ident)
    write(ws, "vllm/late.py", "LATE = 1\n")
    repo.run("add", "--all")
    repo.run("commit", "-q", "-m", "nvidia: late addition", env=ident)
    result = patches.export("nvidia")
    assert result.counts == {"common": 3, "nvidia": 2}
    # the inserted patch gets a name of its own; every other patch keeps its file (nothing renumbered)
    assert patches.read_series("common").names == (
        "0001-common-first-change.patch", "common-shared-helper.patch", "0002-common-add-a-module.patch")
    assert patches.read_series("nvidia").names == ("0001-nvidia-tune-a-line.patch", "nvidia-late-addition.patch")
    assert result.removed == ()
    assert sorted(result.written) == ["vllm/common/common-shared-helper.patch", "vllm/common/series",
                                      "vllm/nvidia/nvidia-late-addition.patch", "vllm/nvidia/series"]
    assert patches.read_series("common").header == HEADER
    assert patches.check(["nvidia"])[0].problems == ()

    # A common patch after a vendor patch breaks the order rule, and the message says how to fix it.
    first, shared, added, vendor, late = repo.rev_list(f"{patches.BASE_REF}..HEAD")
    repo.run("checkout", "-q", "-B", "main", first)
    repo.run("cherry-pick", shared, vendor, added, env=ident)
    before = project_files(env)
    with pytest.raises(UserError, match="is a common patch after nvidia patches") as err:
        patches.export("nvidia")
    assert "rebase -i" in (err.value.fix or "")
    assert project_files(env) == before


def test_export_new_into_common(env: Env) -> None:
    make_stack(env, {"common": STACK["common"]})
    patches.patch("cpu")
    write(env.ws("cpu"), "vllm/extra.py", "EXTRA = 1\n")
    env.repo("cpu").run("add", "--all")
    env.repo("cpu").run("commit", "-q", "-m", "common: for everyone", env=git.identity_env(AUTHOR))
    result = patches.export("cpu", new_into="common")
    assert result.counts == {"common": 3, "cpu": 0}
    assert patches.read_series("cpu").names == ()
    assert patches.read_series("cpu").header == HEADER


def test_export_refuses_a_commit_holding_the_stamp_module(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("cpu")
    repo = env.repo("cpu")
    repo.run("add", "--force", patches.STAMP_MODULE)
    repo.run("commit", "-q", "-m", "oops", env=git.identity_env(AUTHOR))
    before = project_files(env)
    with pytest.raises(UserError, match="adds vllm/_flagos_stack.py"):
        patches.export("cpu")
    assert project_files(env) == before


def test_export_refuses_uncommitted_changes(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("ascend")
    write(env.ws("ascend"), "vllm/plugins.py", "changed\n")
    with pytest.raises(UserError, match="uncommitted changes") as err:
        patches.export("ascend")
    assert "commit -a" in (err.value.fix or "")


# --- failures ----------------------------------------------------------------------------------------------


def conflicting_stack(env: Env) -> None:
    make_stack(env, STACK)
    bad = env.patches_dir / "vllm/nvidia/0001-nvidia-tune-a-line.patch"
    bad.write_bytes(bad.read_bytes().replace(b"-# line 5\n", b"-# line FIVE\n"))


def test_a_patch_that_does_not_apply_names_patch_file_and_hunk(env: Env) -> None:
    conflicting_stack(env)
    with pytest.raises(UserError) as err:
        patches.patch("nvidia")
    message = err.value.render()
    assert "vllm/nvidia/0001-nvidia-tune-a-line.patch does not apply" in err.value.what
    assert "vllm/__init__.py" in err.value.what and "hunk #1 (@@ -3,7 +3,7 @@" in err.value.what
    assert "last patch that applied (2 of 3: vllm/common/0002-common-add-a-module.patch)" in message
    assert "am --3way --keep-cr" in message and "nox -s export-patches -- --vendor nvidia" in message
    repo = env.repo("nvidia")
    assert repo.operation_in_progress() is None
    assert repo.status() == []
    assert repo.subject("HEAD") == "common: add a module"
    assert not (env.ws("nvidia") / patches.STAMP_MODULE).exists()
    # Re-running is safe: same failure, same place, nothing lost.
    with pytest.raises(UserError, match="does not apply"):
        patches.patch("nvidia")
    assert repo.subject("HEAD") == "common: add a module"
    # And unpatch gets back to pristine without a backup: nothing there is a user edit.
    assert patches.unpatch("nvidia").backup_ref is None
    assert repo.head() == env.pristine.commit


def test_first_patch_failing_leaves_pristine(env: Env) -> None:
    make_stack(env, {"cpu": [("cpu: edit\n", edit("vllm/plugins.py", "return []", "return [2]"))]})
    bad = env.patches_dir / "vllm/cpu/0001-cpu-edit.patch"
    bad.write_bytes(bad.read_bytes().replace(b"-    return []", b"-    return ()"))
    with pytest.raises(UserError) as err:
        patches.patch("cpu")
    assert "at pristine (no patch applied)" in err.value.render()
    assert "vllm/plugins.py" in err.value.what
    assert env.repo("cpu").head() == env.pristine.commit


def test_check_passes_on_a_canonical_stack(env: Env) -> None:
    make_stack(env, STACK)
    results = patches.check()
    assert [(r.vendor, r.patches, r.problems) for r in results] == [("nvidia", 3, ()), ("ascend", 3, ()),
                                                                   ("cpu", 2, ())]
    assert env.project_status() == ""


def test_check_names_vendor_patch_file_and_hunk_of_a_conflict(env: Env) -> None:
    conflicting_stack(env)
    with pytest.raises(UserError) as err:
        patches.check()
    assert "1 problem(s)" in err.value.what
    assert "nvidia: vllm/nvidia/0001-nvidia-tune-a-line.patch does not apply: vllm/__init__.py, hunk #1" \
        in err.value.what


def test_check_finds_drift_and_stray_files(env: Env) -> None:
    make_stack(env, STACK)
    drifted = env.patches_dir / "vllm/common/0002-common-add-a-module.patch"
    text = drifted.read_bytes()
    drifted.write_bytes(text.replace(b"\ndiff --git", b"---\n vllm/flagos.py | 1 +\n\ndiff --git", 1))
    write(env.patches_dir, "vllm/ascend/0009-forgotten.patch", "not in the series\n")
    with pytest.raises(UserError) as err:
        patches.check()
    what = err.value.what
    for vendor in ("nvidia", "ascend", "cpu"):  # a common file drifts for every vendor
        assert f"{vendor}: vllm/common/0002-common-add-a-module.patch drifts from what export writes" in what
    assert "ascend: vllm/ascend/0009-forgotten.patch is not listed in " in what
    assert "no command applies it: add it to the series (in order) or delete it" in what


def test_workspace_from_another_upstream_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    make_stack(env, STACK)
    patches.patch("cpu")
    other = PristineTree("vllm", "9.9.10", "sdist", "1" * 64, env.pristine.path, env.pristine.repo, "f" * 40, 9)
    monkeypatch.setattr(patches_ws, "fetch_source", lambda lock: other)
    with pytest.raises(UserError, match="another upstream tree"):
        patches.patch("cpu")


def test_patched_tree_is_clean_cached_and_independent_of_the_workspace(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("nvidia")
    write(env.ws("nvidia"), "vllm/plugins.py", "workspace edit, not in the stack\n")
    tree = patches.patched_tree("nvidia")
    stack = patches.stack_info("nvidia")
    assert tree.name == f"vllm-9.9.9-nvidia-{stack.short_id}"
    assert (tree / "vllm/plugins.py").read_text() == "def load():\n    return [1]\n"
    assert (tree / "vllm/flagos.py").read_text() == "ENABLED = True\n"
    assert (tree / patches.STAMP_MODULE).read_text() == patches.stamp_module_text(stack)
    marker = tree / ".git/flagrelease-complete"
    stamp = marker.stat().st_mtime_ns
    assert patches.patched_tree("nvidia") == tree and marker.stat().st_mtime_ns == stamp
    make_stack(env, {**STACK, "nvidia": []})
    newer = patches.patched_tree("nvidia")
    assert newer != tree and not tree.exists() and "# five" not in (newer / "vllm/__init__.py").read_text()


# --- command line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["patch", "unpatch", "export-patches", "check-patches", "fetch-source"])
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if name in ("patch", "unpatch", "export-patches"):
        assert "--vendor {nvidia,ascend,cpu}" in out
    if name == "unpatch":
        assert "--backup" in out


@pytest.mark.parametrize("columns", ["50", "200", "junk"])
def test_help_is_what_argparse_writes_without_its_shutil(columns: str, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from tools.cli import patches as patch_commands

    monkeypatch.setenv("COLUMNS", columns)
    with pytest.raises(SystemExit):
        cli.main(["unpatch", "--help"])
    ours = capsys.readouterr().out
    plain = argparse.ArgumentParser(prog="nox -s unpatch --", description=cli.COMMANDS["unpatch"][1])
    patch_commands.configure("unpatch", plain)
    assert ours == plain.format_help() and "--backup" in ours
    if columns == "50":
        assert max(map(len, ours.splitlines())) <= 48


def test_cli_failure_is_one_message_and_exit_2(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    make_stack(env, STACK)
    assert cli.main(["patch", "--vendor", "cpu"]) == 0
    write(env.ws("cpu"), "vllm/plugins.py", "mine\n")
    assert cli.main(["unpatch", "--vendor", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: the cpu workspace has edits" in err and "Traceback" not in err
    assert cli.main(["unpatch", "--vendor", "cpu", "--backup"]) == 0
    assert "refs/flagrelease/backup/cpu/" in capsys.readouterr().err


def test_an_unreadable_state_file_discards_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """state.json that is not UTF-8 JSON: the commits beyond the base count as the user's (no traceback)."""
    make_stack(env, STACK)
    assert cli.main(["patch", "--vendor", "cpu"]) == 0
    repo = env.repo("cpu")
    tip = repo.head()
    (repo.git_dir / "flagrelease" / "state.json").write_bytes(b"\xff\xfe")
    capsys.readouterr()
    assert cli.main(["unpatch", "--vendor", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "commits not made by `patch`" in err
    assert repo.head() == tip


def files_of(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
            if f.is_file() and ".git" not in f.relative_to(root).parts}


def test_a_git_failure_nobody_expected_is_one_message_and_changes_nothing(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A .git/index.lock left by a crashed git (or another git at work): git's own words, exit 2, no traceback."""
    make_stack(env, STACK)
    assert cli.main(["patch", "--vendor", "cpu"]) == 0
    repo = env.repo("cpu")
    tip, before = repo.head(), files_of(env.ws("cpu"))
    capsys.readouterr()
    (repo.git_dir / "index.lock").touch()
    assert cli.main(["unpatch", "--vendor", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: git reset failed: fatal: Unable to create '{repo.git_dir / 'index.lock'}': File exists." in err
    assert f"where: {env.ws('cpu')}" in err and "index.lock left by a crashed one can be removed" in err
    assert repo.head() == tip and files_of(env.ws("cpu")) == before
    (repo.git_dir / "index.lock").unlink()
    assert cli.main(["unpatch", "--vendor", "cpu"]) == 0 and repo.head() == env.pristine.commit


def test_no_git_on_path_is_one_message_that_says_install_it(
        env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_stack(env, STACK)
    assert cli.main(["patch", "--vendor", "cpu"]) == 0
    capsys.readouterr()
    empty = tmp_path / "no-git"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert cli.main(["unpatch", "--vendor", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "git is not installed (not found on PATH)" in err
    assert "fix:   install git (2.39 or newer) and put it on PATH" in err and "index.lock" not in err


def test_a_git_error_names_the_folder_it_ran_in(tmp_path: Path) -> None:
    with pytest.raises(git.GitError) as err:
        git.git(["status"], cwd=tmp_path)  # not a repository
    assert err.value.repository() == str(tmp_path) and err.value.subcommand() == "status"
    assert "not a git repository" in err.value.said()


# --- fetching the source -----------------------------------------------------------------------------------


class _Server:
    def __init__(self, root: Path) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def log_message(self, *args: object) -> None:
                hits.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    srv.root = root  # type: ignore[attr-defined]
    yield srv
    srv.httpd.shutdown()


def sdist_bytes(top: str, *, owner_uid: int = 4242, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((f"{top}/vllm/__init__.py", b"VERSION = '9.9.9'\n"), (f"{top}/vllm/_version.py", b"v\n"),
                           (f"{top}/.gitignore", b"/vllm/_version.py\n"), (f"{top}/dos.txt", b"a\r\nb\r\n")):
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.uname, info.gname, info.mode = len(data), owner_uid, owner_uid, \
                "someone", "someone", 0o664
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return buffer.getvalue()


def upstream_for(server: _Server, data: bytes, **update: str) -> SimpleNamespace:
    name = "vllm-9.9.9.tar.gz"
    (server.root / name).write_bytes(data)  # type: ignore[attr-defined]
    fields = dict(name="vllm", version="9.9.9", git_url=f"file://{server.root}/no-such-repo.git",  # type: ignore[attr-defined]
                  git_tag="v9.9.9", git_commit="a" * 40, sdist_url=f"{server.url}/{name}",
                  sdist_sha256=hashlib.sha256(data).hexdigest())
    fields.update(update)
    return SimpleNamespace(upstream=Upstream.model_construct(**fields))


def test_sdist_fetch_verifies_unpacks_without_foreign_owners_and_is_free_the_second_time(
        env: Env, server: _Server) -> None:
    lock = upstream_for(server, sdist_bytes("vllm-9.9.9"))
    tree = source.fetch_source(lock, mode="auto", git_timeout=5)  # git fails fast (no repo): falls back
    assert tree.origin == "sdist" and tree.files == 4
    assert (tree.path / "dos.txt").read_bytes() == b"a\r\nb\r\n"
    assert (tree.path / "vllm/_version.py").exists()
    owners = {p.stat().st_uid for p in [tree.path, *tree.path.rglob("*")]}
    assert owners == {os.getuid()}
    assert not any(p.stat().st_mode & 0o002 for p in tree.path.rglob("*"))
    repo = Repo(tree.repo)
    assert repo.rev_parse(source.PRISTINE_BRANCH) == tree.commit
    assert "vllm/_version.py" in repo.out("ls-tree", "-r", "--name-only", tree.commit).split()
    assert server.hits == ["/vllm-9.9.9.tar.gz"]
    again = source.fetch_source(lock)
    assert again == tree and server.hits == ["/vllm-9.9.9.tar.gz"]
    # Same bytes, same base commit, wherever and whenever it is imported.
    assert tree.commit == source.import_tree(tree.path, env.root / "again.git", Repo(tree.repo).out(
        "log", "-1", "--format=%B", tree.commit) + "\n")


def test_sdist_with_a_bad_sha256_unpacks_nothing(env: Env, server: _Server) -> None:
    lock = upstream_for(server, sdist_bytes("vllm-9.9.9"), sdist_sha256="0" * 64)
    with pytest.raises(UserError) as err:
        source.fetch_source(lock, mode="sdist")
    assert "sha256 mismatch" in err.value.what and "nothing was unpacked" in err.value.what
    assert [p.name for p in source.src_dir().iterdir() if p.name != ".lock"] == []
    assert list(source.downloads_dir().iterdir()) == []


def test_a_tampered_cached_download_is_replaced(env: Env, server: _Server) -> None:
    data = sdist_bytes("vllm-9.9.9")
    lock = upstream_for(server, data)
    cached = source.downloads_dir() / "vllm-9.9.9.tar.gz"
    write(cached.parent, cached.name, b"tampered")
    tree = source.fetch_source(lock, mode="sdist")
    assert cached.read_bytes() == data and tree.files == 4


def test_unsafe_or_foreign_archives_are_refused(env: Env, server: _Server) -> None:
    with pytest.raises(UserError, match="does not hold one folder vllm-9.9.9/"):
        source.fetch_source(upstream_for(server, sdist_bytes("other-1.0")), mode="sdist")
    link = tarfile.TarInfo("vllm-9.9.9/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(UserError, match="unsafe member"):
        source.fetch_source(upstream_for(server, sdist_bytes("vllm-9.9.9", extra=[link])), mode="sdist")
    assert not (source.src_dir() / "vllm-9.9.9-").exists()


def test_git_fetch_at_the_pinned_commit(env: Env, server: _Server) -> None:
    up_tree = env.root / "gitup"
    fake_upstream(up_tree)
    origin = git.init(up_tree)
    origin.run("add", "--all", "--force")
    origin.run("commit", "-q", "-m", "upstream release", env=git.identity_env(AUTHOR))
    commit = origin.head()
    assert commit
    lock = upstream_for(server, b"unused", git_url=f"file://{up_tree}", git_commit=commit)
    tree = source.fetch_source(lock, mode="git")
    assert tree.origin == "git" and tree.commit == commit and tree.path.name == f"vllm-9.9.9-{commit[:12]}"
    assert (tree.path / "vllm/dos.py").read_bytes() == b"x = 1\r\ny = 2\r\n"
    assert server.hits == []
    assert source.fetch_source(lock) == tree  # auto: the cached git tree, no network


def test_git_mode_without_a_reachable_remote_is_a_user_error(env: Env, server: _Server) -> None:
    lock = upstream_for(server, sdist_bytes("vllm-9.9.9"))
    with pytest.raises(UserError, match="cannot fetch") as err:
        source.fetch_source(lock, mode="git", git_timeout=5)
    assert "--from sdist" in (err.value.fix or "")
    with pytest.raises(UserError, match="unknown source mode"):
        source.fetch_source(lock, mode="ftp")
