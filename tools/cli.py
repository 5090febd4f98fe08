"""Command-line entry: `python -m tools COMMAND ...`. Each nox session is one command here.

Each command lives in the module named below, which defines `configure(parser)` and `command(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tools.console import fail_exit, stderr_line
from tools.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "patch": ("tools.patches_cli", "apply the vendor patch stack onto the pristine upstream workspace"),
    "unpatch": ("tools.patches_cli", "return a vendor workspace to pristine, never losing an edit"),
    "export-patches": ("tools.patches_cli", "write a workspace's commits back to patches/"),
    "check-patches": ("tools.patches_cli", "prove every vendor stack applies and round-trips"),
    "fetch-source": ("tools.patches_cli", "materialise the pristine upstream tree into the cache"),
    "render": ("tools.build_cli", "write and print the plan and the Dockerfile for a recipe"),
    "build-cpu": ("tools.build_cli", "build, validate (and --push) a cpu recipe's image"),
    "build-nvidia": ("tools.build_cli", "build, validate (and --push) an nvidia recipe's image"),
    "build-ascend": ("tools.build_cli", "build, validate (and --push) an ascend recipe's image"),
    "smoke": ("tools.smoke_cli", "serve a built image and check it through the OpenAI API"),
    "op-tests": ("tools.optests_cli", "FlagGems operator tests vs torch against float64 references"),
    "publish": ("tools.publish_cli", "push a validated image (immutable + moving tags), verify, record, card"),
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
