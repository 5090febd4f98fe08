"""Host bootstrap: a Docker engine with BuildKit (buildx), and locally made base images.

Called by the build sessions and the tests when needed; every step is idempotent and cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools import paths
from tools.console import info, new_log, phase, print_tail, run_logged
from tools.container import image_exists
from tools.errors import UserError
from tools.lock import DebootstrapBase

BUILDX_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-buildx")
# Debian 12 has no buildx; Debian 13's static binary runs against the Debian 12 engine.
BUILDX_SUITE = "deb http://deb.debian.org/debian trixie main"
ENGINE_PACKAGES = ["docker.io", "debootstrap"]


@dataclass(frozen=True)
class EngineInfo:
    server_version: str
    buildx_version: str


def _ok(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc if proc.returncode == 0 else None


def engine_answers() -> str | None:
    proc = _ok(["docker", "version", "--format", "{{.Server.Version}}"])
    return proc.stdout.strip() if proc else None


def buildx_version() -> str | None:
    proc = _ok(["docker", "buildx", "version"])
    return proc.stdout.strip() if proc else None


def is_root_debian() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def apt_install(packages: list[str]) -> None:
    log = new_log("apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        result = run_logged(cmd, log, title=" ".join(cmd[:2]), env=env)
        if result.returncode != 0:
            print_tail(result)
            raise UserError(f"`{' '.join(cmd)}` failed", where=str(log), fix="read the log; check apt sources")


def _start_dockerd() -> None:
    log = paths.logs_dir() / "dockerd.log"
    info(f"  starting dockerd (log: {log})")
    with log.open("a") as out:
        # start_new_session: the daemon must outlive this command (nox session, pytest run)
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if engine_answers():
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
    version = engine_answers()
    if version is None or buildx_version() is None:
        with phase("Host bootstrap: Docker engine + BuildKit"):
            if not is_root_debian():
                raise UserError(
                    "no Docker engine with buildx answers",
                    where="docker version / docker buildx version",
                    fix="install Docker Engine (20.10+) and the buildx plugin, start the daemon, and retry",
                )
            if shutil.which("dockerd") is None:
                apt_install(ENGINE_PACKAGES)
            if engine_answers() is None:
                _start_dockerd()
            if buildx_version() is None:
                _install_buildx()
            version = engine_answers()
    bx = buildx_version()
    if version is None or bx is None:
        raise UserError("Docker engine or buildx still missing after bootstrap",
                        fix="run `docker version` and `docker buildx version` to see what is wrong")
    return EngineInfo(server_version=version, buildx_version=bx)


def ensure_debootstrap_base(base: DebootstrapBase) -> str:
    """Make the locally built base image (no registry is reachable): debootstrap, then docker import.

    The root filesystem tarball is cached, so a fresh engine re-imports it in seconds.
    """
    if image_exists(base.image):
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
        with tarball.open("rb") as data:
            subprocess.run(["docker", "import", "-", base.image], stdin=data, check=True,
                           stdout=subprocess.DEVNULL)
    return base.image
