"""A local registry with auth for the main job: Debian's docker-registry on 127.0.0.1, htpasswd users.

Started once and left running (like dockerd); credentials are generated once, kept 0600 in the cache and
handed to publishing through the environment, never printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tools.core import paths
from tools.core.errors import UserError
from tools.mech.console import info
from tools.mech.host import apt_install, is_root_debian

DEFAULT_PORT = 5000
USER = "flagrelease"

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: flagrelease-local
    path: {htpasswd}
"""


@dataclass(frozen=True)
class LocalRegistry:
    address: str
    user: str
    password: str

    def env(self) -> dict[str, str]:
        return {"FLAGREL_REGISTRY": self.address, "FLAGREL_REGISTRY_USER": self.user,
                "FLAGREL_REGISTRY_PASSWORD": self.password}


def _answers(port: int) -> bool:
    try:
        # 401 is the answer of a registry with auth; anything else is not ours
        return requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 401
    except requests.RequestException:
        return False


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def ensure_local_registry(port: int = DEFAULT_PORT) -> LocalRegistry:
    home = paths.cache_dir() / "registry"
    cred_file = home / "password"
    htpasswd = home / "htpasswd"
    if not cred_file.exists():
        _write_secret(cred_file, secrets.token_urlsafe(24))
    password = cred_file.read_text().strip()
    registry = LocalRegistry(f"127.0.0.1:{port}", USER, password)
    if _answers(port):
        return registry
    for tool, package in (("docker-registry", "docker-registry"), ("htpasswd", "apache2-utils")):
        if shutil.which(tool) is None:
            if not is_root_debian():
                raise UserError(f"{tool} is not installed", fix=f"install {package}, or pass --registry")
            apt_install([package])
    if not htpasswd.exists():
        # -i: the password comes on stdin, never on a command line
        proc = subprocess.run(["htpasswd", "-B", "-i", "-n", USER], input=password, capture_output=True,
                              text=True, check=True)
        _write_secret(htpasswd, proc.stdout)
    config = home / "config.yml"
    config.write_text(CONFIG.format(data=home / "data", port=port, htpasswd=htpasswd))
    log = paths.logs_dir() / "registry.log"
    info(f"  starting local registry on 127.0.0.1:{port} (log: {log})")
    with log.open("a") as out:
        subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _answers(port):
            return registry
        time.sleep(0.5)
    raise UserError(f"the local registry did not answer on 127.0.0.1:{port}", where=str(log),
                    fix="read the registry log; is the port taken by something else?")
