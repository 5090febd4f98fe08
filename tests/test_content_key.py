"""The content key covers every byte of the build context: each input changed in turn gives a new key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.stages.context import content_key
from tools.stages.plan import BuildOptions, plan_for


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("FLAGREL_CACHE", str(tmp_path / "cache"))
    ctx = tmp_path / "ctx"
    files = {
        "Dockerfile": "FROM base\nCOPY overlay/ /x/\n",
        ".dockerignore": "Dockerfile\n",
        "entrypoint.sh": "#!/bin/bash\nsource /opt/vendor/env.sh\nexec \"$@\"\n",
        "overlay/vllm/envs.py": "USE_FLAGGEMS = True\n",
        "overlay/vllm/_flagos_stack.py": "STACK_ID = 'abc'\n",
        "source/setup.py": "print('x')\n",
        "locked/requirements.txt": "numpy==2.3.5 --hash=sha256:" + "a" * 64 + "\n",
        "locked/uv": "uv binary\n",
    }
    for rel, text in files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    (ctx / "entrypoint.sh").chmod(0o755)
    (ctx / "wheelhouse").mkdir()
    (ctx / "wheelhouse" / "big-1.0-py3-none-any.whl").write_bytes(b"w" * (2 << 20))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: r\n")
    return ctx, recipe


def _key(ctx: Path, recipe: Path, options: BuildOptions | None = None, lock_sha256: str | None = None) -> str:
    plan, _, _, _ = plan_for("tiny-cpu", "cpu", BuildOptions())
    if lock_sha256:
        plan = dataclasses.replace(plan, lock_sha256=lock_sha256)
    return content_key(ctx, plan, recipe, options or BuildOptions())


def _append(rel: str) -> Callable[[Path], None]:
    def change(ctx: Path) -> None:
        with (ctx / rel).open("ab") as out:
            out.write(b"#")
    return change


CHANGES: dict[str, Callable[[Path], None]] = {
    "Dockerfile": _append("Dockerfile"),
    "dockerignore": _append(".dockerignore"),
    "entrypoint": _append("entrypoint.sh"),
    "entrypoint mode": lambda ctx: (ctx / "entrypoint.sh").chmod(0o644),
    "overlay file": _append("overlay/vllm/envs.py"),
    "stamp": _append("overlay/vllm/_flagos_stack.py"),
    "source tree": _append("source/setup.py"),
    "lock (image's requirements)": _append("locked/requirements.txt"),
    "uv binary": _append("locked/uv"),
    "wheel bytes, same size": lambda ctx: _flip_last_byte(ctx / "wheelhouse" / "big-1.0-py3-none-any.whl"),
    "new file": lambda ctx: (ctx / "overlay" / "vllm" / "new.py").write_text(""),
    "removed file": lambda ctx: (ctx / "source" / "setup.py").unlink(),
    "renamed file": lambda ctx: (ctx / "overlay/vllm/envs.py").rename(ctx / "overlay/vllm/envs2.py"),
    "symlink": lambda ctx: os.symlink("envs.py", ctx / "overlay" / "vllm" / "alias.py"),
}


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    stat = path.stat()
    path.write_bytes(bytes(data))
    # same size and mtime: only the inode's content changed, which the digest memo must not hide
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_unchanged_context_gives_the_same_key(context):
    ctx, recipe = context
    assert _key(ctx, recipe) == _key(ctx, recipe)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_input_changes_the_key(context, change):
    ctx, recipe = context
    before = _key(ctx, recipe)
    CHANGES[change](ctx)
    assert _key(ctx, recipe) != before


def test_recipe_and_image_options_change_the_key(context):
    ctx, recipe = context
    before = _key(ctx, recipe)
    assert _key(ctx, recipe, BuildOptions(base_image="mirror.example/debian:12")) != before
    assert _key(ctx, recipe, BuildOptions(index_url="https://mirror.example/simple")) != before
    assert _key(ctx, recipe, lock_sha256="0" * 64) != before
    recipe.write_text("name: r\nchanged: 1\n")
    assert _key(ctx, recipe) != before
