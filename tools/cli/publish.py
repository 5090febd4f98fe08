"""`publish RECIPE [--image REF] [--registry R] [--namespace N] [--dry-run] [--accept-untested-op-tests REASON]`:
push a validated image."""

from __future__ import annotations

import argparse

from tools.core.labels import local_image
from tools.core.recipe import load_recipe
from tools.core.refs import parse_image_ref
from tools.stages.publish import PublishOptions, publish
from tools.stages.record import release_dir


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (recipes/NAME.yaml) or path to a recipe file")
    parser.add_argument("--image", help="local image to publish (default: flagrelease-local/RECIPE:latest, "
                                        "what the build sessions tag)")
    parser.add_argument("--registry", help="registry HOST[:PORT] (default: $FLAGREL_REGISTRY, then "
                                           "[publish] registry in flagrelease.toml)")
    parser.add_argument("--namespace", help="repository namespace (default: $FLAGREL_NAMESPACE, then "
                                            "[publish] namespace in flagrelease.toml; none: top level)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the image and its results and print the tags; push and write nothing")
    parser.add_argument("--retries", type=int, default=4, help="retries on transient registry errors (5xx, resets)")
    parser.add_argument("--accept-untested-op-tests", metavar="REASON",
                        help="publish although this image's op tests did not pass (failed, nothing ran, skipped or "
                             "never ran); REASON is recorded in the release record and shown on the card")


def command(name: str, args: argparse.Namespace) -> int:
    recipe, _ = load_recipe(args.recipe)
    if args.image:
        parse_image_ref(args.image, where="--image")
    image = args.image or local_image(recipe.name)
    options = PublishOptions(registry=args.registry, namespace=args.namespace, dry_run=args.dry_run,
                             retries=max(0, args.retries), accept_untested_op_tests=args.accept_untested_op_tests)
    record = publish(recipe, image, options)
    for tag in record.tags:
        print(f"{tag.action:<10} {tag.ref}" + (f"  {tag.digest}" if tag.digest else ""))
    if not record.dry_run:
        out = release_dir(record.registry, record.repository, record.immutable_tag)
        print(f"record     {out / 'record.json'}")
        print(f"card       {out / 'README.md'}")
    return 0
