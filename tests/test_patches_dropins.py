"""Vendor drop-ins on the fake upstream: import-patches, stable names, real causes, encrypted patches."""
# ruff: noqa: F811  (the env fixture comes from test_patches_unit)

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import write
from test_patches_unit import AUTHOR, STACK, Env, add, env, make_stack, project_files  # noqa: F401
from vendor_series import Spec, make_series, plain_diffs

from tools import cli
from tools.core.errors import UserError
from tools.mech import age, git, gitmail
from tools.mech.gitmail import IndexAm
from tools.stages import patches
from tools.stages.patches import keys

SPEC = Spec(multi_hunk="vllm/__init__.py", deleted="vllm/gone.py", renamed=("vllm/old.py", "vllm/renamed.py"),
            mode="vllm/run.sh", binary="vllm/kernel.bin", crlf="vllm/dos.py")
MARKER = "FLAGREL-VENDOR-SECRET-2b7e1f"


def common_base(env: Env) -> tuple[str, list[Path]]:
    """The commit our common part makes on pristine (the base a vendor works on), and its patch files."""
    common = [p.path for p in patches.stack_info("cpu").patches if p.part == "common"]
    return env.pristine.commit, common


def vendor_folder(env: Env, name: str = "drop") -> tuple[Path, str]:
    base, common = common_base(env)
    files, tree = make_series(env.pristine.repo, base, env.root / f"{name}-clone", env.root / name, SPEC, common)
    assert [f.name for f in files][0] == "0000-cover-letter.patch" and len(files) == 8
    return env.root / name, tree


# --- import-patches ----------------------------------------------------------------------------------------


def test_a_format_patch_series_imports_canonically_and_round_trips(env: Env) -> None:
    make_stack(env, {"common": STACK["common"]})
    folder, vendor_tree = vendor_folder(env)
    raw = (folder / "0002-vendor-add-the-vendorpkg-package.patch").read_bytes()
    assert b"Subject: [PATCH 2/7]" in raw and b" 2 files changed" in raw and b"\n-- \n" in raw

    result = patches.import_series("cpu", folder)
    names = [f.name for f in result.files]
    assert names == [f.name for f in sorted(folder.iterdir()) if f.name != "0000-cover-letter.patch"]
    assert result.skipped == ("0000-cover-letter.patch: cover letter ([PATCH 0/7]), no change in it",)
    notes = {f.name: f.notes for f in result.files}
    for note in ("subject '[PATCH 2/7] vendor: add the vendorpkg package' -> '[PATCH] vendor: add the vendorpkg "
                 "package'", "diffstat dropped", "abbreviated index lines made full (40 hex)",
                 "signature (-- / git version) dropped", "From line: commit id replaced by zeros"):
        assert note in notes["0002-vendor-add-the-vendorpkg-package.patch"], note
    assert patches.read_series("cpu").names == tuple(names)
    stored = (env.patches_dir / "vllm/cpu" / names[1]).read_bytes()
    assert b"Subject: [PATCH] vendor: add the vendorpkg package\n" in stored
    assert b" 2 files changed" not in stored and b"\n-- \n" not in stored and b"Patch-Filename" not in stored
    for marker in (b"rename from vllm/old.py", b"deleted file mode", b"new mode 100755", b"GIT binary patch",
                   b"\\ No newline at end of file", b"+# vendor: CRLF line\r\n"):
        assert any(marker in (env.patches_dir / "vllm/cpu" / n).read_bytes() for n in names), marker
    assert [r.problems for r in patches.check(["cpu"])] == [()]

    env.snapshot_project()
    before = project_files(env)
    again = patches.import_series("cpu", folder)  # the vendor re-sends the same series
    assert again.written == () and again.removed == ()
    assert project_files(env) == before and env.project_status() == ""

    # the workspace holds exactly the vendor's tree, and export changes nothing either
    done = patches.patch("cpu")
    assert done.applied == 9 and env.repo("cpu").tree_of("HEAD") == vendor_tree
    assert (env.ws("cpu") / "vllm/dos.py").read_bytes().endswith(b"\r\n# vendor: CRLF line\r\ny = 2")
    assert os.access(env.ws("cpu") / "vllm/run.sh", os.X_OK)
    assert patches.export("cpu").written == () and env.project_status() == ""


