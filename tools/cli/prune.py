"""`nox -s prune -- [--keep-cache GB] [--dry-run]`: give back the disk this tool's builds no longer use.

Removes the local images a newer build of the same recipe replaced (their content key rebuilds them) and
trims BuildKit's cache; a recipe's latest image, images that containers use and anything not built here
stay. Builds do the same on their own when the disk is short of what their vendor needs.
"""

from __future__ import annotations

import argparse
import re

from tools.core.errors import UserError
from tools.mech import host
from tools.mech.console import info, phase


def _gb(text: str) -> float:
    from tools.stages.space import gigabytes

    try:
        return gigabytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of GB from 0 to 100000") from None


def _recipe(text: str) -> str:
    # the recipe name grammar, not load_recipe: the recipe itself may be gone from recipes/ by now
    from tools.core.recipe import NAME_PATTERN, NAME_RULE

    if not re.fullmatch(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text[:70]!r} is not {NAME_RULE}")
    return text


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    from tools.stages.space import KEEP_CACHE_GB

    parser.add_argument("--keep-cache", metavar="GB", type=_gb, default=KEEP_CACHE_GB,
                        help=f"BuildKit cache to keep, most recently used first (default {KEEP_CACHE_GB:g})")
    parser.add_argument("--recipe", metavar="NAME", type=_recipe, default=None,
                        help="only this recipe's superseded images (build cache is trimmed all the same)")
    parser.add_argument("--dry-run", action="store_true", help="list the images that would go; remove nothing")


def command(name: str, args: argparse.Namespace) -> int:
    from tools.stages import space

    host.ensure_engine()
    with phase("Giving back disk: superseded images of ours, build cache"):
        done = space.reclaim(recipe=args.recipe, keep_cache_gb=args.keep_cache, dry_run=args.dry_run)
    for image in done.kept:
        info(f"  kept {image.describe()}: the engine refused (in use?)")
    if args.dry_run:
        info(f"{len(done.removed)} superseded images would be removed and the build cache trimmed to "
             f"{args.keep_cache:g} GB (dry run: nothing changed)")
    elif done.free_before is None or done.free_after is None:
        info(f"{len(done.removed)} superseded images removed, build cache trimmed to {args.keep_cache:g} GB "
             "(the engine's disk is not on this machine: how much was given back is not known here)")
    else:
        given = max(done.free_after - done.free_before, 0)
        info(f"{len(done.removed)} superseded images removed, build cache trimmed to {args.keep_cache:g} GB: "
             f"{space.gb(given)} given back, {space.gb(done.free_after)} free")
        if done.removed and given < 0.1 * space.GB and args.keep_cache > 0:
            info("  (a removed image's layers stay on disk while BuildKit's cache holds them: --keep-cache 0 "
                 "frees them, and the cache's downloads with them)")
    if done.kept:
        raise UserError(f"{len(done.kept)} superseded images could not be removed", where="docker rmi",
                        fix="stop the containers that use them (docker ps -a), then run prune again")
    return 0
