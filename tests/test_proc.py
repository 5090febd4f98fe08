"""tools.mech.proc: the git layer's process runner (subprocess.run's contract, without importing subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.mech.proc import Finished, TimedOut, run

ENV = dict(os.environ)
ROOT = Path(__file__).resolve().parents[1]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_both_streams_and_stdin_at_once_never_deadlock() -> None:
    # the child fills both pipes (far past their 64 KiB) before it reads a byte of its 3 MiB of input
    child = ("import sys; sys.stdout.write('o' * 2_000_000); sys.stdout.flush(); sys.stderr.write('e' * 2_000_000);"
             "sys.stderr.flush(); data = sys.stdin.buffer.read(); print(len(data), data[:3].decode())")
    data = b"abc" + bytes(3 * 1024 * 1024)
    before = open_fds()
    done = run([sys.executable, "-c", child], env=ENV, input=data)
    assert done.returncode == 0
    assert done.stdout.startswith(b"o" * 2_000_000) and done.stdout[2_000_000:] == f"{len(data)} abc\n".encode()
    assert done.stderr == b"e" * 2_000_000
    assert open_fds() == before


def test_exit_codes_signals_and_empty_input() -> None:
    assert run(["sh", "-c", "exit 3"], env=ENV).returncode == 3
    assert run(["sh", "-c", "kill -TERM $$"], env=ENV).returncode == -signal.SIGTERM  # as subprocess says it
    assert run(["cat"], env=ENV, input=b"") == Finished(["cat"], 0, b"", b"")  # stdin closed at once: EOF


def test_the_child_gets_default_sigpipe_and_sigxfsz() -> None:
    # Python ignores SIGPIPE; an ignored disposition would survive exec (git would see EPIPE errors)
    status = run(["cat", "/proc/self/status"], env=ENV).stdout.decode()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))


def test_missing_program_and_timeout_leave_nothing_behind() -> None:
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        run(["no-such-program-flagrelease"], env=ENV)
    start = time.monotonic()
    with pytest.raises(TimedOut):
        run(["sleep", "31.7"], env=ENV, timeout=0.3)
    assert time.monotonic() - start < 5
    assert open_fds() == before
    assert subprocess.run(["pgrep", "-f", "sleep 31.7"], capture_output=True).returncode == 1  # killed, reaped


def test_an_interrupt_kills_and_reaps_the_child() -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    before = open_fds()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            run(["sleep", "32.9"], env=ENV, input=b"")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert open_fds() == before
    assert subprocess.run(["pgrep", "-f", "sleep 32.9"], capture_output=True).returncode == 1


def test_a_parent_with_closed_stdio_still_captures(tmp_path: Path) -> None:
    # with 0, 1 and 2 closed, os.pipe() hands out those numbers; the child must still get the right ends
    out = tmp_path / "result"
    script = ("import os, sys; [os.close(fd) for fd in (0, 1, 2)]; from tools.mech.proc import run;"
              "done = run(['sh', '-c', 'cat; echo out; echo err >&2'], env=dict(os.environ), input=b'in ');"
              f"open({str(out)!r}, 'w').write(repr((done.returncode, done.stdout, done.stderr)))")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    assert out.read_text() == repr((0, b"in out\n", b"err\n"))


def test_input_none_hands_the_child_our_stdin(tmp_path: Path) -> None:
    given = tmp_path / "stdin.txt"
    given.write_text("from the caller\n")
    script = "import os; from tools.mech.proc import run; print(run(['cat'], env=dict(os.environ)).stdout)"
    with given.open() as stdin:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdin=stdin, capture_output=True, text=True)
    assert proc.stdout == "b'from the caller\\n'\n"


def test_an_interrupted_logged_command_leaves_none_of_its_processes(tmp_path: Path) -> None:
    # like docker's CLI and its buildx plugin: the child's own child takes a moment to end on SIGINT
    from tools.mech.console import run_logged

    marker = f"flagrelease-grandchild-{os.getpid()}"
    grandchild = ("import signal, sys, time; signal.signal(signal.SIGINT, lambda *a: (time.sleep(1), sys.exit(1)));"
                  "print('up', flush=True); time.sleep(60)")
    child = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}, {marker!r}]);"
             "time.sleep(60)")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    # a caught SIGINT is default again in a child, as under the CLI (a parent that ignores it, such as a
    # background job, would have the children ignore it too: then SIGKILL ends them after the grace period)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(KeyboardInterrupt):
            run_logged([sys.executable, "-c", child], tmp_path / "run.log", title="interrupt test")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGINT, before_int)
    assert "up" in (tmp_path / "run.log").read_text()
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1  # none left, none dying


def test_a_logged_command_ends_with_us_whatever_stops_us(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # not only Ctrl-C: a log that cannot be written (full disk) must not leave the command running on its own
    from tools.mech import console

    marker = f"flagrelease-orphan-{os.getpid()}"
    calls: list[str] = []

    def failing_redact(text: str) -> str:
        calls.append(text)
        if len(calls) > 1:  # the command line is logged; the first output line is not
            raise OSError(28, "No space left on device")
        return text

    monkeypatch.setattr(console, "redact", failing_redact)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # see the test above
    try:
        with pytest.raises(OSError, match="No space left"):
            console.run_logged([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", marker],
                               tmp_path / "run.log", title="full disk")
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1
