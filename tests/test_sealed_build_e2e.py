"""An encrypted vendor patch builds into the real cpu image with the key, and its plaintext lands nowhere else.

Needs a Docker engine with BuildKit and the cached cpu build inputs (a real `build-cpu` style build, about
1-3 minutes when the lower layers are cached). The marker is a comment line: comments never reach bytecode,
so the one place it may appear in the image is the patched source file itself.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import build_recipe, write

from tools.core import labels, paths
from tools.core.errors import UserError
from tools.mech import age, git
from tools.mech.git import Identity, Repo
from tools.stages import patches, record
from tools.stages.patches import keys
from tools.stages.plan import BuildOptions, plan_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

PROJECT_PATCHES = Path(__file__).resolve().parents[1] / "patches"
SECRET_FILE = "vllm/flagos_vendor_secret.py"
SITE = "/opt/venv/lib/python3.11/site-packages/"
AUTHOR = Identity("Vendor Dev", "dev@vendor.example", "2026-11-20T09:00:00+0000")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def _image_id(ref: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True,
                          check=False)
    return proc.stdout.strip() or None


def _use_key(monkeypatch: pytest.MonkeyPatch, path: Path | None) -> None:
    if path is None:
        monkeypatch.delenv(keys.KEY_FILE_ENV, raising=False)
    else:
        monkeypatch.setenv(keys.KEY_FILE_ENV, str(path))
    monkeypatch.delenv(keys.KEY_ENV, raising=False)
    keys._keyring.cache_clear()
    keys._PLAIN.clear()


def test_an_encrypted_patch_builds_into_the_cpu_image_and_nowhere_else(debian_base, build_dir, tmp_path,
                                                                        monkeypatch):
    marker = f"FLAGREL-SEALED-MARKER-{secrets.token_hex(6)}"
    project = tmp_path / "project"
    shutil.copytree(PROJECT_PATCHES, project / "patches")
    monkeypatch.setenv("FLAGREL_PATCHES", str(project / "patches"))
    monkeypatch.setenv("FLAGREL_WORKSPACES", str(tmp_path / "workspaces"))
    identity, recipient = age.generate()
    key = write(tmp_path / "keys", "patch-key.txt", f"# public key: {recipient}\n{identity}\n", 0o600)
    _use_key(monkeypatch, key)
    (project / "patches/vllm/cpu/recipients").write_text(f"{recipient}\n")

    # a vendor's secret module, committed in the workspace and exported encrypted (the name says so)
    patches.patch("cpu")
    ws = patches.workspace_dir("cpu")
    write(ws, SECRET_FILE, f"# {marker}: vendor code that may not be published\nVENDOR_KERNEL = 'fused'\n")
    repo = Repo.at(ws)
    repo.run("add", SECRET_FILE)
    repo.run("commit", "-q", "-m", "cpu: vendor kernel\n\nPatch-Filename: 0001-cpu-vendor-kernel.patch.age",
             env=git.identity_env(AUTHOR))
    assert "vllm/cpu/0001-cpu-vendor-kernel.patch.age" in patches.export("cpu").written
    sealed = project / "patches/vllm/cpu/0001-cpu-vendor-kernel.patch.age"
    assert age.is_age(sealed.read_bytes())
    for path in (project / "patches").rglob("*"):
        assert not path.is_file() or marker.encode() not in path.read_bytes(), path

    _use_key(monkeypatch, None)
    with pytest.raises(UserError) as err:
        plan_for("tiny-cpu", "cpu", BuildOptions())
    assert "vllm/cpu/0001-cpu-vendor-kernel.patch.age: no key: the age identity of " + recipient in err.value.where
    assert keys.KEY_FILE_ENV in (err.value.fix or "")
    _use_key(monkeypatch, key)

    ref = "flagrelease-local/tiny-cpu:latest"
    previous = _image_id(ref)
    name = f"flagrel-sealed-scan-{secrets.token_hex(4)}"
    image = None
    try:
        ctx, image = build_recipe("tiny-cpu", "cpu")
        assert not image.skipped and ctx.plan.install_mode == "wheel-overlay"
        assert SECRET_FILE in ctx.plan.stack.touched
        assert oct(ctx.directory.stat().st_mode & 0o777) == "0o700"
        # the patched source file holds it, as it should
        inside = _docker("run", "--rm", "--network", "none", "--entrypoint", "cat", image.image_id, SITE + SECRET_FILE)
        assert marker in inside
        # history, config (labels), build log, Dockerfile, plan and release record do not
        found = json.loads(_docker("image", "inspect", image.image_id))[0]["Config"]["Labels"]
        stack_record = record.patch_stack_from(found, "cpu")
        assert [f.path for f in stack_record.files][-1] == "vllm/cpu/0001-cpu-vendor-kernel.patch.age"
        texts = {
            "history": _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.image_id),
            "inspect": _docker("image", "inspect", image.image_id),
            "build log": image.log.read_text() if image.log else "",
            "Dockerfile": ctx.dockerfile.read_text(),
            "plan": ctx.plan.to_json(),
            "record": stack_record.model_dump_json(),
        }
        assert found[labels.STACK_ID] == patches.stack_info("cpu").short_id
        for what, text in texts.items():
            assert marker not in text, what
        # the plaintext tree was made for the context and removed; nothing of it is cached
        assert list((build_dir / "contexts").glob(".patched-*")) == []
        stack_id = patches.stack_info("cpu").short_id
        assert list((paths.cache_dir() / "patched").glob(f"*-cpu-{stack_id}")) == []
        # every file of the image filesystem: the marker line is there once, in the patched file above
        subprocess.run(["docker", "create", "--name", name, image.image_id], check=True, capture_output=True)
        export = subprocess.Popen(["docker", "export", name], stdout=subprocess.PIPE)
        grep = subprocess.run(["grep", "-a", "-c", "-F", marker], stdin=export.stdout, capture_output=True,
                              text=True, check=False)
        export.wait()
        assert grep.stdout.strip() == "1"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        if previous:
            subprocess.run(["docker", "tag", previous, ref], capture_output=True, check=False)
        if image is not None and image.image_id != previous:
            subprocess.run(["docker", "rmi", "-f", image.image_id], capture_output=True, check=False)
