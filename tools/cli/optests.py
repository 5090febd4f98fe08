"""`nox -s op-tests -- RECIPE [--image REF | --host]`: see tools/stages/op_tests.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.core.refs import parse_image_ref
from tools.stages.op_tests import run_op_tests


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe name (recipes/NAME.yaml) or path")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--image", metavar="REF", help="image to test (default: flagrelease-local/NAME:latest)")
    where.add_argument("--host", action="store_true", help="run in a Python on this machine, not in Docker")
    parser.add_argument("--python", metavar="PATH",
                        help="with --host: the interpreter with torch and flag_gems (default: this one)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: build/optests/RECIPE-TIMESTAMP)")
    parser.add_argument("--ops", nargs="*", metavar="OP", help="override the recipe's tests.op_tests.ops")
    parser.add_argument("--dtypes", nargs="*", metavar="DTYPE", help="override the recipe's tests.op_tests.dtypes")
    parser.add_argument("--budget-s", type=float, metavar="S", help="skip the cases left after S seconds")
    parser.add_argument("--small", action="store_true", help="tiny shapes: a quick check of the suite itself")


def command(name: str, args: argparse.Namespace) -> int:
    recipe, _ = load_recipe(args.recipe)
    if args.image:
        parse_image_ref(args.image, where="--image")
    if args.python and not args.host:
        raise UserError("--python only applies with --host", fix="add --host, or drop --python")
    ok = run_op_tests(recipe, image=args.image, host=args.host, out=args.out, ops=args.ops, dtypes=args.dtypes,
                      python=args.python, budget_s=args.budget_s, small=args.small)
    return 0 if ok else 1
