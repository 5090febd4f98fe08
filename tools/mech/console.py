"""Phase headers, live progress and full logs in files whose path is printed."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from tools.core import paths
from tools.core.errors import UserError

console = Console(stderr=True, highlight=False)

# Anything that looks like a credential in a command line or log line is masked before it is shown.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(password|passwd|token|secret|authorization)([=: ]+)(\S+)"),
    re.compile(r"(?i)(https?://[^:/\s]+:)([^@\s]+)(@)"),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 3:
            text = pattern.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    return text


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


@contextlib.contextmanager
def phase(title: str) -> Iterator[None]:
    """A header before a stage and its duration after it."""
    console.rule(f"[bold]{title}")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        console.print(f"[red]✗ {title} failed after {time.monotonic() - start:.1f}s")
        raise
    console.print(f"[green]✓ {title}[/] ({time.monotonic() - start:.1f}s)")


def new_log(name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return paths.logs_dir() / f"{stamp}-{name}.log"


@dataclass(frozen=True)
class RunResult:
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
    tail: deque[str] = deque(maxlen=tail_lines)
    console.print(f"  log: {log}")
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {redact(' '.join(cmd))}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                text=True, errors="replace", bufsize=1,
            )
        except FileNotFoundError as exc:
            raise UserError(f"{cmd[0]} is not installed", fix=f"install {cmd[0]} and retry") from exc
        assert proc.stdout is not None
        start = time.monotonic()
        with console.status(title) as status:
            try:
                for raw in proc.stdout:
                    line = redact(raw.rstrip("\n"))
                    out.write(line + "\n")
                    tail.append(line)
                    if line.strip():
                        status.update(f"{title} [dim]{time.monotonic() - start:5.0f}s[/] {line[:100]}")
                proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                raise
    return RunResult(proc.returncode, list(tail), log)


def print_tail(result: RunResult, count: int = 25) -> None:
    for line in result.tail[-count:]:
        console.print(f"  [dim]|[/] {line}", markup=False, highlight=False)
    console.print(f"  full log: {result.log}")


def fail_exit(err: UserError) -> int:
    console.print(err.render(), style="red", markup=False, highlight=False, soft_wrap=True)
    return 2


def stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
