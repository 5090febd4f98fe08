"""`nox -s smoke -- RECIPE [--image REF]`: smoke-serve an already built image on its own."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.core.labels import local_image
from tools.core.recipe import load_recipe
from tools.core.refs import parse_image_ref


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="recipe name (recipes/NAME.yaml) or path")
    parser.add_argument("--image", metavar="REF", help="image to serve (default: flagrelease-local/NAME:latest)")
    parser.add_argument("--port", type=int, help="host port for the engine (default: the recipe's, or a free one)")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help="readiness deadline (default: the recipe's serve.ready_timeout_s)")
    parser.add_argument("--model-dir", type=Path, metavar="DIR",
                        help="host directory with the model (default: model.host_path, or the tiny model)")


def command(name: str, args: argparse.Namespace) -> int:
    from tools.mech.console import console
    from tools.stages.smoke import smoke

    recipe, path = load_recipe(args.recipe)
    if args.image:
        parse_image_ref(args.image, where="--image")
    report = smoke(recipe, args.image or local_image(recipe.name), model_dir=args.model_dir,
                   port=args.port, timeout_s=args.timeout, recipe_file=str(path))
    console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
    return 0 if report.passed else 1
