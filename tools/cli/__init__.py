"""Command-line entry: `python -m tools COMMAND ...`. Each nox session is one command here.

Each command lives in the module named below, which defines `configure(parser)` and `command(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from tools.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, UserError
from tools.mech.console import fail_exit, stderr_line
from tools.mech.git import GitError

COMMANDS: dict[str, tuple[str, str]] = {
    "patch": ("tools.cli.patches", "apply the vendor patch stack onto the pristine upstream workspace"),
    "unpatch": ("tools.cli.patches", "return a vendor workspace to pristine, never losing an edit"),
    "export-patches": ("tools.cli.patches", "write a workspace's commits back to patches/"),
    "import-patches": ("tools.cli.patches", "take a vendor's patch series as it comes, into patches/ (canonical)"),
    "check-patches": ("tools.cli.patches", "prove every vendor stack applies and round-trips"),
    "fetch-source": ("tools.cli.patches", "materialise the pristine upstream tree into the cache"),
    "lock-deps": ("tools.cli.locks", "regenerate locks/<vendor>.txt: every Python package of an image (uv)"),
    "check-locks": ("tools.cli.locks", "fail when a Python lock disagrees with versions.lock"),
    "render": ("tools.cli.build", "write and print the plan and the Dockerfile for a recipe"),
    "smoke": ("tools.cli.smoke", "serve a built image and check it through the OpenAI API"),
    "op-tests": ("tools.cli.optests", "operator tests (FlagGems; vLLM CPU kernels) vs torch and float64"),
    "release-matrix": ("tools.cli.matrix", "print the release workflow's recipe/vendor/runner matrix as JSON"),
    "publish": ("tools.cli.publish", "push a validated image (immutable + moving tags), verify, record, card"),
    "prune": ("tools.cli.prune", "give back disk: images a newer build replaced, build cache beyond a bound"),
}


def commands() -> dict[str, tuple[str, str]]:
    """COMMANDS plus one build command per vendor in the vendor table."""
    from tools.core import vendors

    builds = {f"build-{name}": ("tools.cli.build", f"build, validate (and --push) a {name} recipe's image")
              for name in vendors.names()}
    return {**COMMANDS, **builds}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter imports shutil, and with it bz2 and lzma (3 ms of every command's start,
    `patch` and `unpatch` included, since add_argument makes one) only to ask the terminal's width."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    """The width shutil.get_terminal_size() reports: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that temporary secrets and containers are cleaned up; once unwinding,
    further SIGINT/SIGTERM are ignored so that the cleanup itself is not cut short (SIGKILL still ends it)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def unwind(signum: int, frame: FrameType | None) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    try:
        for sig in previous:
            signal.signal(sig, unwind)
    except ValueError:  # not the main thread (tests calling main() from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _signals_unwind():
            return _main(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, after every cleanup on the way out ran
        what = str(exc) or "SIGINT"
        stderr_line(f"interrupted ({what}): temporary files and containers were cleaned up; exit {EXIT_INTERRUPTED}")
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    try:
        known = commands()
        if not argv or argv[0] in {"-h", "--help"} or argv[0] not in known:
            width = max(map(len, known))
            stderr_line("usage: python -m tools COMMAND [--help] ...\n\ncommands:")
            for name, (_, summary) in known.items():
                stderr_line(f"  {name:<{width}}  {summary}")
            return 0 if argv and argv[0] in {"-h", "--help"} else EXIT_USAGE
        name, rest = argv[0], argv[1:]
        module = importlib.import_module(known[name][0])
        parser = argparse.ArgumentParser(prog=f"nox -s {name} --", description=known[name][1],
                                         formatter_class=_HelpFormatter)
        module.configure(name, parser)
        args = parser.parse_args(rest)
        return int(module.command(name, args) or 0)
    except UserError as err:
        return fail_exit(err)
    except GitError as err:  # one the policy layer did not expect: git's own words, not a traceback
        return fail_exit(UserError(f"git {err.subcommand()} failed: {err.said()}", where=err.repository(),
                                   fix=err.fix()))
