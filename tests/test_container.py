"""running_container against a real Docker engine: the container is gone on every exit path."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tools import PROJECT_ROOT
from tools.core.errors import UserError
from tools.mech.docker import (
    REMOVE_TIMEOUT_S,
    ImageNotFound,
    image_id,
    image_labels,
    leftover_containers,
    running_container,
)

pytestmark = pytest.mark.docker

# Images with a Debian userland and python3 that may already be here: ours, then the build's base.


@pytest.fixture(scope="module")
def debian_image(debian_base: str) -> str:
    """A local Debian image with python3 (no registry to pull from): the locked cpu base."""
    return debian_base


@pytest.fixture
def prefix() -> str:
    return f"frtest-{uuid.uuid4().hex[:8]}"


def _wait_exit(container, timeout: float = 20) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = container.exit_code()
        if code is not None:
            return code
        time.sleep(0.2)
    return None


def test_removed_after_normal_exit(debian_image: str, prefix: str) -> None:
    with running_container(debian_image, ["sleep", "60"], name_prefix=prefix, env={"GREETING": "hi there"}) as c:
        assert c.name.startswith(prefix) and c.id
        assert c.is_running() and c.exit_code() is None
        assert leftover_containers(prefix) == [c.name]
        out = c.exec(["sh", "-c", "echo $GREETING"])
        assert out.returncode == 0 and out.stdout.strip() == "hi there"
    assert leftover_containers(prefix) == []


def test_removed_after_exception(debian_image: str, prefix: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with running_container(debian_image, ["sleep", "60"], name_prefix=prefix):
            assert leftover_containers(prefix)
            raise RuntimeError("boom")
    assert leftover_containers(prefix) == []


def test_crash_log_tail_and_exit_code(debian_image: str, prefix: str, tmp_path: Path) -> None:
    # the pause keeps docker's separate stdout/stderr copies from racing each other into the log
    script = "for i in $(seq 1 50); do echo line-$i; done; sleep 0.5; echo oops >&2; exit 3"
    with running_container(debian_image, ["-c", script], name_prefix=prefix, entrypoint="sh") as c:
        assert _wait_exit(c) == 3
        state = c.state()
        assert state.status == "exited" and not state.running
        tail = c.log_tail(5)
        assert tail == ["line-47", "line-48", "line-49", "line-50", "oops"]
        saved = c.save_logs(tmp_path / "c.log").read_text()
        assert saved.count("line-") == 50
    assert leftover_containers(prefix) == []


def test_failed_start_is_a_user_error_and_leaves_nothing(debian_image: str, prefix: str) -> None:
    # docker creates the container, then cannot start it: the half-made container must go too
    with pytest.raises(UserError, match="docker run"):
        with running_container(debian_image, [], name_prefix=prefix, entrypoint="/no/such/binary"):
            pytest.fail("should not get here")
    assert leftover_containers(prefix) == []


def test_ctrl_c_removes_the_container(debian_image: str, prefix: str) -> None:
    code = (
        "import sys, time\n"
        "from tools.mech.docker import running_container\n"
        "with running_container(sys.argv[1], ['sleep', '60'], name_prefix=sys.argv[2]):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, debian_image, prefix], cwd=PROJECT_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        assert leftover_containers(prefix)
        child.send_signal(signal.SIGINT)
        # the removal waits for the engine, which can be busy for minutes exporting a build's layers
        _, err = child.communicate(timeout=REMOVE_TIMEOUT_S + 60)
        assert "KeyboardInterrupt" in err
    finally:
        if child.poll() is None:
            child.kill()
    assert leftover_containers(prefix) == []


def test_image_helpers(debian_image: str) -> None:
    from registry import make_image, remove_image

    assert image_id(debian_image).startswith("sha256:")
    labelled = make_image("flagrelease-test/labelled:1", "x", {"io.flagrelease.test": "yes", "b": "2"})
    try:
        assert image_labels("flagrelease-test/labelled:1") == {"io.flagrelease.test": "yes", "b": "2"}
        assert image_id("flagrelease-test/labelled:1") == labelled
    finally:
        remove_image(labelled)
    with pytest.raises(ImageNotFound, match="not in the local Docker engine"):
        image_id("flagrelease-test/no-such-image:nope")
    with pytest.raises(ImageNotFound):
        image_labels("flagrelease-test/no-such-image:nope")


def test_no_engine_is_said_plainly_not_as_a_missing_image(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(UserError) as info:
        image_id("flagrelease-local/tiny-cpu:latest")
    assert info.value.what == "no Docker engine answers"
    assert not isinstance(info.value, ImageNotFound)
