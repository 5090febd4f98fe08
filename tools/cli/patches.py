"""`patch`, `unpatch`, `export-patches`, `import-patches`, `check-patches` and `fetch-source`.

Quick to start: nothing here imports pydantic or rich unless the command needs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.core import vendors
from tools.core.errors import UserError
from tools.mech.console import info, phase, warn
from tools.stages import patches
from tools.stages.patches import keys
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
        parser.add_argument("--require-keys", action="store_true",
                            help="fail when an encrypted patch cannot be read (default: report it as unchecked "
                                 f"and check the rest; the key comes from ${keys.KEY_FILE_ENV} or ${keys.KEY_ENV})")
        return
    parser.add_argument("--vendor", required=True, choices=vendors.names(), help="which vendor's stack and workspace")
    if name == "unpatch":
        parser.add_argument("--backup", action="store_true",
                            help="save edits that are not in the stack (uncommitted changes, untracked files, "
                                 "extra commits) on refs/flagrelease/backup/<vendor>/<time>, then unpatch")
    if name == "export-patches":
        parser.add_argument("--new-into", choices=("vendor", "common"), default="vendor",
                            help="where new commits go when no common commit follows them (default: vendor)")
    if name == "import-patches":
        parser.add_argument("folder", type=Path, metavar="DIR",
                            help="the vendor's patches: git format-patch mails (NNNN-*.patch, a cover letter is "
                                 "skipped), plain diffs (*.diff, *.patch) or encrypted *.patch.age; in the order "
                                 "of DIR/series when there is one, else of the [PATCH n/m] numbers, else by name")
        parser.add_argument("--author", metavar="'NAME <MAIL>'",
                            help="author for plain diffs (git mails name their own)")
        parser.add_argument("--date", metavar="DATE",
                            help="date for plain diffs (default: the newest +++ timestamp in the diff)")


def command(name: str, args: argparse.Namespace) -> int:
    if name == "fetch-source":
        from tools.core.lock import load_lock

        with phase("Fetch pristine source"):
            tree = fetch_source(load_lock().lock, mode=args.origin, git_timeout=args.git_timeout)
        print(tree.path)
        return 0
    if name == "check-patches":
        with phase("Check patch stacks"):
            results = patches.check(tuple(args.vendor))
            for r in results:
                count = f"{r.checked} of {r.patches}" if r.unchecked else f"{r.patches}"
                info(f"  {r.vendor:<7} {r.short_id}  {count} patches apply on pristine and export "
                     f"byte-identically ({r.seconds:.2f}s)")
                for line in r.unchecked:
                    warn(f"{r.vendor}: unchecked: {line}")
            unchecked = [f"{r.vendor}: {line}" for r in results for line in r.unchecked]
            if unchecked and args.require_keys:
                raise UserError(f"{len(unchecked)} patch(es) could not be checked (encrypted, no key)",
                                where="\n  ".join(unchecked),
                                fix=f"set {keys.KEY_FILE_ENV} to the age identity file (outside the repository)")
        return 0
    if name == "import-patches":
        with phase(f"Import the {args.vendor} series from {args.folder}"):
            done = patches.import_series(args.vendor, args.folder, author=args.author, date=args.date)
            for item in done.files:
                info(f"  {item.source} -> patches/{patches.PROJECT}/{args.vendor}/{item.name}", markup=False)
                for note in item.notes:
                    info(f"      {note}", markup=False)
            for line in done.skipped:
                info(f"  skipped {line}", markup=False)
            info(f"  {len(done.files)} patches; {len(done.written)} files written, {len(done.removed)} removed")
            for path in done.written:
                info(f"    wrote   patches/{path}")
            for path in done.removed:
                info(f"    removed patches/{path}")
        with phase(f"Check the {args.vendor} stack"):
            for r in patches.check((args.vendor,)):
                info(f"  {r.vendor} {r.short_id}: {r.checked} of {r.patches} patches apply on pristine and "
                     f"export byte-identically")
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
