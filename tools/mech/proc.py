"""Run a program with its output collected: what subprocess.run(capture_output=True) does for the git layer,
without importing subprocess (with threading, selectors and locale that costs every `patch` and `unpatch`
2-3 ms of start-up, about as much as the git work it waits for). posix_spawn, pipes and poll; argument lists
only, never a shell. Commands that stream or log their output (docker, builds) keep using subprocess.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import namedtuple
from collections.abc import Mapping, Sequence

# what subprocess's restore_signals gives a child: Python ignores these, and an ignored disposition survives
# exec (a git writing into a closed pipe would get EPIPE errors instead of ending quietly)
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_CHUNK = 1 << 16


class Finished(namedtuple("Finished", "args returncode stdout stderr")):
    __slots__ = ()
    args: list[str]
    returncode: int  # negative: killed by that signal (as subprocess reports it)
    stdout: bytes
    stderr: bytes


class TimedOut(Exception):
    """The program ran past its time and was killed (its output is dropped)."""


def run(args: Sequence[str], *, env: Mapping[str, str], input: bytes | None = None,
        timeout: float | None = None) -> Finished:
    """Run `args` (found on this process's PATH, as posix_spawnp does) with stdout and stderr collected
    and `input` on stdin (None: the caller's stdin). Raises FileNotFoundError when the program is missing
    and TimedOut after `timeout` seconds; on any exception (Ctrl-C) the child is killed and reaped before
    it propagates."""
    argv = list(args)
    # made in this order, a parent with closed stdio (os.pipe() then hands out 0-2) still gives each end
    # its place: no later dup2 overwrites an earlier one's source (tested)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if input is not None else (-1, -1)
    actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    if input is not None:
        actions.append((os.POSIX_SPAWN_DUP2, in_r, 0))
    ours = {out_r, err_r, in_w} - {-1}
    try:
        pid = os.posix_spawnp(argv[0], argv, dict(env), file_actions=actions, setsigdef=_DEFAULT_SIGNALS)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
    reaped = False
    try:
        chunks = _exchange(out_r, err_r, in_w, input or b"", ours,
                           None if timeout is None else time.monotonic() + timeout)
        if chunks is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            reaped = True
            raise TimedOut(f"{argv[0]} ran past {timeout}s and was killed")
        _, status = os.waitpid(pid, 0)
        reaped = True
        return Finished(argv, os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]), b"".join(chunks[err_r]))
    finally:
        for fd in ours:
            os.close(fd)
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _exchange(out_r: int, err_r: int, in_w: int, data: bytes, ours: set[int],
              deadline: float | None) -> dict[int, list[bytes]] | None:
    """Feed `data` to in_w while reading out_r and err_r to their ends; None when the deadline passed.
    Each fd that is done is closed and taken out of `ours`."""
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, select.POLLIN)
    view, sent = memoryview(data), 0
    if in_w >= 0:
        if data:
            os.set_blocking(in_w, False)
            poller.register(in_w, select.POLLOUT)
        else:
            _done(in_w, None, ours)
    pending = len(ours)
    while pending:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        events = poller.poll(wait)
        if not events and deadline is not None and time.monotonic() >= deadline:
            return None
        for fd, event in events:
            if fd == in_w:
                try:
                    sent += os.write(fd, view[sent:sent + _CHUNK]) if not event & select.POLLERR else len(data)
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # it stopped reading (exited early): what it said still counts
                    sent = len(data)
                if sent >= len(data):
                    _done(fd, poller, ours)
                    pending -= 1
                continue
            block = os.read(fd, _CHUNK)
            if block:
                chunks[fd].append(block)
            else:
                _done(fd, poller, ours)
                pending -= 1
    return chunks


def _done(fd: int, poller: select.poll | None, ours: set[int]) -> None:
    if poller is not None:
        poller.unregister(fd)
    os.close(fd)
    ours.discard(fd)
