"""`nox -s release-matrix -- [--recipe NAME]`: the release workflow's job matrix, from the project's loaders.

Each entry names a recipe, its vendor (from the validated recipe, never a regex) and the GitHub runner labels
that vendor's jobs need. Printed as JSON; appended as `matrix=...` to $GITHUB_OUTPUT when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from tools.core import vendors
from tools.core.errors import UserError
from tools.core.recipe import available, load_recipe


def release_matrix(recipe: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """{"include": [{"recipe", "vendor", "runner"}, ...]} for every recipe in recipes/, or only `recipe`."""
    names = available()
    if recipe:
        if recipe not in names:
            raise UserError(f"no recipe named {recipe!r} in recipes/", where="--recipe",
                            fix=f"use one of: {', '.join(names) or '(none)'}")
        names = [recipe]
    include = []
    for name in names:
        vendor = load_recipe(name)[0].vendor  # validated against the vendor table
        # each vendor's runner labels come from vendors.toml (.github/actionlint.yaml declares them)
        include.append({"recipe": name, "vendor": vendor, "runner": list(vendors.get(vendor).runner)})
    if not include:
        raise UserError("no recipes in recipes/", fix="add a recipe (see recipes/tiny-cpu.yaml)")
    return {"include": include}


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", metavar="NAME", default="",
                        help="only this recipe (recipes/NAME.yaml); empty or absent: every recipe")


def command(name: str, args: argparse.Namespace) -> int:
    line = json.dumps(release_matrix(args.recipe.strip() or None), separators=(",", ":"))
    print(line)
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as out:
            out.write(f"matrix={line}\n")
    return 0
