"""lock + recipe + options -> BuildPlan: everything a build will do, decided before it does it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tools.core import labels as L
from tools.core.errors import UserError
from tools.core.lock import LoadedLock, Platform, VendorPins, load_lock
from tools.core.recipe import Recipe, load_recipe
from tools.core.refs import parse_image_ref
from tools.mech.console import redact
from tools.stages import flagscale, patches

InstallMode = Literal["wheel-overlay", "source"]
_INDEX_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$")

# A stack that touches any of these needs the compiled parts rebuilt: no binary wheel can be reused.
_NATIVE_PREFIXES = ("csrc/", "cmake/", "rust/")
_NATIVE_FILES = {"setup.py", "CMakeLists.txt", "pyproject.toml", "setup.cfg", "MANIFEST.in"}


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for on the command line. Secrets are paths here, never their contents."""

    base_image: str | None = None
    no_cache: bool = False
    platforms: tuple[Platform, ...] = ()
    ca_bundle: Path | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    wheelhouse: tuple[Path, ...] = ()
    proxies: dict[str, str] = field(default_factory=dict)
    load: bool = True

    def __post_init__(self) -> None:
        # the boundary for every caller (CLI, pipeline, tests): these land on FROM and in pip.conf
        if self.base_image is not None:
            parse_image_ref(self.base_image, where="--base-image")
        for flag, url in (("--index-url", self.index_url), *(("--extra-index-url", u) for u in self.extra_index_urls)):
            if url is not None and not _INDEX_URL.match(url):
                raise UserError(f"{flag} is not an http(s) URL on one line without spaces: {redact(url)!r}",
                                where=flag, fix="give the index's URL, e.g. https://mirror.example.com/simple")

    def key_material(self) -> dict[str, object]:
        """Options that change the image. Index URLs may carry tokens, so they are hashed elsewhere;
        proxies and the CA bundle only change how bytes travel, not which bytes arrive."""
        return {"base_image": self.base_image, "platforms": list(self.platforms)}


@dataclass(frozen=True)
class StackRef:
    """The patch stack as the plan needs it (see tools/patches.py)."""

    vendor: str
    patch_files: tuple[tuple[str, str], ...]  # (path relative to patches/, sha256)
    stack_hash: str
    short_id: str
    touched: tuple[str, ...]  # upstream paths the stack adds, changes or removes


