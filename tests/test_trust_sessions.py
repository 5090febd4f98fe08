"""Trust boundaries, through the real sessions (`python -m tools ...` and `nox -s ...` in subprocesses).

Each test repeats one case of issue 13 the way a user would: bad bytes, stale or foreign validation results,
credentials on a command line, a changed pin on a warm cache, a registry where nothing listens, Ctrl-C in
the middle of a build. Exit codes are the README's: 0 ok, 1 a check failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from registry import docker_cli, free_port, make_image, remove_image  # noqa: F401
from test_publish import _labels

from tools import PROJECT_ROOT
from tools.core.recipe import load_recipe, recipe_path
from tools.stages import results


def _env(build_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", FLAGREL_BUILD=str(build_dir))
    for var in ("FLAGREL_REGISTRY", "FLAGREL_NAMESPACE", "FLAGREL_REGISTRY_USER", "FLAGREL_REGISTRY_PASSWORD",
                "FLAGREL_INDEX_URL", "FLAGREL_EXTRA_INDEX_URLS"):
        env.pop(var, None)
    env.update(extra)
    return env


def tool(build_dir: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", *args], capture_output=True, text=True,
                          env=_env(build_dir, **extra), cwd=PROJECT_ROOT, timeout=timeout, check=False)


def nox(build_dir: Path, session: str, *args: str, timeout: float = 600,
        **extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nox", "-f", str(PROJECT_ROOT / "noxfile.py"), "-s", session, "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(build_dir, **extra), cwd=PROJECT_ROOT,
                          timeout=timeout, check=False)


def _one_message(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, (needle, text[-3000:])
    return text


# -- 10: exit codes through nox; 4: a credential never reaches nox's echo or the tool --------------------------

def test_exit_codes_and_credentials_through_nox(build_dir):
    _one_message(nox(build_dir, "render", "no-such-recipe"), 2, "recipe 'no-such-recipe' not found",
                 "Session render failed with exit code 2")
    token = "SEKRET" + secrets.token_hex(4)
    refused = nox(build_dir, "render", "tiny-cpu", "--index-url", f"https://me:{token}@mirror.example/simple")
    text = _one_message(refused, 2, "--index-url carries credentials", "FLAGREL_INDEX_URL", "--index-url-file")
    assert token not in text, "the token reached nox's output"
    query = nox(build_dir, "render", "tiny-cpu", "--extra-index-url", f"https://mirror.example/simple?token={token}")
    assert token not in _one_message(query, 2, "--extra-index-url carries credentials", "FLAGREL_EXTRA_INDEX_URLS")
    ok = nox(build_dir, "render", "tiny-cpu")
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_index_url_with_a_token_from_the_environment_or_a_file(build_dir, tmp_path):
    token = "SEKRET" + secrets.token_hex(4)
    url = f"https://me:{token}@mirror.example/simple"
    from_env = tool(build_dir, "render", "tiny-cpu", FLAGREL_INDEX_URL=url)
    assert from_env.returncode == 0 and token not in from_env.stdout + from_env.stderr
    secret_file = tmp_path / "index-url"
    secret_file.write_text(f"# the team mirror\n{url}\n")
    from_file = tool(build_dir, "render", "tiny-cpu", "--index-url-file", str(secret_file))
    assert from_file.returncode == 0 and token not in from_file.stdout + from_file.stderr
    # what the build would hand to pip as its secret config
    from tools.cli import build as cli_build
    from tools.stages.build import _pip_config

    parser = __import__("argparse").ArgumentParser()
    cli_build.configure("build-cpu", parser)
    options = cli_build.options_from(parser.parse_args(["tiny-cpu", "--index-url-file", str(secret_file)]))
    assert _pip_config(options) == f"[global]\nindex-url = {url}\n"


# -- 3: --base-image is an image reference --------------------------------------------------------------------

@pytest.mark.parametrize("value", ["x\nRUN echo pwned", "bad ref!!"])
def test_base_image_is_refused_at_the_boundary(build_dir, value):
    proc = tool(build_dir, "render", "tiny-cpu", "--base-image", value)
    _one_message(proc, 2, "is not an image reference", "where: --base-image")
    assert "RUN echo pwned" not in proc.stdout and not (build_dir / "rendered").exists()


# -- 6 and 10: bytes that are not UTF-8, duplicate keys ---------------------------------------------------------

def test_non_utf8_recipe_duplicate_keys_and_non_utf8_series(build_dir, tmp_path):
    text = recipe_path("tiny-cpu").read_text(encoding="utf-8")
    latin1 = tmp_path / "latin1" / "tiny-cpu.yaml"
    latin1.parent.mkdir()
    latin1.write_bytes(text.replace("A tiny randomly", "Un tr\xe8s petit").encode("latin-1"))
    line = text[:text.index("A tiny randomly")].count("\n") + 1
    _one_message(tool(build_dir, "render", str(latin1)), 2, "recipe is not UTF-8 text: byte 0xe8",
                 f"where: {latin1}:{line}", "save the file as UTF-8")

    twice = tmp_path / "twice" / "tiny-cpu.yaml"
    twice.parent.mkdir()
    twice.write_text(text.replace("  port: 9010\n", "  port: 9010\n  served_model_name: other\n"))
    _one_message(tool(build_dir, "render", str(twice)), 2, "duplicate key 'served_model_name' (first at line",
                 f"where: {twice}:")

    patches = tmp_path / "patches"
    shutil.copytree(PROJECT_ROOT / "patches", patches)
    series = patches / "vllm" / "cpu" / "series"
    series.write_bytes(series.read_bytes() + b"# caf\xe9\n")
    _one_message(tool(build_dir, "render", "tiny-cpu", FLAGREL_PATCHES=str(patches)), 2,
                 "series file is not UTF-8 text: byte 0xe9", f"where: {series}:")


# -- 5: the cache is verified against the full pin ------------------------------------------------------------

def _fake_sdist(version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((f"vllm-{version}/vllm/__init__.py", b"x = 1\n"), (f"vllm-{version}/README", b"r\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _lock_with(tmp_path: Path, name: str, **upstream: str) -> Path:
    text = (PROJECT_ROOT / "versions.lock").read_text(encoding="utf-8")
    for key, value in upstream.items():
        text = re.sub(rf'(?m)^{key} = ".*"$', f'{key} = "{value}"', text, count=1)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_changed_pin_on_a_warm_cache_is_not_cached(build_dir, tmp_path):
    data = _fake_sdist("0.32.0")
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "vllm-0.32.0.tar.gz").write_bytes(data)
    # nothing listens on port 9: any download attempt fails at once and says so
    url = "https://127.0.0.1:9/packages/vllm-0.32.0.tar.gz"
    good = _lock_with(tmp_path, "good.lock", sdist_url=url, sdist_sha256=sha)
    env = {"FLAGREL_CACHE": str(cache), "FLAGREL_LOCK": str(good)}
    first = tool(build_dir, "fetch-source", "--from", "sdist", **env)
    assert first.returncode == 0 and "(cached)" not in first.stderr, first.stderr[-2000:]
    warm = tool(build_dir, "fetch-source", "--from", "sdist", **env)
    assert warm.returncode == 0 and "(cached)" in warm.stderr

    wrong_digit = sha[:-1] + ("0" if sha[-1] != "0" else "1")
    changed = tool(build_dir, "fetch-source", "--from", "sdist", **{**env, "FLAGREL_LOCK": str(
        _lock_with(tmp_path, "pin.lock", sdist_url=url, sdist_sha256=wrong_digit))})
    text = _one_message(changed, 2, f"made from another pin ({sha[:16]}...): not the lock's", "cannot download")
    assert "(cached)" not in text

    moved = "https://127.0.0.1:9/mirror/vllm-0.32.0.tar.gz"
    other_url = tool(build_dir, "fetch-source", "--from", "sdist", **{**env, "FLAGREL_LOCK": str(
        _lock_with(tmp_path, "url.lock", sdist_url=moved, sdist_sha256=sha))})
    assert other_url.returncode == 0, other_url.stderr[-2000:]
    assert "(cached)" not in other_url.stderr and f"made from another URL ({url})" in other_url.stderr
    again = tool(build_dir, "fetch-source", "--from", "sdist", **env)  # back to the first pin: made afresh
    assert again.returncode == 0 and "(cached)" not in again.stderr


# -- 1, 2, 6: the publish gate binds results to image, recipe, checks and configuration -------------------------

@pytest.fixture
def labelled_image(docker_cli):  # noqa: F811 - the fixture imported above
    ref = f"flagrelease-test/trust-{secrets.token_hex(4)}:latest"
    image_id = make_image(ref, f"trust {ref}", _labels(secrets.token_hex(32)))
    yield ref, image_id
    remove_image(image_id)


def _pass(recipe_file: str, image_id: str, *, passed: bool = True, overrides: dict | None = None,
          **changes: object) -> None:
    """Store both results for a recipe as it is now (op-tests with `overrides`), with `changes` applied."""
    recipe, _ = load_recipe(recipe_file)
    for kind in results.KINDS:
        result = results.result_for(recipe, kind, image_id, passed=passed,
                                    overrides=overrides if kind == "op-tests" else None)
        results.store(dataclasses.replace(result, **changes) if changes else result)


def _other_recipe(tmp_path: Path) -> Path:
    data = yaml.safe_load(recipe_path("tiny-cpu").read_text(encoding="utf-8"))
    data["name"] = "other"
    data["serve"]["served_model_name"] = "another-name"
    path = tmp_path / "recipes" / "other.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_publish_gate_binds_results_to_recipe_and_configuration(build_dir, tmp_path, labelled_image, monkeypatch):
    ref, image_id = labelled_image
    monkeypatch.setenv("FLAGREL_BUILD", str(build_dir))
    publish = ("publish", "tiny-cpu", "--image", ref, "--dry-run", "--registry", "registry.example.com")
    # another recipe's passing results do not validate tiny-cpu (through nox: its exit code is kept)
    _pass(str(_other_recipe(tmp_path)), image_id)
    _one_message(nox(build_dir, *publish), 1, "no stored smoke result for recipe tiny-cpu on this image",
                 "only recipe other has one", "Session publish failed with exit code 1")
    # this recipe's own results pass; a later failing run of the other recipe does not overwrite them
    _pass("tiny-cpu", image_id)
    _pass(str(_other_recipe(tmp_path)), image_id, passed=False)
    ok = tool(build_dir, *publish)
    assert ok.returncode == 0 and "smoke passed; op-tests passed" in ok.stderr, ok.stderr[-2000:]
    # the recipe changed after validation: refused, naming the keys
    data = yaml.safe_load(recipe_path("tiny-cpu").read_text(encoding="utf-8"))
    data["serve"]["served_model_name"] = "renamed"
    data["serve"]["engine_args"]["max_model_len"] = 999999
    edited = tmp_path / "edited" / "tiny-cpu.yaml"
    edited.parent.mkdir()
    edited.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    _one_message(tool(build_dir, "publish", str(edited), *publish[2:]), 1,
                 "the recipe changed since it ran: serve.engine_args.max_model_len, serve.served_model_name")
    # a narrower op-test run (--small) and another version of the checks do not validate it either
    _pass("tiny-cpu", image_id, overrides={"small": True})
    _one_message(tool(build_dir, *publish), 1, "command-line overrides (small=True)")
    _pass("tiny-cpu", image_id, checks_version=results.CHECKS_VERSION["smoke"] - 1)
    _one_message(tool(build_dir, *publish), 1, "it ran version 1 of the smoke checks")
    # damaged result files: one message, where and how to fix
    path = results.result_path(image_id, "tiny-cpu", "smoke")
    path.write_text("{not json")
    _one_message(tool(build_dir, *publish), 2, "stored smoke result is not readable JSON", f"where: {path}",
                 "nox -s smoke -- tiny-cpu")
    path.write_text(json.dumps(["a", "list"]))
    _one_message(tool(build_dir, *publish), 2, "stored smoke result is a JSON list, not an object")
    path.write_bytes(b"\xff\xfe")
    _one_message(tool(build_dir, *publish), 2, "not readable JSON (UnicodeDecodeError")


# -- 9: a registry where nothing listens --------------------------------------------------------------------

def test_unreachable_registry_is_named_not_retried_and_logged(build_dir, tmp_path, labelled_image, monkeypatch):
    ref, image_id = labelled_image
    monkeypatch.setenv("FLAGREL_BUILD", str(build_dir))
    _pass("tiny-cpu", image_id)
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = tool(build_dir, "publish", "tiny-cpu", "--image", ref, "--registry", f"127.0.0.1:{port}",
                DOCKER_CONFIG=str(tmp_path))
    elapsed = time.monotonic() - start
    text = _one_message(proc, 2, f"registry 127.0.0.1:{port} is not reachable", "connection refused",
                        "not listening", "this is not retried")
    assert elapsed < 20 and "retry" not in text.split("fix:")[0]
    log = Path(re.search(r"log: (\S+publish-tiny-cpu\.log)", text).group(1))
    assert log.is_file() and "unreachable" in log.read_text()


# -- 8: Ctrl-C and SIGTERM during a build leave no secret behind ----------------------------------------------

def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {pattern} appeared: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{pattern} did not appear in {timeout:.0f}s")


@pytest.mark.e2e
@pytest.mark.docker
@pytest.mark.parametrize("how", ["nox SIGINT to the process group", "SIGTERM to the tool"])
def test_interrupt_during_a_build_removes_the_secrets_folder(tiny_cpu_image, build_dir, tmp_path, how):
    token = "SEKRET" + secrets.token_hex(4)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ["tiny-cpu", "--no-cache", "--skip-smoke", "interrupt test", "--skip-op-tests", "interrupt test"]
    if how.startswith("nox"):
        cmd = [sys.executable, "-m", "nox", "-f", str(PROJECT_ROOT / "noxfile.py"), "-s", "build-cpu", "--", *args]
    else:
        cmd = [sys.executable, "-m", "tools", "build-cpu", *args]
    env = _env(build_dir, TMPDIR=str(tmp), FLAGREL_INDEX_URL=f"https://me:{token}@pypi.org/simple")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=PROJECT_ROOT, start_new_session=True)
    try:
        conf = _wait_for("flagrel-secrets-*/pip.conf", tmp, proc, timeout=600)
        assert token in conf.read_text()
        time.sleep(2)  # the build is running
        if how.startswith("nox"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted (" in out and "exit 130" in out
    assert not list(tmp.glob("flagrel-secrets-*")), "the folder with pip.conf survived the interrupt"
    assert token not in out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(tmp) not in ps, "a build process outlived the interrupt"
