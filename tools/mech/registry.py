"""Registry credentials and the registry's v2 API, with secrets kept out of argv, logs and files.

Credentials come from (first match wins):
  1. FLAGREL_REGISTRY_USER + FLAGREL_REGISTRY_PASSWORD: `docker login --password-stdin` into a temporary
     DOCKER_CONFIG that is deleted afterwards, so the user's own docker config is never written;
  2. the docker config (DOCKER_CONFIG/config.json or ~/.docker/config.json): `auths` entries or a
     credential helper (credsStore / credHelpers), read the way the docker CLI reads them.
The same credentials authenticate our own v2 queries (Basic, or a Bearer token fetched with Basic).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import requests

from tools.core.errors import UserError
from tools.mech import docker
from tools.mech.console import redact

ENV_USER = "FLAGREL_REGISTRY_USER"
ENV_PASSWORD = "FLAGREL_REGISTRY_PASSWORD"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}

T = TypeVar("T")
Outcome = Literal["auth", "unreachable", "transient", "other"]

# Order matters: an auth failure is never retried, even when the same text also names a status code; a
# registry where nothing listens (or whose name does not resolve) is not a transient error either.
_AUTH = re.compile(r"(?i)unauthorized|authentication required|no basic auth credentials|denied|"
                   r"incorrect username or password|\b401\b|\b403\b")
_UNREACHABLE = re.compile(r"(?i)connection refused|errno 111\b|no such host|name or service not known|"
                          r"name resolution|nodename nor servname|no route to host|network is unreachable")
_TRANSIENT = re.compile(r"(?i)\b50[0-4]\b|\b429\b|toomanyrequests|connection reset|broken pipe|i/o timeout|"
                        r"tls handshake timeout|unexpected eof|: eof\b|service unavailable|"
                        r"bad gateway|gateway timeout|internal server error|timeout exceeded")
UNREACHABLE_FIX = ("start the registry or point at one that runs (--registry / FLAGREL_REGISTRY; a build session's "
                   "--push --local-registry starts one on 127.0.0.1:5000); this is not retried")


def classify(text: str) -> Outcome:
    if _AUTH.search(text):
        return "auth"
    if _UNREACHABLE.search(text):
        return "unreachable"
    if _TRANSIENT.search(text):
        return "transient"
    return "other"


def _why_unreachable(exc: BaseException) -> str | None:
    """Connection refused or an unknown host, anywhere in a requests exception's chain; None otherwise."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    texts: list[str] = []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError):
            return "connection refused: the registry is not listening"
        texts.append(str(item))
        stack += [e for e in (item.__cause__, item.__context__, getattr(item, "reason", None))
                  if isinstance(e, BaseException)]
        stack += [a for a in item.args if isinstance(a, BaseException)]
    text = " ".join(texts)
    if re.search(r"(?i)connection refused|errno 111\b", text):
        return "connection refused: the registry is not listening"
    if re.search(r"(?i)name resolution|name or service not known|nodename nor servname|no such host", text):
        return "its host name does not resolve"
    if re.search(r"(?i)no route to host|network is unreachable", text):
        return "no route to it"
    return None


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""
    from_env: bool = False

    def secrets(self) -> list[str]:
        """Every form in which the secret could leak into text: raw, and docker's base64 user:password."""
        pair = f"{self.username}:{self.password}".encode()
        return [s for s in (self.password, base64.b64encode(pair).decode(),
                            base64.urlsafe_b64encode(pair).decode()) if s]


def scrub(text: str, creds: Credentials | None) -> str:
    """Mask credentials in text before it is shown or written anywhere."""
    if creds is not None:
        for secret in creds.secrets():
            text = text.replace(secret, "***")
    return redact(text)


def backoff_delay(attempt: int, base_s: float) -> float:
    return min(base_s * (2 ** attempt), 30.0)


