"""`render` and `build-<vendor>`: recipe in, one labelled, validated image out."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from tools import PROJECT_ROOT
from tools.cli.indexurls import ENV_EXTRA_INDEX_URLS, ENV_INDEX_URL, no_credentials
from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.textfile import read_utf8
from tools.mech.console import info, phase
from tools.stages.plan import BuildOptions, plan_for
from tools.stages.render import render_dockerfile


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name (recipes/NAME.yaml) or path to a recipe file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the Dockerfile, build nothing")
    parser.add_argument("--base-image", help="use this base image instead of the locked one (mirrors, tests)")
    parser.add_argument("--platform", action="append", default=[], help="target platform, e.g. linux/arm64")
    net = parser.add_argument_group("network (proxies, mirrors, corporate CAs)")
    net.add_argument("--ca-bundle", type=Path,
                     help="PEM bundle trusted by pip in the build (a BuildKit secret; default: $PIP_CERT, "
                          "$SSL_CERT_FILE or $REQUESTS_CA_BUNDLE when set)")
    net.add_argument("--index-url", help=f"pip index URL without credentials (one with a token: ${ENV_INDEX_URL} or "
                                         "--index-url-file; it reaches the build as a secret, never a log or layer)")
    net.add_argument("--index-url-file", type=Path, metavar="FILE",
                     help="file whose first line is the pip index URL (may carry a token)")
    net.add_argument("--extra-index-url", action="append", default=[],
                     help=f"extra pip index URL without credentials (repeatable; with a token: "
                          f"${ENV_EXTRA_INDEX_URLS})")
    net.add_argument("--wheelhouse", action="append", type=Path, default=[],
                     help="local wheel folder for wheels no index has (default: $PIP_FIND_LINKS)")
    if name == "render":
        return
    parser.add_argument("--no-cache", action="store_true", help="rebuild every layer, ignore the content key")
    parser.add_argument("--skip-smoke", metavar="REASON", help="do not smoke-serve the image (recorded)")
    parser.add_argument("--skip-op-tests", metavar="REASON", help="do not run operator tests (recorded)")
    parser.add_argument("--revalidate", action="store_true",
                        help="run smoke and op tests even when this image already passed them")
    parser.add_argument("--push", action="store_true", help="publish after validation passed")
    parser.add_argument("--local-registry", action="store_true",
                        help="with --push: start (once) and use an authenticated registry on 127.0.0.1:5000")


def _index_urls(args: argparse.Namespace) -> tuple[str | None, tuple[str, ...]]:
    """Index URLs: credential-free ones from flags; ones with tokens from a file or the environment."""
    index = args.index_url and no_credentials("--index-url", args.index_url, ENV_INDEX_URL)
    if args.index_url_file is not None:
        if index:
            raise UserError("--index-url and --index-url-file both name the index", where="--index-url-file",
                            fix="keep one of them")
        try:
            lines = [ln.strip() for ln in read_utf8(args.index_url_file, what="index URL file").splitlines()]
        except FileNotFoundError as exc:
            raise UserError(f"index URL file {args.index_url_file} not found", where="--index-url-file",
                            fix="give a file whose first line is the index URL") from exc
        index = next((ln for ln in lines if ln and not ln.startswith("#")), None)
        if not index:
            raise UserError(f"{args.index_url_file} holds no URL", where="--index-url-file",
                            fix="write the index URL on its first line")
    index = index or os.environ.get(ENV_INDEX_URL) or None
    extra = [no_credentials("--extra-index-url", u, ENV_EXTRA_INDEX_URLS) for u in args.extra_index_url]
    extra += os.environ.get(ENV_EXTRA_INDEX_URLS, "").split()
    return index, tuple(extra)


def options_from(args: argparse.Namespace) -> BuildOptions:
    index, extra = _index_urls(args)
    return BuildOptions(
        base_image=args.base_image,
        no_cache=getattr(args, "no_cache", False),
        platforms=tuple(args.platform),
        ca_bundle=args.ca_bundle,
        index_url=index,
        extra_index_urls=extra,
        wheelhouse=tuple(args.wheelhouse),
    )


def _revision() -> str:
    proc = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or "unknown"


def render(recipe_arg: str, vendor: str | None, options: BuildOptions, *, write: bool) -> None:
    """Print the plan and the Dockerfile (no downloads, no engine); with write, keep both in build/."""
    plan, loaded, _, _ = plan_for(recipe_arg, vendor, options)
    text = render_dockerfile(plan, loaded)
    print(plan.describe())
    print()
    print(text, end="")
    if write:
        out = paths.build_dir() / "rendered" / plan.recipe
        out.mkdir(parents=True, exist_ok=True)
        (out / "Dockerfile").write_text(text)
        (out / "plan.json").write_text(plan.to_json() + "\n")
        for rel, body in plan.flagscale_files.items():
            (out / "flagscale" / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / "flagscale" / rel).write_text(body)
        info(f"wrote {out / 'Dockerfile'}, {out / 'plan.json'} and FlagScale's config under {out / 'flagscale'}")


def command(name: str, args: argparse.Namespace) -> int:
    options = options_from(args)
    if name == "render":
        render(args.recipe, None, options, write=True)
        return 0
    vendor = name.removeprefix("build-")
    if vendor not in vendors.names():
        raise UserError(f"unknown build session {name}", fix=f"use build-{'/build-'.join(vendors.names())}")
    from tools.stages import space

    space.needed_bytes(vendors.get(vendor).build_disk_gb)  # FLAGREL_BUILD_DISK_GB, checked before any work
    if args.dry_run:
        render(args.recipe, vendor, options, write=False)
        return 0
    from tools.pipeline import run_release

    report = run_release(args.recipe, vendor, options, skip_smoke=args.skip_smoke,
                         skip_op_tests=args.skip_op_tests, push=args.push, local_registry=args.local_registry,
                         revision=_revision(), revalidate=args.revalidate)
    with phase("Summary"):
        print(report.summary())
    return 0 if report.ok else 1
