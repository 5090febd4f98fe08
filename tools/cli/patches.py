"""`patch`, `unpatch`, `export-patches`, `check-patches` and `fetch-source`."""

from __future__ import annotations

import argparse

from tools.core import vendors
from tools.core.lock import load_lock
from tools.mech.console import info, phase
from tools.stages import patches
from tools.stages.source import MODES, fetch_source


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "fetch-source":
        parser.add_argument("--from", dest="origin", choices=MODES, default=None,
                            help="where the pristine tree comes from: git at the pinned commit, the verified "
                                 "sdist, or auto (git when reachable, else sdist; default, or $FLAGREL_SOURCE)")
        parser.add_argument("--git-timeout", type=float, default=None, metavar="S",
                            help="give up on the git remote after S seconds (default 20, or $FLAGREL_GIT_TIMEOUT)")
        return
    if name == "check-patches":
        parser.add_argument("--vendor", action="append", choices=vendors.names(), default=[],
                            help="check only this vendor's stack (repeatable; default: every vendor)")
        return
    parser.add_argument("--vendor", required=True, choices=vendors.names(), help="which vendor's stack and workspace")
    if name == "unpatch":
        parser.add_argument("--backup", action="store_true",
                            help="save edits that are not in the stack (uncommitted changes, untracked files, "
                                 "extra commits) on refs/flagrelease/backup/<vendor>/<time>, then unpatch")
    if name == "export-patches":
        parser.add_argument("--new-into", choices=("vendor", "common"), default="vendor",
                            help="where new commits go when no common commit follows them (default: vendor)")


def command(name: str, args: argparse.Namespace) -> int:
    if name == "fetch-source":
        with phase("Fetch pristine source"):
            tree = fetch_source(load_lock().lock, mode=args.origin, git_timeout=args.git_timeout)
        print(tree.path)
        return 0
    if name == "check-patches":
        with phase("Check patch stacks"):
            results = patches.check(tuple(args.vendor))
            for r in results:
                info(f"  {r.vendor:<7} {r.short_id}  {r.patches} patches apply on pristine and export "
                     f"byte-identically ({r.seconds:.1f}s)")
        return 0
    if name == "patch":
        with phase(f"Patch {args.vendor} workspace"):
            result = patches.patch(args.vendor)
            if result.changed:
                info(f"  applied {result.applied} patches (stack {result.stack.short_id}) in {result.workspace}")
            else:
                info(f"  already patched with stack {result.stack.short_id}: nothing to do ({result.workspace})")
        return 0
    if name == "unpatch":
        with phase(f"Unpatch {args.vendor} workspace"):
            undone = patches.unpatch(args.vendor, backup=args.backup)
            if undone.backup_ref:
                info(f"  your edits are saved on {undone.backup_ref}")
                info(f"  restore them with: git -C {undone.workspace} checkout -b rescue {undone.backup_ref}")
            state = "back to pristine" if undone.changed else "already pristine: nothing to do"
            info(f"  {state} ({undone.workspace})")
        return 0
    if name == "export-patches":
        with phase(f"Export {args.vendor} workspace to patches/"):
            out = patches.export(args.vendor, new_into=args.new_into)
            counts = ", ".join(f"{part} {n}" for part, n in out.counts.items())
            info(f"  {counts} patches; {len(out.written)} files written, {len(out.removed)} removed")
            for path in out.written:
                info(f"    wrote   patches/{path}")
            for path in out.removed:
                info(f"    removed patches/{path}")
        return 0
    raise AssertionError(name)
