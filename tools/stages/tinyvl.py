"""A tiny random Qwen2.5-VL the project makes itself, so a vision-language smoke serve needs no download.

The host has neither torch nor transformers; the engine image has both. So the model is made INSIDE the
image the smoke test serves: a throwaway container (no network) runs tools/stages/tinyvl_program.py,
which writes the tokenizer, chat template, processor configs and random bf16 weights to a mounted folder.

Cache, like tools/stages/tinymodel.py: the folder is named by a hash of its content, written to a
temporary folder first and renamed into place, so a half-written model is never picked up. Making it
takes a container start and a torch import (seconds, not a fraction of one), so it is not remade every
time: a key file, named by a hash of the program and the image's ID, points at the content folder it
made. A new image (other transformers or torch) or a changed program makes (and hashes) it again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.core import paths
from tools.core.errors import UserError
from tools.mech import docker
from tools.mech.console import info, new_log
from tools.stages.tinymodel import content_hash

PROGRAM = Path(__file__).with_name("tinyvl_program.py")
NAME = "tiny-qwen2.5-vl"
NAME_PREFIX = "flagrel-tinyvl"
CONTAINER_OUT = "/out"
CONTAINER_PROGRAM = "/opt/flagrelease/tinyvl_program.py"
# what the program writes; a folder missing one of them is not a model
EXPECTED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json",
            "video_processing_tiny_vl.py")


@dataclass(frozen=True)
class TinyVL:
    path: Path
    made: bool  # False: found in the cache
    seconds: float  # making it (container included); 0 when found
    size_bytes: int


def input_key(image_id: str) -> str:
    """What decides the model's bytes: the program, and the image's transformers/torch (its ID)."""
    digest = hashlib.sha256(PROGRAM.read_bytes())
    digest.update(b"\0" + image_id.encode())
    return digest.hexdigest()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _cached(root: Path, key: str) -> Path | None:
    key_file = root / "tiny-vl-keys" / key
    if not key_file.is_file():
        return None
    path = root / key_file.read_text(encoding="utf-8").strip()
    # the folder's name is its content hash: a folder edited or damaged since is not reused
    if path.is_dir() and path.name == f"{NAME}-{content_hash(path)[:16]}":
        return path
    return None


def _run_program(image: str, out: Path) -> None:
    name = f"{NAME_PREFIX}-{secrets.token_hex(4)}"
    log = new_log("tinyvl")
    args = ["run", "--rm", "--name", name, "--label", docker.OWNER_LABEL, "--network", "none",
            "-e", "HF_HUB_OFFLINE=1", "-e", "PYTHONDONTWRITEBYTECODE=1",
            "-v", f"{PROGRAM}:{CONTAINER_PROGRAM}:ro", "-v", f"{out}:{CONTAINER_OUT}"]
    if hasattr(os, "getuid") and os.getuid() != 0:
        # the files belong to the caller; torch and transformers want a writable HOME
        args += ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]
    args += ["--entrypoint", "python3", image, CONTAINER_PROGRAM, CONTAINER_OUT]
    result = docker.run_attached(args, name=name, log=log, title=f"make the tiny vision-language model ({image})")
    missing = [f for f in EXPECTED if not (out / f).is_file()]
    if result.returncode != 0 or missing:
        tail = "\n".join(f"  | {line}" for line in result.tail[-15:])
        raise UserError(f"making the tiny vision-language model in {image} failed (exit {result.returncode}"
                        f"{', missing ' + ', '.join(missing) if missing else ''}):\n{tail}",
                        where=str(log),
                        fix="the image needs python3 with torch, transformers (>= 5, Qwen2.5-VL) and tokenizers")


def make_tiny_vl_model(image: str, dest: Path | None = None) -> TinyVL:
    """Make (or reuse) the tiny Qwen2.5-VL with `image`'s transformers, under `dest` (default <cache>/models)."""
    root = Path(dest) if dest is not None else paths.cache_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    key = input_key(docker.image_id(image))
    found = _cached(root, key)
    if found is not None:
        return TinyVL(found, made=False, seconds=0.0, size_bytes=_size(found))
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{NAME}-", dir=root))
    try:
        _run_program(image, tmp)
        for path in tmp.iterdir():
            # save_pretrained writes the weights 0600; the engine may read them as another user
            path.chmod(0o644)
        os.chmod(tmp, 0o755)
        final = root / f"{NAME}-{content_hash(tmp)[:16]}"
        if not final.is_dir():
            try:
                tmp.rename(final)
            except OSError:
                # another process renamed the same content into place first: theirs is identical
                if not final.is_dir():
                    raise
        (root / "tiny-vl-keys").mkdir(exist_ok=True)
        key_tmp = root / "tiny-vl-keys" / f".{key}.tmp"
        key_tmp.write_text(final.name + "\n", encoding="utf-8")
        key_tmp.replace(root / "tiny-vl-keys" / key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = round(time.monotonic() - start, 2)
    made = TinyVL(final, made=True, seconds=seconds, size_bytes=_size(final))
    info(f"  made {final.name}: {made.size_bytes / 1e6:.1f} MB in {seconds:.1f}s")
    return made