@dataclass(frozen=True)
class BuildPlan:
    recipe: str
    recipe_file: str
    vendor: str
    vllm_version: str
    vllm_commit: str
    base_ref: str
    base_overridden: bool
    # why the locked base has no digest yet (None: pinned, or overridden by --base-image)
    base_unpinned: str | None
    platforms: tuple[Platform, ...]
    python: str
    torch: str
    install_mode: InstallMode
    install_reason: str
    stack: StackRef
    flaggems_version: str
    lock_sha256: str
    local_ref: str
    max_jobs: int
    torch_cuda_arch_list: str | None
    nnodes: int
    flagscale_example: str
    # FlagScale's config files for this release, baked under flag_scale/examples/ (path -> text)
    flagscale_files: dict[str, str]

    def describe(self) -> str:
        lines = [
            f"recipe        {self.recipe} ({self.recipe_file})",
            f"vendor        {self.vendor}",
            f"vLLM          {self.vllm_version} @ {self.vllm_commit[:12]}",
            f"base image    {self.base_ref}{'  (overridden by --base-image)' if self.base_overridden else ''}",
            *([f"              NOT PINNED BY DIGEST: {self.base_unpinned}"] if self.base_unpinned else []),
            f"platforms     {', '.join(self.platforms)}",
            f"python/torch  {self.python} / {self.torch}",
            f"FlagGems      {self.flaggems_version}",
            f"patch stack   {self.stack.short_id} ({len(self.stack.patch_files)} patches, "
            f"{len(self.stack.touched)} files touched)",
            f"install       {self.install_mode}: {self.install_reason}",
            f"FlagScale     flagscale serve {self.flagscale_example} ({', '.join(sorted(self.flagscale_files))})",
            *([f"nodes         {self.nnodes}, one Ray cluster"] if self.nnodes > 1 else []),
            f"local tag     {self.local_ref}",
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def labels(self, content_key: str, created: str, revision: str, source: str) -> dict[str, str]:
        return {
            L.SOURCE: source,
            L.REVISION: revision,
            L.VERSION: f"{self.vllm_version}+flagos.{self.stack.short_id}",
            L.CREATED: created,
            L.TITLE: f"{self.recipe} ({self.vendor})",
            L.RECIPE: self.recipe,
            L.VENDOR: self.vendor,
            L.VLLM_VERSION: self.vllm_version,
            L.VLLM_COMMIT: self.vllm_commit,
            L.STACK_HASH: self.stack.stack_hash,
            L.STACK_ID: self.stack.short_id,
            L.FLAGGEMS_VERSION: self.flaggems_version,
            L.LOCK_HASH: self.lock_sha256,
            L.CONTENT_KEY: content_key,
            L.INSTALL_MODE: self.install_mode,
        }


def site_packages(python: str) -> str:
    """The image's Python environment (every template makes /opt/venv)."""
    return f"/opt/venv/lib/python{python}/site-packages"


def choose_install(pins: VendorPins, stack: StackRef) -> tuple[InstallMode, str]:
    native = sorted(p for p in stack.touched if p.startswith(_NATIVE_PREFIXES) or p in _NATIVE_FILES)
    if native:
        return "source", f"the stack touches native/build files ({', '.join(native[:3])})"
    if pins.engine_wheel is None:
        return "source", "no upstream binary wheel is pinned for this vendor (pure-Python source install)"
    outside = sorted(p for p in stack.touched if not p.startswith("vllm/"))
    note = f"; {len(outside)} touched files outside vllm/ are not installed" if outside else ""
    return "wheel-overlay", (
        f"the stack touches only Python files: install {pins.engine_wheel.name}=={pins.engine_wheel.version} "
        f"and overlay the patched files (identity against the wheel checked when the context is made){note}"
    )


def make_plan(loaded: LoadedLock, recipe: Recipe, recipe_file: Path, stack: StackRef,
              options: BuildOptions) -> BuildPlan:
    lock = loaded.lock
    pins = lock.vendors[recipe.vendor]
    platforms = options.platforms or recipe.build.platforms or pins.platforms
    unsupported = [p for p in platforms if p not in pins.platforms]
    if unsupported:
        raise UserError(
            f"platform {', '.join(unsupported)} is not pinned for vendor {recipe.vendor}",
            where=f"versions.lock -> vendors.{recipe.vendor}.platforms",
            fix=f"use one of {', '.join(pins.platforms)}",
        )
    mode, reason = choose_install(pins, stack)
    fs = flagscale.serve_config(recipe, site_packages(pins.python))
    return BuildPlan(
        recipe=recipe.name,
        recipe_file=str(recipe_file),
        vendor=recipe.vendor,
        vllm_version=lock.upstream.version,
        vllm_commit=lock.upstream.git_commit,
        base_ref=options.base_image or pins.base.ref,
        base_overridden=options.base_image is not None,
        base_unpinned=None if options.base_image else getattr(pins.base, "unresolved", None),
        platforms=tuple(platforms),
        python=pins.python,
        torch=pins.torch,
        install_mode=mode,
        install_reason=reason,
        stack=stack,
        flaggems_version=lock.flaggems.version,
        lock_sha256=loaded.sha256,
        local_ref=L.local_image(recipe.name),
        max_jobs=recipe.build.max_jobs,
        torch_cuda_arch_list=recipe.build.torch_cuda_arch_list,
        nnodes=recipe.serve.nnodes,
        flagscale_example=fs.example,
        flagscale_files=fs.files,
    )


def stack_ref(vendor: str) -> StackRef:
    stack = patches.stack_info(vendor)
    if stack.unreadable:  # encrypted patches: what they touch decides the install mode
        raise stack.unreadable_error(f"plan a {vendor} build")
    return StackRef(
        vendor=stack.vendor,
        patch_files=tuple((p.relpath, p.sha256) for p in stack.patches),
        stack_hash=stack.stack_hash,
        short_id=stack.short_id,
        touched=tuple(sorted(stack.touched)),
    )


def plan_for(recipe_arg: str, vendor: str | None, options: BuildOptions) -> tuple[BuildPlan, LoadedLock, Recipe, Path]:
    loaded = load_lock()
    recipe, recipe_file = load_recipe(recipe_arg)
    if vendor is not None and recipe.vendor != vendor:
        raise UserError(
            f"recipe {recipe.name} is for vendor {recipe.vendor}, not {vendor}",
            where=f"{recipe_file} -> vendor",
            fix=f"run `nox -s build-{recipe.vendor} -- {recipe.name}`",
        )
    plan = make_plan(loaded, recipe, recipe_file, stack_ref(recipe.vendor), options)
    return plan, loaded, recipe, recipe_file
