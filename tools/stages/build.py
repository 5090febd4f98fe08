"""Build context -> image, through BuildKit (`docker buildx build`; the docker SDK cannot drive BuildKit)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core import labels as L
from tools.core import vendors
from tools.core.errors import CheckFailed, UserError
from tools.core.labels import local_image
from tools.mech import docker
from tools.mech.console import RunResult, info, new_log, print_tail, redact
from tools.stages import space
from tools.stages.context import BuildContext
from tools.stages.plan import BuildOptions

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
CA_ENV_VARS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    ref: str  # the recipe's moving local tag (flagrelease-local/<recipe>:latest)
    content_key: str
    skipped: bool
    log: Path | None

    @property
    def key_ref(self) -> str:
        """The local tag of exactly this build: validation and publishing use it, so a build of the same
        recipe elsewhere on this engine (which moves :latest) cannot swap the image under them."""
        return local_image(self.ref.rsplit(":", 1)[0].rsplit("/", 1)[-1], self.content_key[:12])


def source_url() -> str:
    """Where this factory's code lives (OCI source label): FLAGREL_SOURCE_URL, else the checkout's remote."""
    if os.environ.get("FLAGREL_SOURCE_URL"):
        return os.environ["FLAGREL_SOURCE_URL"]
    proc = subprocess.run(["git", "-C", str(PROJECT_ROOT), "remote", "get-url", "origin"], capture_output=True,
                          text=True, check=False)
    return redact(proc.stdout.strip()) or "unknown"


def find_by_content_key(key: str) -> str | None:
    """The finished image of this content key: one whose facts were read and labelled (an image that failed
    its lock check, or a build interrupted before, has no facts labels and is built again)."""
    ids = docker.images_with_label(f"{L.CONTENT_KEY}={key}", L.FACTS_PACKAGES)
    return ids[0] if ids else None


def default_ca_bundle() -> Path | None:
    """Users behind a TLS-intercepting proxy already point one of these at their bundle."""
    for var in CA_ENV_VARS:
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


def _pip_config(options: BuildOptions) -> str | None:
    if not options.index_url and not options.extra_index_urls:
        return None
    lines = ["[global]"]
    if options.index_url:
        lines.append(f"index-url = {options.index_url}")
    if options.extra_index_urls:
        lines.append("extra-index-url = " + " ".join(options.extra_index_urls))
    return "\n".join(lines) + "\n"


def _uv_env(options: BuildOptions) -> str | None:
    """The index options for uv, as a shell file the locked install step sources (a build secret)."""
    if not options.index_url and not options.extra_index_urls:
        return None
    lines = []
    if options.index_url:
        lines.append(f"export UV_DEFAULT_INDEX={shlex.quote(options.index_url)}")
    if options.extra_index_urls:
        lines.append(f"export UV_INDEX={shlex.quote(' '.join(options.extra_index_urls))}")
    return "\n".join(lines) + "\n"


def failing_step(lines: list[str]) -> str | None:
    """The BuildKit step that failed, from --progress=plain output ("#12 [5/9] RUN ...")."""
    headers: dict[str, str] = {}
    failed: str | None = None
    for line in lines:
        match = re.match(r"^#(\d+) (\[.*)$", line)
        if match:
            headers[match.group(1)] = match.group(2)
        match = re.match(r"^#(\d+) ERROR", line)
        if match:
            failed = match.group(1)
    return headers.get(failed) if failed else None


def _secret_file(path: Path, text: str) -> Path:
    """A BuildKit secret's source: created owner-only before the secret is written into it."""
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def build_image(ctx: BuildContext, options: BuildOptions, *, revision: str) -> BuiltImage:
    plan = ctx.plan
    key_ref = local_image(plan.recipe, ctx.content_key[:12])
    if not options.no_cache:
        existing = find_by_content_key(ctx.content_key)
        if existing:
            docker.tag(existing, plan.local_ref)
            docker.tag(existing, key_ref)
            info(f"  image with content key {ctx.content_key[:12]} exists ({existing[:19]}): build skipped")
            space.hold(existing)
            return BuiltImage(existing, plan.local_ref, ctx.content_key, skipped=True, log=None)
    if len(plan.platforms) > 1:
        raise UserError(
            f"{len(plan.platforms)} platforms requested; the local engine loads one platform per build",
            where="--platform / recipe build.platforms / versions.lock",
            fix=f"build each with --platform (one of {', '.join(plan.platforms)})",
        )

    space.ensure_space(plan.vendor, vendors.get(plan.vendor).build_disk_gb)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    log = new_log(f"build-{plan.recipe}")
    with tempfile.TemporaryDirectory(prefix="flagrel-secrets-") as secrets_dir:
        iidfile = Path(secrets_dir) / "iid"
        cmd = ["--progress", "plain", "--network", "host",
               "--platform", plan.platforms[0], "--iidfile", str(iidfile),
               "-f", str(ctx.dockerfile), "-t", plan.local_ref, "-t", key_ref]
        for key, value in plan.labels(ctx.content_key, created, revision, source_url()).items():
            cmd += ["--label", f"{key}={value}"]
        ca = options.ca_bundle or default_ca_bundle()
        if ca is not None:
            if not ca.is_file():
                raise UserError(f"CA bundle {ca} not found", where="--ca-bundle", fix="give a PEM file")
            cmd += ["--secret", f"id=cacert,src={ca}"]
        pip_conf = _pip_config(options)
        if pip_conf:
            cmd += ["--secret", f"id=pipconf,src={_secret_file(Path(secrets_dir) / 'pip.conf', pip_conf)}"]
        uv_env = _uv_env(options)
        if uv_env:
            cmd += ["--secret", f"id=uvenv,src={_secret_file(Path(secrets_dir) / 'uv.env', uv_env)}"]
        # proxy variables are predefined build args: BuildKit keeps them out of the image history
        proxies = {var: os.environ[var] for var in PROXY_VARS if os.environ.get(var)} | options.proxies
        for var, value in proxies.items():
            cmd += ["--build-arg", f"{var}={value}"]
        if options.no_cache:
            cmd.append("--no-cache")
        cmd.append(str(ctx.directory))
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        result: RunResult = docker.buildx_build(cmd, log, title=f"building {plan.recipe}", env=env)
        if result.returncode != 0:
            step = failing_step(result.tail) or "(see log)"
            print_tail(result)
            if any("no space left on device" in line.lower() for line in result.tail):
                raise CheckFailed(f"image build ran out of disk space at step {step}", where=str(log),
                                  fix="free disk space (`nox -s prune` gives back what this tool built and no "
                                      f"longer uses), or raise vendors.toml {plan.vendor}.build_disk_gb so the "
                                      "next build stops before it starts")
            raise CheckFailed(f"image build failed at step {step}", where=str(log),
                            fix="read the step's output above; rerun with --no-cache if a cached layer is stale")
        image_id = iidfile.read_text().strip()
    space.hold(image_id)
    info(f"  image {image_id[:19]} tagged {plan.local_ref} and {key_ref}")
    return BuiltImage(image_id, plan.local_ref, ctx.content_key, skipped=False, log=log)
