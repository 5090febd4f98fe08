"""BuildPlan -> Dockerfile text, from dockerfiles/ (one skeleton, small vendor blocks)."""

from __future__ import annotations

import shlex

import jinja2

from tools import PROJECT_ROOT
from tools.core import vendors
from tools.core.errors import UserError
from tools.core.lock import LoadedLock
from tools.stages import pylock
from tools.stages.plan import BuildPlan, site_packages


def is_locked(plan: BuildPlan) -> bool:
    """Installs from locks/<vendor>.txt: the vendor has a lock and the engine is the upstream wheel."""
    return plan.install_mode == "wheel-overlay" and pylock.lock_path(plan.vendor).is_file()

TEMPLATES = PROJECT_ROOT / "dockerfiles"

# Mounts for every pip step: secrets and caches are mounted for one RUN and never land in a layer.
PIP_MOUNTS = (
    "--mount=type=secret,id=cacert "
    "--mount=type=secret,id=pipconf "
    "--mount=type=cache,target=/root/.cache/pip,sharing=locked "
    "--mount=type=bind,source=wheelhouse,target=/wheelhouse"
)
# uv (locked installs): the same CA secret, the index options as a secret env file, uv's cache, and the
# context's locked/ folder (the uv binary + this image's hash-checked requirements), none of them in a layer.
UV_MOUNTS = (
    "--mount=type=secret,id=cacert "
    "--mount=type=secret,id=uvenv "
    "--mount=type=cache,target=/root/.cache/uv,sharing=locked "
    "--mount=type=bind,source=wheelhouse,target=/wheelhouse "
    "--mount=type=bind,source=locked,target=/locked"
)
UV_ENV = (
    "if [ -s /run/secrets/cacert ]; then export SSL_CERT_FILE=/run/secrets/cacert; fi;"
    " if [ -s /run/secrets/uvenv ]; then . /run/secrets/uvenv; fi; export UV_LINK_MODE=copy;"
)
# A corporate CA bundle and a pip config (index, extra index, mirror) arrive as build secrets.
PIP_ENV = (
    "if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi;"
    " if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi;"
)


def _one_line(value: object) -> object:
    """Every value lands inside one Dockerfile instruction: a line break would start another instruction.
    Inputs are checked by their grammars when read (recipe, lock, --base-image); this is the last guard."""
    text = str(value)
    if any(ch in text for ch in "\n\r\x00"):
        raise UserError(f"a value for the Dockerfile spans lines: {text[:80]!r}", where="rendered Dockerfile",
                        fix="remove the line break from the recipe, lock or option that holds it")
    return value


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        finalize=_one_line,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_dockerfile(plan: BuildPlan, loaded: LoadedLock) -> str:
    lock = loaded.lock
    pins = lock.vendors[plan.vendor]
    engine = pins.engine_wheel
    context = {
        "recipe": plan.recipe,
        "vendor": plan.vendor,
        "vllm_version": plan.vllm_version,
        "install_mode": plan.install_mode,
        "base_ref": plan.base_ref,
        "python": plan.python,
        "torch": plan.torch,
        "torch_index_url": pins.torch_index_url or "",
        "pins": dict(pins.pins),
        "entrypoint_sources": list(vendors.get(plan.vendor).entrypoint_sources),
        "torch_cuda_arch_list": plan.torch_cuda_arch_list or "9.0",
        "max_jobs": plan.max_jobs,
        "flaggems_wheel_file": lock.flaggems.wheel.filename,
        "flaggems_runtime_deps": list(lock.flaggems.runtime_deps),
        "engine_wheel_file": engine.filename if engine else "",
        "wheelhouse_files": [w.filename for w in pins.wheelhouse],
        "site_packages": site_packages(plan.python),
        "stack_id": plan.stack.short_id,
        "flagscale_wheel_file": lock.flagscale.wheel.filename,
        "flagscale_runtime_deps": list(lock.flagscale.runtime_deps),
        "flagscale_example": plan.flagscale_example,
        "ray": [f"ray=={lock.ray.version}", *lock.ray.runtime_deps] if plan.nnodes > 1 else [],
        "pip_mounts": PIP_MOUNTS,
        "pip_env": PIP_ENV,
        "locked": is_locked(plan),
        "uv_mounts": UV_MOUNTS,
        "uv_env": UV_ENV,
    }
    text = _environment().get_template(f"vendors/{plan.vendor}.j2").render(**context)
    # blank runs left by empty blocks
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() or (lines and lines[-1].strip()):
            lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n"
