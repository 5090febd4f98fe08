"""Smoke serve: fast, clear failure for an engine that dies at start; the full run against real vLLM (e2e)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from tools.core.errors import UserError
from tools.core.recipe import Recipe, recipe_path
from tools.mech.docker import ImageNotFound, image_id, leftover_containers
from tools.stages import results
from tools.stages.smoke import (
    NAME_PREFIX,
    SmokeFailed,
    _env_value,
    _hint,
    _model_dir,
    _pick_port,
    root_cause,
    smoke,
)

E2E_IMAGE = "flagrelease-local/tiny-cpu:latest"


def _recipe(**changes: object) -> Recipe:
    """recipes/tiny-cpu.yaml with top-level sections shallow-updated."""
    data = yaml.safe_load(recipe_path("tiny-cpu").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return Recipe.model_validate(data)


@pytest.fixture(scope="module")
def debian_image(debian_base: str) -> str:
    """A Debian image with python3 but no vllm: the locked cpu base."""
    return debian_base


# ---- no Docker needed -------------------------------------------------------------------------------


def test_env_values_are_strings_vllm_can_parse() -> None:
    assert [_env_value(v) for v in (True, False, 1, 0.5, "x")] == ["1", "0", "1", "0.5", "x"]


def test_busy_recipe_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        recipe = _recipe(serve={"port": port})
        chosen = _pick_port(recipe, None)
        assert chosen != port and 1024 <= chosen
        with pytest.raises(UserError, match="in use"):
            _pick_port(recipe, port)


def test_model_dir_needs_weights_for_non_tiny(tmp_path: Path) -> None:
    recipe = _recipe(model={"source": "huggingface", "download": "hf download org/model --local-dir X"})
    with pytest.raises(UserError) as err:
        _model_dir(recipe, None)
    assert "hf download" in err.value.fix and "model.host_path" in err.value.where
    assert _model_dir(recipe, tmp_path) == tmp_path.resolve()
    with pytest.raises(UserError, match="does not exist"):
        _model_dir(recipe, tmp_path / "missing")


def test_hints_name_the_fix() -> None:
    assert "shm_size" in _hint("RuntimeError: Insufficient space in /dev/shm for shared-memory")
    assert "vllm" in _hint("ModuleNotFoundError: No module named 'vllm'")
    assert "libnuma1" in _hint("ImportError('libnuma.so.1: cannot open shared object file')")


def test_root_cause_skips_vllm_wrappers() -> None:
    # shaped like a real vLLM CPU start failure: the cause first, then the generic wrappers
    log = "\n".join([
        "(APIServer pid=1) WARNING [cpu.py:660] Failed to import: ImportError('libnuma.so.1: cannot open')",
        "(APIServer pid=1) WARNING [x.py:1] This can cause fd limit errors like `OSError: [Errno 24] Too many`",
        "(EngineCore pid=26) ERROR 11-22 16:13:40 [core.py:1510] RuntimeError: Insufficient space in /dev/shm: 160 MiB",
        "(EngineCore pid=26) ERROR [core.py:1510] Exception: WorkerProc initialization failed due to ...",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ])
    assert root_cause(log) == "RuntimeError: Insufficient space in /dev/shm: 160 MiB"
    assert root_cause("all fine\n") is None


# ---- real Docker ------------------------------------------------------------------------------------


@pytest.mark.docker
def test_missing_image_is_a_clear_error(docker_engine: object, build_dir: Path) -> None:
    with pytest.raises(ImageNotFound, match="not in the local Docker engine"):
        smoke(_recipe(), "flagrelease-test/no-such-image:nope")


@pytest.mark.docker
def test_engine_crash_is_reported_at_once(debian_image: str, build_dir: Path, tmp_path: Path) -> None:
    recipe = _recipe(name="smoke-crash-test", serve={"ready_timeout_s": 300})
    start = time.monotonic()
    with pytest.raises(SmokeFailed) as caught:
        smoke(recipe, debian_image, model_dir=tmp_path)
    elapsed = time.monotonic() - start
    # reported when the container exits, not at the 300 s deadline
    assert elapsed < 60, elapsed
    err = caught.value
    assert "exited with code 1" in err.what and "No module named 'vllm'" in err.what
    assert "FlagRelease engine image" in err.fix
    report = err.report
    assert not report.passed and report.checks == [] and report.start_to_ready_s is None
    assert any("ModuleNotFoundError" in line for line in report.log_tail) and len(report.log_tail) <= 30
    saved = json.loads(Path(report.report_path).read_text())
    assert saved["failure"] == report.failure and saved["image_id"] == image_id(debian_image)
    assert "No module named 'vllm'" in Path(report.container_log).read_text()
    assert Path(report.report_path).parent == build_dir / "logs"
    stored = results.load(report.image_id, recipe.name, "smoke")
    assert stored is not None and stored.passed is False and stored.report == report.report_path
    # weights other than the recipe's are recorded: this run could not validate the recipe for publishing
    assert stored.config["overrides"] == {"model_dir": str(tmp_path.resolve())}
    assert leftover_containers(f"{NAME_PREFIX}-{recipe.name}") == []


@pytest.mark.docker
def test_engine_that_never_answers_hits_the_deadline(debian_image: str, build_dir: Path, tmp_path: Path) -> None:
    # a stand-in "vllm" that starts, logs, and never listens: mounted and put on PYTHONPATH via the recipe
    fake = tmp_path / "fake"
    (fake / "vllm/entrypoints/openai").mkdir(parents=True)
    for pkg in ("vllm", "vllm/entrypoints", "vllm/entrypoints/openai"):
        (fake / pkg / "__init__.py").write_text("")
    (fake / "vllm/entrypoints/openai/api_server.py").write_text(
        "import sys, time\nprint('fake engine up', sys.argv[1:3], flush=True)\ntime.sleep(600)\n")
    recipe = _recipe(name="smoke-timeout-test",
                     run={"mounts": [f"{fake}:/fake:ro"], "env": {"PYTHONPATH": "/fake"}})
    start = time.monotonic()
    with pytest.raises(SmokeFailed) as caught:
        smoke(recipe, debian_image, model_dir=tmp_path, timeout_s=3)
    assert 3 <= time.monotonic() - start < 30
    assert "not ready after 3s" in caught.value.what
    assert any("fake engine up" in line for line in caught.value.report.log_tail)
    assert leftover_containers(f"{NAME_PREFIX}-{recipe.name}") == []


@pytest.mark.docker
def test_cli_exit_code_on_crash(debian_image: str, build_dir: Path, tmp_path: Path) -> None:
    from tools.cli import main

    # other runs on this engine may have smoke containers of their own: only ours must be gone
    before = set(leftover_containers(f"{NAME_PREFIX}-tiny-cpu"))
    # 1: the check ran and failed (README "Exit codes"); 2 is for bad input
    assert main(["smoke", "tiny-cpu", "--image", debian_image, "--model-dir", str(tmp_path),
                 "--timeout", "120"]) == 1
    assert set(leftover_containers(f"{NAME_PREFIX}-tiny-cpu")) <= before


@pytest.mark.e2e
@pytest.mark.docker
def test_full_smoke_against_real_vllm(tiny_cpu_image: object, build_dir: Path) -> None:
    recipe = _recipe()
    report = smoke(recipe, E2E_IMAGE)
    print(report.summary())
    assert {c.name: c.passed for c in report.checks} == {"models": True, "chat": True, "stream": True,
                                                         "stamp": True}, report.summary()
    assert report.passed and report.start_to_ready_s and report.ttft_s is not None
    stored = results.load(image_id(E2E_IMAGE), recipe.name, "smoke")
    assert stored is not None and stored.passed and "overrides" not in stored.config
    assert leftover_containers(f"{NAME_PREFIX}-{recipe.name}") == []
