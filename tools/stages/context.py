"""BuildPlan + patched source -> a build context directory and its content key.

The context holds only what the Dockerfile reads: the rendered Dockerfile, a wheelhouse of verified wheels
(bind-mounted into pip steps, never copied into a layer) and either the patched files to overlay on the
upstream wheel, or the whole patched tree for a source build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.lock import File, LoadedLock, LocalWheel
from tools.mech.console import warn
from tools.mech.download import download_verified, sha256_file
from tools.stages import pylock
from tools.stages.plan import BuildOptions, BuildPlan
from tools.stages.render import is_locked, render_dockerfile


@dataclass(frozen=True)
class BuildContext:
    plan: BuildPlan
    directory: Path
    dockerfile: Path
    content_key: str


def _download(artifact: File) -> Path:
    """A pinned file, fetched into the cache once; a sha256 mismatch keeps nothing."""
    return download_verified(artifact.url, paths.cache_dir() / "wheels" / artifact.filename, artifact.sha256,
                             where=f"versions.lock ({artifact.filename})")


def wheel_folders(options: BuildOptions) -> list[Path]:
    folders = list(options.wheelhouse)
    # pip's own find-links configuration is where machines keep wheels that no index has
    entries = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            entries += value.strip().strip("'\"").split()
    for entry in dict.fromkeys(entries):
        folders.append(Path(entry.removeprefix("file://")))
    return folders


def _local_wheel(wheel: LocalWheel, options: BuildOptions) -> Path:
    for folder in wheel_folders(options):
        candidate = folder / wheel.filename
        if candidate.is_file():
            if sha256_file(candidate) != wheel.sha256:
                raise UserError(f"{candidate} does not match the sha256 the lock pins",
                                where="versions.lock -> wheelhouse", fix="use the wheel the lock names")
            return candidate
    raise UserError(
        f"wheel {wheel.filename} not found in any wheel folder",
        where=", ".join(map(str, wheel_folders(options))) or "(no --wheelhouse given, PIP_FIND_LINKS unset)",
        fix="pass --wheelhouse DIR holding that file (it is not on PyPI)",
    )


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _wheel_files(wheel: Path, members: list[str]) -> dict[str, bytes | None]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        return {m: archive.read(m) if m in names else None for m in members}


def _overlay(plan: BuildPlan, pristine: Path, patched: Path, engine_wheel: Path, dest: Path) -> str | None:
    """Copy the patched files; return why the fast path is impossible, or None."""
    touched = [p for p in plan.stack.touched if p.startswith("vllm/")]
    in_wheel = _wheel_files(engine_wheel, touched)
    for rel in touched:
        before = pristine / rel
        after = patched / rel
        if not after.exists():
            return f"the stack removes {rel}; an overlay cannot remove files"
        wheel_bytes = in_wheel[rel]
        if before.exists() and wheel_bytes != before.read_bytes():
            return f"{rel} in {engine_wheel.name} differs from the pristine upstream file"
        if not before.exists() and wheel_bytes is not None:
            return f"{rel} is new in the stack but exists in {engine_wheel.name}"
        _link(after, dest / rel)
    return None


def prepare_context(plan: BuildPlan, loaded: LoadedLock, recipe_file: Path, options: BuildOptions,
                    *, pristine: Path, patched: Path, stamp_text: str) -> BuildContext:
    lock = loaded.lock
    pins = lock.vendors[plan.vendor]
    directory = paths.build_dir() / "contexts" / plan.recipe
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "wheelhouse").mkdir(parents=True)
    if any(path.endswith(".patch.age") for path, _ in plan.stack.patch_files):
        # decrypted vendor code lands here (and in the image): this context is the owner's alone
        directory.chmod(0o700)
    wheels = [_download(lock.flaggems.wheel), _download(lock.flagscale.wheel)]
    wheels += [_local_wheel(w, options) for w in pins.wheelhouse]
    engine_wheel = _download(pins.engine_wheel) if pins.engine_wheel else None
    for wheel in wheels + ([engine_wheel] if engine_wheel else []):
        _link(wheel, directory / "wheelhouse" / wheel.name)

    if plan.install_mode == "wheel-overlay":
        assert engine_wheel is not None
        why_not = _overlay(plan, pristine, patched, engine_wheel, directory / "overlay")
        if why_not:
            warn(f"fast path impossible: {why_not}; falling back to a source build")
            plan = replace(plan, install_mode="source", install_reason=f"fallback: {why_not}")
            shutil.rmtree(directory / "overlay", ignore_errors=True)
        else:
            (directory / "overlay" / "vllm" / "_flagos_stack.py").write_text(stamp_text)
    if plan.install_mode == "source":
        shutil.copytree(patched, directory / "source", ignore=shutil.ignore_patterns(".git"), symlinks=True)
        (directory / "source" / "vllm" / "_flagos_stack.py").write_text(stamp_text)
    for rel, text in plan.flagscale_files.items():
        target = directory / "flagscale" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    sources = vendors.get(plan.vendor).entrypoint_sources
    if sources:
        # the vendor's environments (CANN, ATB) for every process in the container, then the command
        entry = directory / "entrypoint.sh"
        lines = ["#!/bin/bash", "set -e", *(f"source {shlex.quote(s)}" for s in sources), 'exec "$@"']
        entry.write_text("\n".join(lines) + "\n")
        entry.chmod(0o755)

    if is_locked(plan):
        _locked_folder(plan, directory)
    dockerfile = directory / "Dockerfile"
    text = render_dockerfile(plan, loaded)
    dockerfile.write_text(text)
    (directory / ".dockerignore").write_text("Dockerfile\n")
    key = content_key(directory, plan, recipe_file, options)
    return BuildContext(plan=plan, directory=directory, dockerfile=dockerfile, content_key=key)


def _locked_folder(plan: BuildPlan, directory: Path) -> None:
    """locked/: the single-node part of locks/<vendor>.txt and the uv binary, bind-mounted by the install
    step (context bytes, so the content key covers the lock and the uv that installs it); a multi-node
    image's Ray part in locked-multinode/, installed by a later step, so that both images share the big
    layer."""
    found = pylock.load(plan.vendor)
    assert found is not None
    dest = directory / "locked"
    dest.mkdir()
    (dest / "requirements.txt").write_text(found.requirements(multinode=False), encoding="utf-8")
    _link(pylock.uv_binary(), dest / "uv")
    if plan.nnodes > 1:
        (directory / "locked-multinode").mkdir()
        (directory / "locked-multinode" / "requirements.txt").write_text(found.multinode_part(), encoding="utf-8")


def content_key(directory: Path, plan: BuildPlan, recipe_file: Path, options: BuildOptions) -> str:
    """Hash of every byte of the build context (names, modes, contents) plus what changes the image from
    outside it: the recipe, the base image option, the platform and versions.lock (its hash is a label).
    Index URLs may embed a token, so only their hash enters the key."""
    material = {
        "context": tree_digest(directory),
        "recipe": hashlib.sha256(recipe_file.read_bytes()).hexdigest(),
        "options": options.key_material(),
        "index": hashlib.sha256(
            json.dumps([options.index_url, list(options.extra_index_urls)]).encode()).hexdigest(),
        "install_mode": plan.install_mode,
        # versions.lock's bytes are in the image's labels: another lock is another image
        "versions_lock": plan.lock_sha256,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def tree_digest(directory: Path) -> str:
    """sha256 over each file's relative path, executable bit and content (symlinks by target), in path order.
    Every byte is read every time (about 0.5 s for the cpu context's 310 MB of wheels): a memo keyed by
    file metadata could hide an in-place edit."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            mode = "x" if os.access(path, os.X_OK) else "-"
            digest.update(f"F {rel} {mode} {sha256_file(path)}\n".encode())
    return digest.hexdigest()
