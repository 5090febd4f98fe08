"""Command-line entry: `python -m tools COMMAND ...`. Each nox session is one command here.

Each command lives in the module named below, which defines `configure(parser)` and `command(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tools.core.errors import UserError
from tools.mech.console import fail_exit, stderr_line

COMMANDS: dict[str, tuple[str, str]] = {
    "patch": ("tools.cli.patches", "apply the vendor patch stack onto the pristine upstream workspace"),
    "unpatch": ("tools.cli.patches", "return a vendor workspace to pristine, never losing an edit"),
    "export-patches": ("tools.cli.patches", "write a workspace's commits back to patches/"),
    "check-patches": ("tools.cli.patches", "prove every vendor stack applies and round-trips"),
    "fetch-source": ("tools.cli.patches", "materialise the pristine upstream tree into the cache"),
    "render": ("tools.cli.build", "write and print the plan and the Dockerfile for a recipe"),
    "build-cpu": ("tools.cli.build", "build, validate (and --push) a cpu recipe's image"),
    "build-nvidia": ("tools.cli.build", "build, validate (and --push) an nvidia recipe's image"),
    "build-ascend": ("tools.cli.build", "build, validate (and --push) an ascend recipe's image"),
    "smoke": ("tools.cli.smoke", "serve a built image and check it through the OpenAI API"),
    "op-tests": ("tools.cli.optests", "FlagGems operator tests vs torch against float64 references"),
    "publish": ("tools.cli.publish", "push a validated image (immutable + moving tags), verify, record, card"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        stderr_line("usage: python -m tools COMMAND [--help] ...\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            stderr_line(f"  {name:<{width}}  {summary}")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"nox -s {name} --", description=COMMANDS[name][1])
    module.configure(name, parser)
    args = parser.parse_args(rest)
    try:
        return int(module.command(name, args) or 0)
    except UserError as err:
        return fail_exit(err)
    except KeyboardInterrupt:
        stderr_line("interrupted")
        return 130
