"""Sessions are thin: each one hands its arguments to one command of the tools package.

All sessions share one virtualenv (.nox/flagrelease), made once and refreshed when pyproject.toml changes,
so `nox -s patch` costs no install after the first session.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nox
import nox.command
import nox.logger

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".nox" / "flagrelease"
nox.options.default_venv_backend = "none"
nox.options.sessions = ["build-cpu"]


def _python(session: nox.Session) -> str:
    """The shared venv's python, with the project installed (editable) and its test extras."""
    stamp = VENV / ".pyproject.sha256"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    python = VENV / "bin" / "python"
    if not python.exists() or not stamp.exists() or stamp.read_text() != want:
        session.log(f"preparing {VENV} (once per pyproject.toml change)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        # compat: a plain path entry, no import hook to load at every start (10-15 ms per command)
        session.run(str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]",
                    "--config-settings", "editable_mode=compat", external=True)
        stamp.write_text(want)
    return str(python)


# Ctrl-C reaches nox and the tool together. nox waits INTERRUPT_S for the tool to finish on its own, then sends
# SIGTERM and waits TERMINATE_S more before SIGKILL: the tool uses that time to remove containers and the
# temporary folders that hold secrets (nox's defaults, 0.3 s and 0.2 s, cut every cleanup short).
INTERRUPT_S = 10.0
TERMINATE_S = 30.0
# credentials inside URLs: user:secret@ and secret-looking query parameters
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_URL_SECRET_PARAM = re.compile(r"(?i)(://[^\s]*[?&][a-z_]*(?:token|password|passwd|secret|key|auth|sig)[a-z_]*=)[^&\s]+")


def _masked(arg: str) -> str:
    """An argument with the credentials inside URLs replaced by ***. nox echoes the command line (also when it
    fails), so a secret must not even reach it; the tool refuses a masked URL just as it refuses one with a
    real token, and says to pass it by environment variable or file instead."""
    return _URL_SECRET_PARAM.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", arg))


def _tool(session: nox.Session, command: str) -> None:
    """Run one tool command. Its exit code is the session's and nox's (README "Exit codes"): 0 ok, 1 a check
    failed, 2 bad input/usage/environment, 130 interrupted. nox alone would turn every failure into 1."""
    env = {"PYTHONUNBUFFERED": "1"}
    argv = [_python(session), "-m", "tools", command, *map(_masked, session.posargs)]
    try:
        session.run(*argv, external=True, env=env, interrupt_timeout=INTERRUPT_S, terminate_timeout=TERMINATE_S)
    except nox.command.CommandFailed as exc:
        code = exc.return_code if exc.return_code is not None else 1
        nox.logger.logger.error(f"Session {session.name} failed with exit code {code}")
        # SystemExit passes through nox's session runner: nox exits with the tool's code (and, like
        # --stop-on-first-error, runs no later session)
        raise SystemExit(code) from None


@nox.session(name="fetch-source")
def fetch_source(session: nox.Session) -> None:
    """Materialise the pristine upstream tree (git or verified sdist) into the cache."""
    _tool(session, "fetch-source")


@nox.session
def patch(session: nox.Session) -> None:
    """Apply a vendor's patch stack: nox -s patch -- --vendor nvidia"""
    _tool(session, "patch")


@nox.session
def unpatch(session: nox.Session) -> None:
    """Return a vendor workspace to pristine, keeping every edit: nox -s unpatch -- --vendor nvidia"""
    _tool(session, "unpatch")


@nox.session(name="export-patches")
def export_patches(session: nox.Session) -> None:
    """Write a workspace's commits back to patches/: nox -s export-patches -- --vendor nvidia"""
    _tool(session, "export-patches")


@nox.session(name="import-patches")
def import_patches(session: nox.Session) -> None:
    """Take a vendor's series as it comes: nox -s import-patches -- --vendor cpu DIR [--author 'Name <mail>']"""
    _tool(session, "import-patches")


@nox.session(name="check-patches")
def check_patches(session: nox.Session) -> None:
    """Every vendor stack applies on pristine and round-trips byte-identically."""
    _tool(session, "check-patches")


@nox.session(name="lock-deps")
def lock_deps(session: nox.Session) -> None:
    """Regenerate locks/<vendor>.txt with uv from versions.lock's pins: nox -s lock-deps -- [--vendor cpu]"""
    _tool(session, "lock-deps")


@nox.session(name="check-locks")
def check_locks(session: nox.Session) -> None:
    """Every Python lock agrees with versions.lock (engine, torch, FlagGems, FlagScale, Ray, hashes)."""
    _tool(session, "check-locks")


@nox.session
def render(session: nox.Session) -> None:
    """Write and print the Dockerfile and the plan: nox -s render -- RECIPE"""
    _tool(session, "render")


def _build_session(vendor: str) -> None:
    def build(session: nox.Session) -> None:
        _tool(session, f"build-{vendor}")

    build.__doc__ = f"Build, smoke-serve, op-test (and --push) a {vendor} recipe: nox -s build-{vendor} -- RECIPE"
    nox.session(name=f"build-{vendor}")(build)


# one build session per vendor in the vendor table (a new vendor is data, not a noxfile edit)
for _vendor in tomllib.loads((ROOT / "vendors.toml").read_text(encoding="utf-8")):
    _build_session(_vendor)


@nox.session
def smoke(session: nox.Session) -> None:
    """Smoke-serve a built image: nox -s smoke -- tiny-cpu [--image REF] [--port P] [--timeout S]"""
    _tool(session, "smoke")


@nox.session(name="op-tests")
def op_tests(session: nox.Session) -> None:
    """Operator tests (FlagGems, vLLM CPU kernels): nox -s op-tests -- RECIPE [--image REF | --host] [--out DIR]"""
    _tool(session, "op-tests")


@nox.session
def publish(session: nox.Session) -> None:
    """Push a validated image, verify digests, write record + card: nox -s publish -- RECIPE [--dry-run]"""
    _tool(session, "publish")


@nox.session(name="release-matrix")
def release_matrix(session: nox.Session) -> None:
    """The release workflow's matrix as JSON (and into $GITHUB_OUTPUT): nox -s release-matrix -- [--recipe NAME]"""
    _tool(session, "release-matrix")


@nox.session
def prune(session: nox.Session) -> None:
    """Give back disk: images a newer build replaced, build cache: nox -s prune -- [--keep-cache GB] [--dry-run]"""
    _tool(session, "prune")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the project."""
    session.run(_python(session), "-m", "ruff", "check", ".", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, then unit and end-to-end tests (starts a Docker engine and a registry when it can)."""
    python = _python(session)
    session.run(python, "-m", "ruff", "check", ".", external=True)
    env = {"PYTHONUNBUFFERED": "1", "CI": os.environ.get("CI", "")}
    session.run(python, "-m", "pytest", *(session.posargs or ["-q"]), external=True, env=env)