def test_index_am_makes_the_commits_patch_makes(env: Env) -> None:
    """check-patches and import commit through a private index: the same commit ids as `git am`."""
    make_stack(env, {"common": STACK["common"]})
    patches.import_series("cpu", vendor_folder(env)[0])
    applied = patches.patch("cpu")
    by_am = env.repo("cpu").rev_list(f"{env.pristine.commit}..HEAD")
    scratch = git.clone_local(env.pristine.repo, env.root / "scratch.git", shared=True)
    by_index = IndexAm(scratch, env.root, patches.APPLIER).apply(
        env.pristine.commit, patches.workspace.stack_mails(applied.stack.patches))
    assert by_index == by_am


def test_plain_diffs_need_an_author_and_then_import(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    make_stack(env, {"common": STACK["common"]})
    base, _ = common_base(env)
    folder = env.root / "plain"
    plain_diffs(env.pristine.repo, base, env.root / "plain-work" / "clone", folder, SPEC)
    with pytest.raises(UserError) as err:
        patches.import_series("nvidia", folder)
    assert "tune-two-places.diff is a plain diff, not a git mail: it names no author" in err.value.what
    assert err.value.where == f"{folder / 'tune-two-places.diff'}:5" and "--author" in (err.value.fix or "")
    with pytest.raises(UserError, match="is not 'Name <mail>'"):
        patches.import_series("nvidia", folder, author="nobody")

    args = ["import-patches", "--vendor", "nvidia", str(folder), "--author", "Ada Vendor <ada@v.example>"]
    assert cli.main(args) == 0
    out = capsys.readouterr().err
    assert "tune-two-places.diff -> patches/vllm/nvidia/tune-two-places.patch" in out
    assert "plain diff made a git mail: author Ada Vendor <ada@v.example>" in out
    assert "subject 'Tune two places.'" in out
    assert patches.read_series("nvidia").names == ("tune-two-places.patch", "add-plain-module.patch")
    mail = (env.patches_dir / "vllm/nvidia/tune-two-places.patch").read_bytes()
    assert b"From: Ada Vendor <ada@v.example>\n" in mail and b"The vendor's plain diff, with a description." in mail
    assert b"new file mode 100644" in (env.patches_dir / "vllm/nvidia/add-plain-module.patch").read_bytes()
    env.snapshot_project()
    assert patches.import_series("nvidia", folder, author="Ada Vendor <ada@v.example>").written == ()
    assert [r.problems for r in patches.check(["nvidia"])] == [()]


def test_a_series_made_on_another_base_names_file_hunk_and_line(env: Env) -> None:
    make_stack(env, {"common": STACK["common"]})
    folder, _ = vendor_folder(env)
    first = folder / "0001-vendor-tune-two-places-in-one-file.patch"
    first.write_bytes(first.read_bytes().replace(b" # line 26\n", b" # line twenty-six\n", 1))
    header = [line for line in first.read_text().splitlines() if line.startswith("@@ ")][1]
    with pytest.raises(UserError) as err:
        patches.import_series("cpu", folder)
    what = err.value.what
    assert what.startswith("0001-vendor-tune-two-places-in-one-file.patch does not apply on vllm 9.9.9")
    assert f"vllm/__init__.py, hunk #2 ({header})" in what
    assert "the file does not hold the hunk's context (wrong base" in what
    assert "git: " in what and "patch does not apply" in what  # git's own words are kept
    line = next(i for i, text in enumerate(first.read_text().splitlines(), 1) if text == header)
    assert err.value.where == f"{first}:{line}"
    assert "another base" in (err.value.fix or "")
    assert patches.read_series("cpu").names == ()  # nothing written


def test_not_a_patch_and_empty_patch_are_named(env: Env) -> None:
    make_stack(env, {"common": STACK["common"]})
    folder, _ = vendor_folder(env)
    write(folder, "0003-vendor-drop-an-unused-file.patch", "Meeting notes: remember to send the patches.\n")
    with pytest.raises(UserError) as err:
        patches.import_series("cpu", folder)
    assert err.value.what.startswith("0003-vendor-drop-an-unused-file.patch is not a patch: neither mail headers")
    assert err.value.where == f"{folder / '0003-vendor-drop-an-unused-file.patch'}:1"
    write(folder, "0003-vendor-drop-an-unused-file.patch",
          "From: V <v@x.example>\nSubject: [PATCH 3/7] nothing\n\nJust words.\n")
    with pytest.raises(UserError, match="is an empty patch: the mail has a message but no diff"):
        patches.import_series("cpu", folder)


@pytest.mark.parametrize(("content", "message", "line"), [
    (b"just some notes\n", "is not a patch: neither mail headers", 1),
    (b"From: V <v@x.example>\nSubject: [PATCH] words only\n\nno diff here\n", "is an empty patch", 4),
    (b"--- a/vllm/plugins.py\n+++ b/vllm/plugins.py\n@@ -1 +1 @@\n-def load():\n+def load():  # x\n",
     "is not a git mail: a diff without mail headers", 1),
])
def test_a_series_entry_that_is_no_git_mail_is_named_before_git_runs(env: Env, content: bytes, message: str,
                                                                     line: int) -> None:
    make_stack(env, STACK)
    bad = write(env.patches_dir, "vllm/cpu/0001-bad.patch", content)
    (env.patches_dir / "vllm/cpu/series").write_text("0001-bad.patch\n")
    with pytest.raises(UserError) as err:
        patches.patch("cpu")
    assert f"vllm/cpu/0001-bad.patch {message}" in err.value.what
    assert err.value.where == f"{bad}:{line}"
    assert not patches.workspace_dir("cpu").exists()
    with pytest.raises(UserError, match=f"cpu: vllm/cpu/0001-bad.patch {message}"):
        patches.check(["cpu"])


def test_unlisted_patch_files_are_warned_by_patch_and_refused_by_check(env: Env,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_stack(env, STACK)
    write(env.patches_dir, "vllm/cpu/0002-forgotten.patch", "not in the series\n")
    assert cli.main(["patch", "--vendor", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: vllm/cpu/0002-forgotten.patch is not listed in" in err and "check-patches refuses" in err
    assert cli.main(["check-patches", "--vendor", "cpu"]) == 1
    assert "cpu: vllm/cpu/0002-forgotten.patch is not listed in" in capsys.readouterr().err


# --- stable names ------------------------------------------------------------------------------------------


def test_a_patch_keeps_its_name_through_edit_and_insert(env: Env) -> None:
    make_stack(env, STACK)
    (env.patches_dir / "vllm/common/0001-common-first-change.patch").rename(
        env.patches_dir / "vllm/common/first-change-by-hand.patch")
    series = env.patches_dir / "vllm/common/series"
    series.write_text(series.read_text().replace("0001-common-first-change.patch", "first-change-by-hand.patch"))
    env.snapshot_project()
    patches.patch("nvidia")
    repo, ws = env.repo("nvidia"), env.ws("nvidia")
    assert repo.out("log", "-1", "--format=%B", "HEAD~2").endswith("Patch-Filename: first-change-by-hand.patch")
    # amend the first patch (rebase keeps the trailer), insert a new commit after it
    first, second, third = repo.rev_list(f"{patches.BASE_REF}..HEAD")
    ident = git.identity_env(AUTHOR)
    repo.run("checkout", "-q", "-B", "main", first)
    write(ws, "vllm/plugins.py", "def load():\n    return [1, 2]\n")
    repo.run("commit", "-q", "-a", "--amend", "--no-edit", env=ident)
    write(ws, "vllm/inserted.py", "INSERTED = 1\n")
    repo.run("add", "--all")
    repo.run("commit", "-q", "-m", "common: an inserted patch", env=ident)
    repo.run("cherry-pick", second, third, env=ident)
    result = patches.export("nvidia")
    assert patches.read_series("common").names == ("first-change-by-hand.patch", "common-an-inserted-patch.patch",
                                                   "0002-common-add-a-module.patch")
    assert sorted(result.written) == ["vllm/common/common-an-inserted-patch.patch",
                                      "vllm/common/first-change-by-hand.patch", "vllm/common/series"]
    assert result.removed == ()
    assert [r.problems for r in patches.check()] == [(), (), ()]


def test_new_commits_with_the_same_subject_get_distinct_names(env: Env) -> None:
    make_stack(env, {"common": STACK["common"]})
    patches.patch("cpu")
    for n in (1, 2):
        write(env.ws("cpu"), f"vllm/twin{n}.py", f"TWIN = {n}\n")
        env.repo("cpu").run("add", "--all")
        env.repo("cpu").run("commit", "-q", "-m", "cpu: twin", env=git.identity_env(AUTHOR))
    patches.export("cpu")
    assert patches.read_series("cpu").names == ("cpu-twin.patch", "cpu-twin-2.patch")


def test_mail_helpers_round_trip_the_filename_line() -> None:
    mail = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\n"
            b"Subject: [PATCH] s\n\nbody\n\nSigned-off-by: A <a@b>\n\ndiff --git a/x b/x\n")
    tagged = gitmail.add_filename(mail, "x.patch")
    assert gitmail.filename_of(tagged) == "x.patch" and gitmail.remove_filename(tagged) == mail
    assert gitmail.sanitized_subject("vendor: [fix] the Foo..bar thing!") == "vendor-fix-the-Foo.bar-thing"
    assert gitmail.strip_subject_prefix("[PATCH v2 3/7] [RFC] x: y") == "x: y"


# --- encrypted patches -------------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    identity, recipient = age.generate()
    path = write(tmp_path / "keys", "patch-key.txt", f"# public key: {recipient}\n{identity}\n")
    path.chmod(0o600)
    monkeypatch.setenv(keys.KEY_FILE_ENV, str(path))
    monkeypatch.delenv(keys.KEY_ENV, raising=False)
    keys._keyring.cache_clear()
    keys._PLAIN.clear()
    yield path, recipient
    keys._keyring.cache_clear()
    keys._PLAIN.clear()


def sealed_stack(env: Env, recipient: str) -> Path:
    """common (public) + cpu: one public patch, one encrypted patch carrying MARKER, one public after it."""
    make_stack(env, {"common": STACK["common"], "cpu": [
        ("cpu: public tune\n", add("vllm/cpu_public.py", "PUBLIC = 1\n")),
        ("cpu: vendor secret kernel\n\nNot for publication.\n", add("vllm/cpu_secret.py", f"# {MARKER}\nK = 1\n")),
        ("cpu: public after\n", add("vllm/cpu_after.py", "AFTER = 1\n")),
    ]})
    folder = env.patches_dir / "vllm/cpu"
    plain = folder / "0002-cpu-vendor-secret-kernel.patch"
    sealed = folder / "0002-cpu-vendor-secret-kernel.patch.age"
    sealed.write_bytes(age.encrypt(plain.read_bytes(), [recipient]))
    plain.unlink()
    (folder / "series").write_text((folder / "series").read_text().replace(plain.name, sealed.name))
    (folder / "recipients").write_text(f"# the vendor's and FlagRelease's keys\n{recipient}\n")
    env.snapshot_project()
    return sealed


def no_marker_in(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path


def test_encrypt_decrypt_round_trip_and_wrong_keys(tmp_path: Path) -> None:
    identity, recipient = age.generate()
    other, _ = age.generate()
    data = b"diff --git a/x b/x\r\n+" + MARKER.encode() + b"\x00\xff"
    sealed = age.encrypt(data, [recipient])
    assert sealed.startswith(age.ARMOR_BEGIN) and MARKER.encode() not in sealed
    assert age.encrypt(data, [recipient]) != sealed  # random: export must keep unchanged ciphertext
    assert age.decrypt(sealed, age.parse_identities(identity)) == data
    with pytest.raises(age.AgeError, match="No matching keys"):
        age.decrypt(sealed, age.parse_identities(other))
    with pytest.raises(age.AgeError):
        age.decrypt(sealed.replace(b"\n", b"\nX", 3), age.parse_identities(identity))
    with pytest.raises(age.AgeError, match="line 1 is not an age identity"):
        age.parse_identities("not-a-key\n")


def test_an_encrypted_patch_applies_exports_unchanged_and_reencrypts_on_change(env: Env, key) -> None:
    sealed = sealed_stack(env, key[1])
    ciphertext = sealed.read_bytes()
    result = patches.patch("cpu")
    assert result.applied == 5
    assert MARKER in (env.ws("cpu") / "vllm/cpu_secret.py").read_text()
    assert "vllm/cpu_secret.py" in result.stack.touched
    assert [(r.problems, r.unchecked) for r in patches.check(["cpu"])] == [((), ())]
    assert patches.export("cpu").written == () and sealed.read_bytes() == ciphertext

    repo = env.repo("cpu")
    public_after = repo.head()
    repo.run("checkout", "-q", "-B", "main", "HEAD~1")
    write(env.ws("cpu"), "vllm/cpu_secret.py", f"# {MARKER}\nK = 2\n")
    repo.run("commit", "-q", "-a", "--amend", "--no-edit", env=git.identity_env(AUTHOR))
    repo.run("cherry-pick", public_after, env=git.identity_env(AUTHOR))
    written = patches.export("cpu").written
    assert written == ("vllm/cpu/0002-cpu-vendor-secret-kernel.patch.age",)
    assert sealed.read_bytes() != ciphertext and sealed.read_bytes().startswith(age.ARMOR_BEGIN)
    assert b"+K = 2" in age.decrypt(sealed.read_bytes(), age.parse_identities(key[0].read_text()))
    no_marker_in(env.patches_dir)
    assert [(r.problems, r.unchecked) for r in patches.check(["cpu"])] == [((), ())]


def test_without_the_key_patch_refuses_and_check_checks_the_rest(env: Env, key, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sealed_stack(env, key[1])
    monkeypatch.delenv(keys.KEY_FILE_ENV)
    keys._PLAIN.clear()
    with pytest.raises(UserError) as err:
        patches.patch("cpu")
    assert "cannot patch the cpu workspace (nothing was applied): 1 encrypted patch(es) cannot be read" \
        in err.value.what
    assert "vllm/cpu/0002-cpu-vendor-secret-kernel.patch.age: no key: the age identity of " + key[1] \
        in (err.value.where or "")
    assert keys.KEY_FILE_ENV in (err.value.fix or "") and keys.KEY_ENV in (err.value.fix or "")
    assert not patches.workspace_dir("cpu").exists()

    results = patches.check(["cpu"])
    assert results[0].problems == () and results[0].checked == 3 and len(results[0].unchecked) == 2
    assert "0003-cpu-public-after.patch: not checked (it applies after an encrypted patch" in results[0].unchecked[1]
    assert cli.main(["check-patches", "--vendor", "cpu"]) == 0
    out = capsys.readouterr().err
    assert "3 of 5 patches apply" in out and "unchecked: vllm/cpu/0002-cpu-vendor-secret-kernel.patch.age" in out
    assert cli.main(["check-patches", "--vendor", "cpu", "--require-keys"]) == 2
    # the public parts are still checked: drift in common is found while the secret one is skipped
    first = env.patches_dir / "vllm/common/0001-common-first-change.patch"
    first.write_bytes(first.read_bytes().replace(b"change exists.\n", b"change exists.   \n"))  # git strips that
    with pytest.raises(UserError, match="cpu: vllm/common/0001-common-first-change.patch drifts"):
        patches.check(["cpu"])
    assert MARKER not in capsys.readouterr().err


def test_a_wrong_key_or_a_key_inside_the_repo_is_refused(env: Env, key, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed_stack(env, key[1])
    identity, recipient = age.generate()
    wrong = write(env.root / "keys", "wrong.txt", identity + "\n")
    monkeypatch.setenv(keys.KEY_FILE_ENV, str(wrong))
    keys._PLAIN.clear()
    with pytest.raises(UserError) as err:
        patches.patch("cpu")
    where = err.value.where or ""
    assert f"No matching keys found with the key from {keys.KEY_FILE_ENV}={wrong} (public key {recipient})" in where
    assert key[1] in where and identity not in err.value.render()
    inside = write(env.patches_dir, "vllm/cpu/key.txt", identity + "\n")
    monkeypatch.setenv(keys.KEY_FILE_ENV, str(inside))
    with pytest.raises(UserError, match="the patch key file lies inside"):
        patches.patch("cpu")


def test_a_vendor_sends_an_encrypted_patch(env: Env, key) -> None:
    make_stack(env, {"common": STACK["common"]})
    folder, _ = vendor_folder(env)
    secret = folder / "0002-vendor-add-the-vendorpkg-package.patch"
    (folder / (secret.name + ".age")).write_bytes(age.encrypt(secret.read_bytes(), [key[1]]))
    secret.unlink()
    (env.patches_dir / "vllm/cpu/recipients").write_text(key[1] + "\n")
    result = patches.import_series("cpu", folder)
    assert result.files[1].name == "0002-vendor-add-the-vendorpkg-package.patch.age"
    assert "stays encrypted (age)" in result.files[1].notes and "diffstat dropped" in result.files[1].notes
    stored = (env.patches_dir / "vllm/cpu" / result.files[1].name).read_bytes()
    assert age.is_age(stored) and b"vendorpkg" not in stored
    env.snapshot_project()
    assert patches.import_series("cpu", folder).written == ()
    assert [(r.problems, r.unchecked) for r in patches.check(["cpu"])] == [((), ())]
    digest = hashlib.sha256(stored).hexdigest()
    assert patches.stack_info("cpu").patches[3].sha256 == digest  # the stack id counts the ciphertext


def test_a_build_tree_of_an_encrypted_stack_is_never_cached(env: Env, key, tmp_path: Path) -> None:
    sealed_stack(env, key[1])
    with pytest.raises(UserError, match="never cached"):
        patches.patched_tree("cpu")
    with patches.patched_source("cpu", near=tmp_path / "contexts") as tree:
        assert MARKER in (tree / "vllm/cpu_secret.py").read_text()
        assert oct(tree.parent.stat().st_mode & 0o777) == "0o700"
    assert not tree.exists() and list((tmp_path / "contexts").iterdir()) == []
    assert not (Path(os.environ["FLAGREL_CACHE"]) / "patched").exists()


# --- patch on a pristine workspace: no edit check first, and still no edit lost ---------------------------------


def test_patch_at_pristine_keeps_edits_and_stops_when_one_is_in_the_way(env: Env) -> None:
    make_stack(env, STACK)
    patches.patch("cpu")
    patches.unpatch("cpu")
    ws, repo = env.ws("cpu"), env.repo("cpu")
    write(ws, "vllm/dos.py", b"my own edit\r\n")  # no patch touches it: it rides along
    assert patches.patch("cpu").applied == 2
    assert (ws / "vllm/dos.py").read_bytes() == b"my own edit\r\n"
    with pytest.raises(UserError, match="never discards"):
        patches.unpatch("cpu")
    assert patches.unpatch("cpu", backup=True).backup_ref

    write(ws, "vllm/plugins.py", "def load():\n    return ['mine']\n")  # the first patch changes this file
    write(ws, "vllm/flagos.py", "MINE = 1\n")  # the second patch creates this one
    with pytest.raises(UserError, match="patching would discard them") as err:
        patches.patch("cpu")
    assert "vllm/plugins.py" in (err.value.where or "") and "vllm/flagos.py" in (err.value.where or "")
    assert (ws / "vllm/plugins.py").read_text() == "def load():\n    return ['mine']\n"
    assert (ws / "vllm/flagos.py").read_text() == "MINE = 1\n"
    assert repo.head() == env.pristine.commit and repo.operation_in_progress() is None
