"""Phase headers, live progress and full logs in files whose path is printed.

Plain lines (info, warn, phase headers, errors) are written directly, with ANSI colours on a terminal:
importing rich costs about 75 ms, which the quick commands (patch, unpatch) cannot afford. rich is
imported on first use of `console` (markup, live status lines, tables).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections import deque, namedtuple
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.core import paths
from tools.core.errors import UserError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from subprocess import Popen

    from rich.console import Console

# rich markup starts a tag with a lower-case letter, '#', '@' or '/' ("[bold]", "[/]"); "[PATCH 2/7]" is text
_MARKUP = re.compile(r"\[(?:/|[a-z#@])[^\[\]]*\]")
_COLOURS = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "dim": "2"}


def _rich() -> Console:
    made = globals().get("console")
    if made is None:
        from rich.console import Console

        made = Console(stderr=True, highlight=False)
        globals()["console"] = made
    return made


def __getattr__(name: str) -> object:
    """`console` (a rich Console on stderr) is made on first use."""
    if name == "console":
        return _rich()
    raise AttributeError(name)


def _tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def _plain(text: str, colour: str | None = None) -> None:
    if colour and _tty():
        text = f"\033[{_COLOURS[colour]}m{text}\033[0m"
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

# Anything that looks like a credential in a command line or log line is masked before it is shown:
# the value after password=/token: ..., and the password of a URL's user:password@. Compiled on first use
# (re caches them): the quick commands log no command line.
_SECRET_PATTERNS = [
    (r"(?i)(authorization)([=: ]+)((?:basic|bearer|token|digest) +)?(\S+)", r"\1\2\3***"),
    (r"(?i)(password|passwd|token|secret)([=: ]+)(\S+)", r"\1\2***"),
    (r"(?i)(https?://[^:/@\s]+:)([^@\s]+)(@)", r"\1***\3"),
]


def redact(text: str) -> str:
    for pattern, masked in _SECRET_PATTERNS:
        text = re.sub(pattern, masked, text)
    return text


def info(message: str, *, markup: bool = True) -> None:
    """One line; rich markup ("[green]ok[/]") is rendered when present and `markup` is on."""
    if markup and _MARKUP.search(message):
        _rich().print(message)
    else:
        _plain(message)


def warn(message: str) -> None:
    if _tty():
        sys.stderr.write(f"\033[33mwarning:\033[0m {message}\n")
    else:
        sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def phase(title: str) -> Iterator[None]:
    """A header before a stage and its duration after it."""
    width = min(os.get_terminal_size(sys.stderr.fileno()).columns, 120) if _tty() else 80
    side = max(2, (width - len(title) - 2) // 2)
    _plain(f"{'─' * side} {title} {'─' * max(2, width - side - len(title) - 2)}", "bold")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        _plain(f"✗ {title} failed after {time.monotonic() - start:.1f}s", "red")
        raise
    _plain(f"✓ {title} ({time.monotonic() - start:.1f}s)", "green")


def new_log(name: str) -> Path:
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return paths.logs_dir() / f"{stamp}-{name}.log"


class RunResult(namedtuple("RunResult", "returncode tail log")):
    __slots__ = ()
    returncode: int
    tail: list[str]
    log: Path


def run_logged(
    cmd: Sequence[str],
    log: Path,
    *,
    title: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    tail_lines: int = 40,
) -> RunResult:
    """Run a long command: every line to `log`, the latest line live on the terminal."""
    import subprocess  # here: the quick commands run git through tools.mech.proc and never import it

    tail: deque[str] = deque(maxlen=tail_lines)
    _plain(f"  log: {log}")
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {redact(' '.join(cmd))}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                text=True, errors="replace", bufsize=1, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise UserError(f"{cmd[0]} is not installed", fix=f"install {cmd[0]} and retry") from exc
        assert proc.stdout is not None
        start = time.monotonic()
        # from here on, whatever ends us early (Ctrl-C, SIGTERM, even while rich loads; a full disk under the
        # log) ends the command's group first: in a session of its own, nothing else would stop it
        try:
            with _rich().status(title) as status:
                for raw in proc.stdout:
                    line = redact(raw.rstrip("\n"))
                    out.write(line + "\n")
                    tail.append(line)
                    if line.strip():
                        status.update(f"{title} [dim]{time.monotonic() - start:5.0f}s[/] {line[:100]}")
                proc.wait()
        except BaseException:
            _end_group(proc)
            raise
    return RunResult(proc.returncode, list(tail), log)


def _end_group(proc: Popen[str], grace: float = 10.0) -> None:
    """Stop everything the command started, as Ctrl-C at a terminal would (SIGINT to its process group), and
    wait until none of it is left; SIGKILL after `grace` seconds. The group, not the child alone: docker's
    CLI runs buildx as a process of its own, which could outlive the CLI (and name our secrets in its argv)."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def print_tail(result: RunResult, count: int = 25) -> None:
    for line in result.tail[-count:]:
        _plain(f"  | {line}")
    _plain(f"  full log: {result.log}")


def fail_exit(err: UserError) -> int:
    _plain(err.render(), "red")
    return err.exit_code


def stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
