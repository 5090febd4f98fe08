"""`lock-deps` and `check-locks`: the per-vendor Python locks under locks/."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tools.cli.indexurls import ENV_INDEX_URL, no_credentials
from tools.core import vendors
from tools.core.errors import UserError
from tools.core.lock import Lock, load_lock
from tools.mech.console import info, phase, redact, warn
from tools.stages import pylock
from tools.stages.context import wheel_folders
from tools.stages.plan import BuildOptions

PYPI_SIMPLE = "https://pypi.org/simple"


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vendor", action="append", choices=vendors.names(), default=[],
                        help="only this vendor (repeatable; default: every vendor)")
    if name == "check-locks":
        parser.add_argument("--online", action="store_true",
                            help="also ask the index for every locked file: its sha256 and that it installs on "
                                 "the vendor's Python and platform (for locks whose image is not built here)")
        parser.add_argument("--index-url", default=None,
                            help="the PEP 691 simple index to ask (default: $FLAGREL_INDEX_URL, the builds' index, "
                                 f"else {PYPI_SIMPLE}); one with a token goes in that variable, not here")
    if name == "lock-deps":
        parser.add_argument("--wheelhouse", action="append", default=[],
                            help="wheel folder for wheels no index has (default: pip's find-links)")
        parser.add_argument("--upgrade", action="store_true",
                            help="resolve every package anew (default: keep the locked versions the pins allow)")


def command(name: str, args: argparse.Namespace) -> int:
    loaded = load_lock()
    chosen = tuple(args.vendor) or tuple(vendors.names())
    if name == "check-locks":
        with phase("Check Python locks against versions.lock"):
            for vendor, found in pylock.check(loaded, chosen).items():
                if found is None:
                    info(f"  {vendor:<7} no lock: its image resolves at build time")
                else:
                    info(f"  {vendor:<7} {len(found.entries)} packages agree with versions.lock")
        if args.online:
            index = (no_credentials("check-locks --index-url", args.index_url, ENV_INDEX_URL) if args.index_url
                     else os.environ.get(ENV_INDEX_URL) or PYPI_SIMPLE)
            _check_online(loaded.lock, chosen, index)
        return 0
    folders = wheel_folders(BuildOptions(wheelhouse=tuple(Path(w) for w in args.wheelhouse)))
    failed: list[str] = []
    for vendor in chosen:
        with phase(f"Lock {vendor}'s Python packages (uv pip compile)"):
            try:
                text = pylock.compile_lock(loaded.lock, vendor, folders, upgrade=args.upgrade)
            except UserError as err:
                if args.vendor:
                    raise
                warn(f"  {vendor}: not locked: {err.what}")
                failed.append(vendor)
                continue
            path = pylock.lock_path(vendor)
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            checked = pylock.check(loaded, (vendor,))[vendor]
            assert checked is not None
            info(f"  wrote {path} ({len(checked.entries)} packages, {path.stat().st_size} bytes)")
    return 1 if failed and len(failed) == len(chosen) else 0


def _check_online(lock: Lock, chosen: tuple[str, ...], index_url: str) -> None:
    problems: list[str] = []
    shown = redact(index_url)
    with phase(f"Check locked files against {shown}"):
        for vendor in chosen:
            found = pylock.load(vendor)
            pins = lock.vendors[vendor]
            if found is None:
                unlocked = pylock.unlocked_pin_problems(pins, index_url)
                problems += [f"{vendor} (no lock; its template's pins): {p}" for p in unlocked]
                info(f"  {vendor:<7} no lock; {len(pins.pins) + 1 - len(unlocked)} of {len(pins.pins) + 1} "
                     "pinned packages its template installs are on the index")
                continue
            missing = pylock.index_problems(found, pins, index_url)
            problems += [f"locks/{vendor}.txt: {p}" for p in missing]
            local = [w.name for w in pins.wheelhouse]
            asked = len(found.entries) - len(local)
            info(f"  {vendor:<7} {asked - len(missing)} of {asked} packages served as locked for Python "
                 f"{pins.python} {pylock.platform_of(pins)}" + (f" ({', '.join(local)}: local wheel folder)"
                                                               if local else ""))
    if problems:
        raise UserError("the index cannot serve these locked or pinned packages:\n  " + "\n  ".join(problems),
                        where=shown, fix="pin versions the index has (versions.lock), then nox -s lock-deps; "
                                              "or pass the index that has them (--index-url)")
