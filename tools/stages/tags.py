"""Release tags: one immutable tag per build, plus the moving tags a recipe names.

immutable  <registry>/<namespace>/<image_name>:<recipe>-<vendor>-<vllm version>-<content key[:12]>
moving     <registry>/<namespace>/<image_name>:<each of recipe.release.tags>  (e.g. flagrelease_nv_robobrain2_7b)

Where images go (registry, namespace) is configuration, never code. First match wins:
  1. --registry / --namespace on the command line
  2. FLAGREL_REGISTRY / FLAGREL_NAMESPACE in the environment
  3. [publish] registry / namespace in the TOML file FLAGREL_CONFIG names (default: ./flagrelease.toml)
A registry is required; an empty namespace puts the image at the registry's top level.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core.errors import UserError
from tools.core.recipe import Recipe
from tools.mech.registry import is_loopback

SHORT_KEY = 12
# Docker's reference grammar (distribution/reference): tag and path components.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                       r"(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Target:
    """Where a recipe's image goes, and where each part of that came from (for messages)."""

    registry: str
    namespace: str
    name: str
    source: str = ""

    @property
    def repository(self) -> str:
        """The repository path inside the registry (what the v2 API calls <name>)."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def repo_ref(self) -> str:
        return f"{self.registry}/{self.repository}"

    def ref(self, tag: str) -> str:
        return f"{self.repo_ref}:{tag}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.registry)


@dataclass(frozen=True)
class ReleaseTags:
    target: Target
    immutable: str
    moving: tuple[str, ...]

    @property
    def immutable_ref(self) -> str:
        return self.target.ref(self.immutable)

    @property
    def moving_refs(self) -> tuple[str, ...]:
        return tuple(self.target.ref(t) for t in self.moving)


def _config_file() -> Path:
    return Path(os.environ.get("FLAGREL_CONFIG", PROJECT_ROOT / "flagrelease.toml"))


def _config_values() -> dict[str, str]:
    path = _config_file()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"configuration file is not valid TOML: {exc}", where=str(path),
                        fix="fix the file, or unset FLAGREL_CONFIG") from exc
    section = data.get("publish", {})
    if not isinstance(section, dict):
        raise UserError("[publish] must be a table", where=f"{path} -> publish",
                        fix='write [publish] with registry = "host[:port]" and namespace = "ns"')
    return {k: str(v) for k, v in section.items() if k in {"registry", "namespace"}}


def _pick(cli: str | None, env_var: str, key: str, config: dict[str, str]) -> tuple[str | None, str]:
    if cli is not None:
        return cli, f"--{key}"
    if os.environ.get(env_var) is not None:
        return os.environ[env_var], env_var
    if key in config:
        return config[key], f"{_config_file()} [publish] {key}"
    return None, ""


def resolve_target(recipe: Recipe, registry: str | None = None, namespace: str | None = None) -> Target:
    config = _config_values()
    reg, reg_from = _pick(registry, "FLAGREL_REGISTRY", "registry", config)
    ns, ns_from = _pick(namespace, "FLAGREL_NAMESPACE", "namespace", config)
    if not reg:
        raise UserError(
            "no registry configured to publish to",
            where="--registry / FLAGREL_REGISTRY / [publish] registry in flagrelease.toml",
            fix="pass --registry HOST[:PORT], set FLAGREL_REGISTRY, or use --local-registry with a build session",
        )
    reg = reg.strip().rstrip("/")
    if "://" in reg:
        raise UserError(f"registry {reg!r} has a URL scheme", where=reg_from,
                        fix=f"give the host only: {reg.split('://', 1)[1]}")
    if not _REGISTRY.match(reg):
        raise UserError(f"registry {reg!r} is not HOST[:PORT]", where=reg_from, fix="e.g. registry.example.com:5000")
    ns = (ns or "").strip().strip("/")
    for part in ns.split("/") if ns else []:
        if not _PATH_COMPONENT.match(part):
            raise UserError(f"namespace {ns!r} is not a valid repository path", where=ns_from,
                            fix="lower-case letters, digits and . _ - between them, components separated by /")
    source = f"registry from {reg_from}" + (f", namespace from {ns_from}" if ns else ", no namespace")
    return Target(registry=reg, namespace=ns, name=recipe.release.image_name, source=source)


def immutable_tag(recipe_name: str, vendor: str, vllm_version: str, content_key: str) -> str:
    """<recipe>-<vendor>-<vllm version>-<short content key>: names exactly one build's content."""
    key = content_key.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{12,}", key):
        raise UserError(f"content key {content_key!r} is not a hex digest", where="image label content-key",
                        fix="publish an image built by a build session (it writes the label)")
    # '+' (PEP 440 local versions) is not allowed in a tag; '_' keeps it readable and unambiguous
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", vllm_version)
    tag = f"{recipe_name}-{vendor}-{version}-{key[:SHORT_KEY]}"
    if not _TAG.match(tag):
        raise UserError(f"immutable tag {tag!r} is not a valid docker tag (at most 128 characters)",
                        where="recipe name / vLLM version", fix="shorten the recipe name")
    return tag


def looks_immutable(tag: str, recipe_name: str, vendor: str) -> bool:
    return re.fullmatch(rf"{re.escape(recipe_name)}-{re.escape(vendor)}-.+-[0-9a-f]{{{SHORT_KEY}}}", tag) is not None


def release_tags(recipe: Recipe, target: Target, *, vllm_version: str, content_key: str) -> ReleaseTags:
    immutable = immutable_tag(recipe.name, recipe.vendor, vllm_version, content_key)
    moving: list[str] = []
    for tag in recipe.release.tags:
        # a moving tag shaped like an immutable one would let a later publish move "immutable" content
        if tag == immutable or looks_immutable(tag, recipe.name, recipe.vendor):
            raise UserError(f"moving tag {tag!r} has the shape of an immutable build tag",
                            where=f"recipes/{recipe.name}.yaml -> release.tags",
                            fix="name moving tags after the release (e.g. flagrelease_cpu_tiny_llama)")
        if tag not in moving:
            moving.append(tag)
    return ReleaseTags(target=target, immutable=immutable, moving=tuple(moving))
