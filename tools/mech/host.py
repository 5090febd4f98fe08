"""Host bootstrap: a Docker engine with BuildKit (buildx), and locally made base images.

Called by the build sessions and the tests when needed; every step is idempotent and cached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tools.core import paths
from tools.core.errors import UserError
from tools.mech import docker
from tools.mech.console import info, new_log, phase, print_tail, run_logged

BUILDX_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-buildx")
# Debian 12 has no buildx; Debian 13's static binary runs against the Debian 12 engine.
BUILDX_SUITE = "deb http://deb.debian.org/debian trixie main"
ENGINE_PACKAGES = ["docker.io", "debootstrap"]
# BuildKit cache an engine we start keeps (and prune trims to): what a rebuild reuses, layers and downloads
BUILD_CACHE_KEEP_GB = 10.0


@dataclass(frozen=True)
class EngineInfo:
    server_version: str
    buildx_version: str


def is_root_debian() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def apt_install(packages: list[str]) -> None:
    log = new_log("apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # another apt (a person, unattended-upgrades) may hold the lock for a while: wait for it, do not fail
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    for cmd in (["apt-get", *wait, "update", "-q"], ["apt-get", *wait, "install", "-y", "-q", *packages]):
        result = run_logged(cmd, log, title=" ".join(cmd[:2]), env=env)
        if result.returncode != 0:
            print_tail(result)
            raise UserError(f"`{' '.join(cmd)}` failed", where=str(log), fix="read the log; check apt sources")


def _dockerd_args(system_config: Path = Path("/etc/docker/daemon.json")) -> list[str]:
    """dockerd's own defaults, but BuildKit's cache bounded: left alone it keeps 10% of the disk's size, which
    on a machine whose usable share is smaller than its disk fills what is left. A machine's own daemon.json
    wins."""
    if system_config.exists():
        return ["dockerd"]
    config = paths.cache_dir() / "dockerd.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    keep = f"{BUILD_CACHE_KEEP_GB:g}GB"
    config.write_text(json.dumps({"builder": {"gc": {"enabled": True, "defaultKeepStorage": keep}}}) + "\n")
    return ["dockerd", "--config-file", str(config)]


def _start_dockerd() -> None:
    log = paths.logs_dir() / "dockerd.log"
    info(f"  starting dockerd (log: {log})")
    with log.open("a") as out:
        # start_new_session: the daemon must outlive this command (nox session, pytest run)
        subprocess.Popen(_dockerd_args(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker.engine_version():
            return
        time.sleep(1)
    raise UserError("dockerd did not answer within 60 s", where=str(log), fix="read the dockerd log")


def _install_buildx() -> None:
    cache = paths.cache_dir() / "buildx"
    deb = next(cache.glob("docker-buildx_*.deb"), None) if cache.exists() else None
    if deb is None:
        cache.mkdir(parents=True, exist_ok=True)
        apt_dir = Path(tempfile.mkdtemp(prefix="buildx-apt-"))
        try:
            (apt_dir / "lists" / "partial").mkdir(parents=True)
            (apt_dir / "sources.list").write_text(BUILDX_SUITE + "\n")
            opts = [f"-oDir::Etc::SourceList={apt_dir / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
                    f"-oDir::State::Lists={apt_dir / 'lists'}"]
            log = new_log("buildx")
            for cmd in (["apt-get", *opts, "update", "-q"], ["apt-get", *opts, "download", "docker-buildx"]):
                result = run_logged(cmd, log, title="fetching docker-buildx", cwd=cache)
                if result.returncode != 0:
                    print_tail(result)
                    raise UserError("could not download docker-buildx", where=str(log),
                                    fix="install the docker buildx plugin by hand")
        finally:
            shutil.rmtree(apt_dir, ignore_errors=True)
        deb = next(cache.glob("docker-buildx_*.deb"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        BUILDX_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(tmp) / "usr/libexec/docker/cli-plugins/docker-buildx", BUILDX_PLUGIN)


def ensure_engine() -> EngineInfo:
    """A Docker engine that answers, with buildx. Installs and starts one when root on Debian."""
    version = docker.engine_version()
    if version is None or docker.buildx_version() is None:
        with phase("Host bootstrap: Docker engine + BuildKit"):
            if not is_root_debian():
                raise UserError(
                    "no Docker engine with buildx answers",
                    where="docker version / docker buildx version",
                    fix="install Docker Engine (20.10+) and the buildx plugin, start the daemon, and retry",
                )
            if shutil.which("dockerd") is None:
                apt_install(ENGINE_PACKAGES)
            if docker.engine_version() is None:
                _start_dockerd()
            if docker.buildx_version() is None:
                _install_buildx()
            version = docker.engine_version()
    bx = docker.buildx_version()
    if version is None or bx is None:
        raise UserError("Docker engine or buildx still missing after bootstrap",
                        fix="run `docker version` and `docker buildx version` to see what is wrong")
    return EngineInfo(server_version=version, buildx_version=bx)


class DebootstrapSpec(Protocol):
    """What debootstrap needs to make a base image (the lock's DebootstrapBase has these fields)."""

    image: str
    suite: str
    variant: str
    mirror: str
    include: tuple[str, ...]


def ensure_debootstrap_base(base: DebootstrapSpec) -> str:
    """Make the locally built base image (no registry is reachable): debootstrap, then docker import.

    The root filesystem tarball is cached, so a fresh engine re-imports it in seconds.
    """
    if docker.image_exists(base.image):
        return base.image
    key = f"{base.suite}-{base.variant}-" + "-".join(base.include)
    tarball = paths.cache_dir() / "bases" / f"{key}.tar"
    with phase(f"Base image {base.image}"):
        if not tarball.exists():
            if shutil.which("debootstrap") is None:
                if not is_root_debian():
                    raise UserError("debootstrap is not installed", fix="apt-get install debootstrap")
                apt_install(["debootstrap"])
            tarball.parent.mkdir(parents=True, exist_ok=True)
            rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
            try:
                log = new_log("debootstrap")
                cmd = ["debootstrap", f"--variant={base.variant}", f"--include={','.join(base.include)}",
                       base.suite, str(rootfs), base.mirror]
                result = run_logged(cmd, log, title="debootstrap (about a minute)")
                if result.returncode != 0:
                    print_tail(result)
                    raise UserError("debootstrap failed", where=str(log), fix="check the mirror in versions.lock")
                partial = tarball.with_suffix(".partial")
                subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
                partial.replace(tarball)
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)
        docker.import_image(tarball, base.image)
    return base.image