def with_retries(action: Callable[[], T], *, what: str, retries: int, backoff_s: float,
                 is_transient: Callable[[BaseException], bool], on_retry: Callable[[str], None] | None = None) -> T:
    """Run action; on a transient failure wait (exponential backoff) and try again, at most `retries` more times."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - is_transient decides; everything else re-raises
            if not is_transient(exc):
                raise
            if attempt >= retries:
                # out of patience: one clear message, not a traceback
                raise UserError(f"{what}: still failing after {attempt + 1} attempts: {exc}",
                                fix="the registry had transient errors (5xx, connection resets): retry later, "
                                    "or allow more with --retries") from exc
            delay = backoff_delay(attempt, backoff_s)
            if on_retry:
                on_retry(f"  {what}: transient error ({str(exc).splitlines()[0][:160]}); retry "
                         f"{attempt + 1}/{retries} in {delay:.1f}s")
            time.sleep(delay)
            attempt += 1


class TransientError(Exception):
    """A failure worth retrying (5xx, connection reset); the message is already scrubbed."""


def docker_config_dir() -> Path:
    return Path(os.environ["DOCKER_CONFIG"]) if os.environ.get("DOCKER_CONFIG") else Path.home() / ".docker"


def _config_keys(registry: str) -> list[str]:
    if registry in DOCKER_HUB:
        return ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/"]


def _from_helper(helper: str, key: str, source: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        return None
    # the helper protocol: server URL on stdin, JSON with the secret on stdout (captured, never logged)
    proc = subprocess.run([exe, "get"], input=key, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None
    user, secret = data.get("Username", ""), data.get("Secret", "")
    if not secret:
        return None
    return Credentials(user, secret, source=f"{source} (credential helper {helper})")


def credentials_from_env() -> Credentials | None:
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if not user and not password:
        return None
    if not user or not password:
        missing = ENV_USER if not user else ENV_PASSWORD
        raise UserError(f"{missing} is not set, but its partner is",
                        where=f"environment: {ENV_USER} / {ENV_PASSWORD}", fix="set both, or neither")
    return Credentials(user, password, source=f"{ENV_USER}/{ENV_PASSWORD}", from_env=True)


def credentials_from_docker_config(registry: str) -> Credentials | None:
    path = docker_config_dir() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise UserError(f"docker config is not readable JSON: {exc.__class__.__name__}", where=str(path),
                        fix="fix or move the file (docker login rewrites it)") from exc
    keys = _config_keys(registry)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return _from_helper(helpers[key], key, str(path))
    auths = config.get("auths") or {}
    for key in keys:
        entry = auths.get(key) or {}
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"the auths entry for {key} is not base64 user:password", where=str(path),
                                fix=f"docker logout {registry} && docker login {registry}") from exc
            return Credentials(user, password, source=str(path))
    if config.get("credsStore"):
        for key in keys:
            found = _from_helper(config["credsStore"], key, str(path))
            if found:
                return found
    return None


def find_credentials(registry: str) -> Credentials | None:
    return credentials_from_env() or credentials_from_docker_config(registry)


def _docker_login(env: dict[str, str], registry: str, creds: Credentials, retries: int, backoff_s: float,
                  log: Callable[[str], None]) -> None:
    # docker insists on --username with --password-stdin; the username is an identifier, the secret
    # travels on stdin only.
    cmd = ["login", "--username", creds.username, "--password-stdin", registry]

    def attempt() -> None:
        proc = docker.call(cmd, input=creds.password, env=env, timeout=120, check=False)
        out = scrub(proc.stdout + proc.stderr, creds)
        log(f"$ docker login --username *** --password-stdin {registry}\n{out}")
        if proc.returncode == 0:
            return
        kind = classify(out)
        if kind == "transient":
            raise TransientError(out.strip().splitlines()[-1] if out.strip() else "docker login failed")
        last = out.strip().splitlines()[-1] if out.strip() else f"exit status {proc.returncode}"
        if kind == "unreachable":
            raise UserError(f"registry {registry} is not reachable from the docker engine: {last}",
                            where=f"docker login {registry}", fix=UNREACHABLE_FIX)
        if kind == "auth":
            raise UserError(f"registry {registry} refused the credentials from {creds.source}: {last}",
                            where=f"docker login {registry}", fix=f"check {ENV_USER} / {ENV_PASSWORD}")
        raise UserError(f"docker login {registry} failed: {last}", where="docker login",
                        fix="is the registry reachable from the docker engine?")

    with_retries(attempt, what=f"docker login {registry}", retries=retries, backoff_s=backoff_s,
                 is_transient=lambda e: isinstance(e, TransientError), on_retry=log)


@contextlib.contextmanager
def docker_env(registry: str, creds: Credentials | None, *, retries: int = 4, backoff_s: float = 1.0,
               log: Callable[[str], None] = lambda _: None) -> Iterator[dict[str, str]]:
    """The environment for docker CLI calls that talk to `registry`.

    Environment credentials are logged into a temporary DOCKER_CONFIG (0700) that is removed on the way
    out, whatever happens; docker-config credentials are used as they are.
    """
    env = dict(os.environ)
    if creds is None or not creds.from_env:
        yield env
        return
    tmp = tempfile.mkdtemp(prefix="flagrel-docker-config-")
    try:
        os.chmod(tmp, 0o700)
        env["DOCKER_CONFIG"] = tmp
        _docker_login(env, registry, creds, retries, backoff_s, log)
        yield env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_loopback(registry: str) -> bool:
    """Docker talks plain http to 127.0.0.0/8 and localhost without --insecure-registry; so do we."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistryClient:
    """Just enough of the distribution v2 API to read manifests' digests: GET /v2/, HEAD/GET manifests."""

    def __init__(self, registry: str, creds: Credentials | None, *, retries: int = 4, backoff_s: float = 1.0,
                 timeout_s: float = 30.0, log: Callable[[str], None] = lambda _: None) -> None:
        host = "registry-1.docker.io" if registry in DOCKER_HUB else registry
        loopback = is_loopback(registry)
        self.base = f"{'http' if loopback else 'https'}://{host}"
        self.registry = registry
        self.creds = creds
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.log = log
        self.session = requests.Session()
        # a loopback registry must not be sent through a corporate proxy from the environment
        self.session.trust_env = not loopback
        self._auth_header: dict[str, str] = {}  # per scope; Basic uses key ""

    # -- auth -------------------------------------------------------------------------------------------
    def _basic(self) -> str:
        assert self.creds is not None
        return "Basic " + base64.b64encode(f"{self.creds.username}:{self.creds.password}".encode()).decode()

    def _authorize(self, response: requests.Response, scope: str) -> bool:
        """Answer a 401 challenge; False when we have nothing to answer it with."""
        if self.creds is None:
            return False
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            query = {"service": params.get("service", "")}
            query["scope"] = params.get("scope") or scope
            try:
                token = self.session.get(params["realm"], params=query, headers={"Authorization": self._basic()},
                                         timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(f"token endpoint: {exc.__class__.__name__}") from exc
            if token.status_code >= 500:
                raise TransientError(f"token endpoint answered {token.status_code}")
            if token.status_code != 200:
                return False
            try:
                body = token.json()
            except ValueError:
                return False
            value = body.get("token") or body.get("access_token")
            if not value:
                return False
            self._auth_header[scope] = f"Bearer {value}"
            return True
        self._auth_header[scope] = self._basic()
        return True

    def _auth_error(self, what: str, status: int) -> UserError:
        if self.creds is None:
            return UserError(
                f"registry {self.registry} needs credentials and none were found ({what}: HTTP {status})",
                where=f"environment {ENV_USER}/{ENV_PASSWORD}, or {docker_config_dir() / 'config.json'}",
                fix=f"set {ENV_USER} and {ENV_PASSWORD} (CI: from secrets), or run `docker login {self.registry}`",
            )
        return UserError(f"registry {self.registry} refused the credentials from {self.creds.source} "
                         f"({what}: HTTP {status})",
                         where=self.creds.source, fix="check the user, the password and its push/pull rights")

    # -- requests ---------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, scope: str, headers: dict[str, str] | None = None
                 ) -> requests.Response:
        url = self.base + path
        what = f"{method} {path}"

        def attempt() -> requests.Response:
            tried_auth = False
            while True:
                sent = dict(headers or {})
                if scope in self._auth_header:
                    sent["Authorization"] = self._auth_header[scope]
                try:
                    response = self.session.request(method, url, headers=sent, timeout=self.timeout_s,
                                                    allow_redirects=True)
                except (requests.ConnectionError, requests.Timeout) as exc:
                    why = _why_unreachable(exc) if isinstance(exc, requests.ConnectionError) else None
                    if why:
                        self.log(f"{what}: {self.registry} unreachable ({why})")
                        raise UserError(f"registry {self.registry} is not reachable at {self.base}: {why}",
                                        where=f"{what} to {self.registry}", fix=UNREACHABLE_FIX) from None
                    raise TransientError(f"{what}: {exc.__class__.__name__}") from exc
                if response.status_code in (401, 403):
                    if response.status_code == 401 and not tried_auth and self._authorize(response, scope):
                        tried_auth = True
                        continue
                    raise self._auth_error(what, response.status_code)
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(f"{what}: HTTP {response.status_code}")
                return response

        return with_retries(attempt, what=what, retries=self.retries, backoff_s=self.backoff_s,
                            is_transient=lambda e: isinstance(e, TransientError), on_retry=self.log)

    def check_access(self, repository: str) -> None:
        """Fail early and clearly when the registry wants credentials we do not have, or rejects ours."""
        response = self._request("GET", "/v2/", scope=f"repository:{repository}:pull")
        if response.status_code != 200:
            raise UserError(f"{self.base}/v2/ answered HTTP {response.status_code}; not a v2 registry?",
                            where=self.registry, fix="check --registry / FLAGREL_REGISTRY")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The registry's digest for a tag (Docker-Content-Digest), or None when the tag does not exist."""
        path = f"/v2/{repository}/manifests/{reference}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        response = self._request("HEAD", path, scope=f"repository:{repository}:pull", headers=headers)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise UserError(f"HEAD {path} answered HTTP {response.status_code}", where=self.registry)
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):  # it lands in records, cards and commands
                raise UserError(f"HEAD {path} answered a malformed digest {digest[:80]!r}", where=self.registry,
                                fix="is this a distribution v2 registry? check --registry / FLAGREL_REGISTRY")
            return digest
        # some registries omit the header on HEAD: the digest is the sha256 of the manifest bytes
        _, body = self.manifest(repository, reference)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        path = f"/v2/{repository}/manifests/{reference}"
        response = self._request("GET", path, scope=f"repository:{repository}:pull",
                                 headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code != 200:
            raise UserError(f"GET {path} answered HTTP {response.status_code}", where=self.registry)
        return response.headers.get("Content-Type", ""), response.content

    def config_digest(self, repository: str, reference: str) -> str | None:
        """The image config digest a single-platform manifest names (equal to the local image id)."""
        _, body = self.manifest(repository, reference)
        try:
            data = json.loads(body)
        except ValueError:
            return None
        config = (data.get("config") if isinstance(data, dict) else None) or {}
        return config.get("digest") if isinstance(config, dict) else None
