"""A real, authenticated registry for tests, and tiny local images to push to it.

Usage in a test module (the tests folder is on sys.path under pytest's default import mode):

    from registry import docker_cli, registry_server  # noqa: F401  (pytest fixtures)

    def test_x(registry_server):
        url, user, password = registry_server      # "127.0.0.1:PORT", user, password

The registry is Debian's `docker-registry` (CNCF distribution v2) with a temporary config: htpasswd auth,
a temporary storage folder, 127.0.0.1 on a free port (docker talks plain http to 127.0.0.0/8 without
--insecure-registry). It is started once per test session and always stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tools.core.errors import UserError
from tools.mech import docker
from tools.mech.local_registry import CONFIG as LOCAL_REGISTRY_CONFIG

USER = "flagrel-test"
# the same registry configuration the main job runs with
CONFIG = LOCAL_REGISTRY_CONFIG


@dataclass(frozen=True)
class RegistryServer:
    url: str  # host:port, as docker and FLAGREL_REGISTRY spell it
    user: str
    password: str = field(repr=False)  # never shown in a pytest failure report
    log: Path = field(default=Path("/dev/null"))

    def __iter__(self) -> Iterator[str]:
        return iter((self.url, self.user, self.password))

    def env(self) -> dict[str, str]:
        return {"FLAGREL_REGISTRY": self.url, "FLAGREL_REGISTRY_USER": self.user,
                "FLAGREL_REGISTRY_PASSWORD": self.password}

    def digest(self, repository: str, tag: str) -> str | None:
        """The registry's digest for a tag, asked independently of the code under test."""
        response = requests.head(
            f"http://{self.url}/v2/{repository}/manifests/{tag}", auth=(self.user, self.password), timeout=10,
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                               "application/vnd.oci.image.manifest.v1+json"},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]


def registry_env(monkeypatch: pytest.MonkeyPatch, server: RegistryServer) -> None:
    """The registry and its credentials in the environment, the way CI passes them to publish."""
    for var, value in server.env().items():
        monkeypatch.setenv(var, value)


def _fail_or_skip(reason: str) -> None:
    # CI must not silently skip what it is there to prove
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_401(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 401
    except requests.RequestException:
        return False


@contextlib.contextmanager
def running_registry(workdir: Path, *, user: str = USER, ready_s: float = 30) -> Iterator[RegistryServer]:
    """Start docker-registry with htpasswd auth on a free loopback port; always stop it."""
    for tool in ("docker-registry", "htpasswd"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} is not installed (apt-get install docker-registry apache2-utils)")
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    # -i: the password comes on stdin, never on a command line
    hashed = subprocess.run(["htpasswd", "-B", "-i", "-n", user], input=password, capture_output=True, text=True,
                            check=True).stdout
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(hashed)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(CONFIG.format(data=workdir / "data", port=port, htpasswd=htpasswd))
    log = workdir / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_s
        while not _answers_401(port):
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {proc.returncode}: {log.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on 127.0.0.1:{port} within {ready_s:.0f}s")
            time.sleep(0.2)
        yield RegistryServer(f"127.0.0.1:{port}", user, password, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def docker_cli() -> str:
    """The docker CLI with an engine that answers (pushes need no BuildKit).

    On a fresh machine (CI) the engine is installed and started the way the build sessions do it.
    """
    version = docker.engine_version()
    if version is None:
        from tools.mech import host as engine

        try:
            version = engine.ensure_engine().server_version
        except UserError as err:
            _fail_or_skip(f"no Docker engine answers `docker version`: {err.what}")
    assert version is not None
    return version


def _ensure_registry_tools() -> None:
    missing = [pkg for tool, pkg in (("docker-registry", "docker-registry"), ("htpasswd", "apache2-utils"))
               if shutil.which(tool) is None]
    if not missing:
        return
    from tools.mech.host import apt_install, is_root_debian

    if is_root_debian():
        apt_install(missing)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    try:
        _ensure_registry_tools()
        with running_registry(tmp_path_factory.mktemp("registry")) as server:
            yield server
    except FileNotFoundError as exc:
        _fail_or_skip(str(exc))
    except UserError as err:  # the apt install of the registry failed
        _fail_or_skip(f"cannot install the test registry: {err.what}")


# -- tiny images ------------------------------------------------------------------------------------------

def _tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_image(ref: str, content: str, labels: dict[str, str]) -> str:
    """`docker import` a one-file image with labels; different content gives a different digest.

    Returns the image id. No registry is needed (nothing to pull): the tarball is made here.
    """
    cmd = ["docker", "import"]
    for key, value in labels.items():
        cmd += ["--change", f"LABEL {key}={json.dumps(value)}"]
    cmd += ["-", ref]
    proc = subprocess.run(cmd, input=_tarball({"release.txt": content}), capture_output=True, check=True,
                          timeout=120)
    return proc.stdout.decode().strip()


def remove_image(image_id: str) -> None:
    """Remove an image this test made, with every tag it got (local and registry refs)."""
    subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True, check=False, timeout=120)
