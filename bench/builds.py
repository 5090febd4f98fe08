"""Build benchmark, cpu recipe, one run, side by side:

  cold build          BuildKit cache pruned (layers and pip cache mounts), our context
  no-op rebuild       same inputs again: the content key short-cuts the build
  one-patch rebuild   a one-line change in one patch: only the overlay and the stamp check rebuild
  plain docker build  the same rendered Dockerfile, whole patched source tree (+ wheels) as context

Usage: python bench/builds.py [--keep-cache]   (--keep-cache: skip the prune, "cold" is then warm)
Goals: no-op under 2 s; one-patch rebuild under 10% of the cold build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import PROJECT_ROOT, patches
from tools.core.lock import DebootstrapBase  # noqa: E402
from tools.mech import host as engine
from tools.mech.docker import image_exists, image_id  # noqa: E402
from tools.pipeline import context_for  # noqa: E402
from tools.stages.build import build_image  # noqa: E402
from tools.stages.plan import (
    BuildOptions,  # noqa: E402
    plan_for,  # noqa: E402
)


def one_build(options: BuildOptions) -> tuple[float, object, object]:
    start = time.monotonic()
    plan, loaded, _, recipe_file = plan_for("tiny-cpu", "cpu", options)
    ctx = context_for(plan, loaded, recipe_file, options)
    image = build_image(ctx, options, revision="bench")
    return time.monotonic() - start, ctx, image


def edit_one_patch(marker: str) -> None:
    """The vendor-engineer workflow: patch, amend the top commit by one line, export-patches."""
    patches.patch("cpu")
    repo = patches.workspace_dir("cpu")
    changed = subprocess.run(["git", "-C", str(repo), "diff", "--name-only", "HEAD~1", "HEAD", "--", "vllm/"],
                             capture_output=True, text=True, check=True).stdout.split()
    target = repo / sorted(changed)[0]
    with target.open("a") as handle:
        handle.write(f"# bench: one-line change {marker}\n")
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-a", "--amend", "--no-edit"], check=True)
    patches.export("cpu")


def plain_docker_build(ctx, patched: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as tmp:
        context = Path(tmp) / "ctx"
        shutil.copytree(patched, context, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        for part in ("wheelhouse", "overlay"):
            shutil.copytree(ctx.directory / part, context / part)
        shutil.copy2(ctx.dockerfile, context / "Dockerfile")
        ca = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        cmd = ["docker", "build", "--network", "host", "--secret", f"id=cacert,src={ca}", "-t",
               "flagrelease-bench/plain:latest", str(context)]
        start = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        return time.monotonic() - start


def ctx_plain_image_id() -> str | None:
    ref = "flagrelease-bench/plain:latest"
    return image_id(ref) if image_exists(ref) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cache", action="store_true")
    args = parser.parse_args()
    engine.ensure_engine()
    work = Path(tempfile.mkdtemp(prefix="bench-builds-"))
    os.environ["FLAGREL_BUILD"] = str(work / "build")
    os.environ["FLAGREL_PATCHES"] = str(work / "patches")
    os.environ["FLAGREL_WORKSPACES"] = str(work / "workspaces")
    shutil.copytree(PROJECT_ROOT / "patches", work / "patches")
    _, loaded, _, _ = plan_for("tiny-cpu", "cpu", BuildOptions())
    base = loaded.lock.vendors["cpu"].base
    assert isinstance(base, DebootstrapBase)
    engine.ensure_debootstrap_base(base)
    # the bench builds the real recipe under its real tags: give them back afterwards
    listed = subprocess.run(["docker", "images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                             "flagrelease-local/tiny-cpu"], capture_output=True, text=True, check=True).stdout
    before = dict(line.split() for line in listed.splitlines() if line.strip())
    if not args.keep_cache:
        subprocess.run(["docker", "builder", "prune", "-af"], check=True, capture_output=True)
    rows: list[tuple[str, float]] = []
    cold, ctx, _ = one_build(BuildOptions(no_cache=True))
    rows.append(("cold build" + (" (cache kept)" if args.keep_cache else ""), cold))
    noop, _, image = one_build(BuildOptions())
    assert image.skipped
    rows.append(("no-op rebuild", noop))
    edit_one_patch("1")
    one, ctx2, image2 = one_build(BuildOptions())
    assert not image2.skipped
    rows.append(("one-patch rebuild (ours: patch, context, build)", one))
    # a second one-line change, so the plain build also has exactly one new layer to make
    edit_one_patch("2")
    prepared_start = time.monotonic()
    plan, loaded, _, recipe_file = plan_for("tiny-cpu", "cpu", BuildOptions())
    tree = patches.patched_tree("cpu")
    prep = time.monotonic() - prepared_start
    ctx_plain = context_for(plan, loaded, recipe_file, BuildOptions())
    plain = prep + plain_docker_build(ctx_plain, tree)
    rows.append(("one-patch rebuild, plain docker build of whole tree", plain))
    print(f"\n{'case':<55} {'seconds':>9} {'vs cold':>9}")
    for name, seconds in rows:
        print(f"{name:<55} {seconds:9.2f} {seconds / cold:9.3f}")
    print(f"\nno-op goal < 2 s: {'met' if noop < 2 else 'MISSED'}; "
          f"one-patch goal < 10% of cold: {'met' if one < 0.1 * cold else 'MISSED'} ({one / cold:.1%})")
    print(f"one-patch rebuild: ours {one:.2f}s, plain docker build with the whole tree as context {plain:.2f}s "
          f"(ours/plain {one / plain:.2f})")
    shutil.rmtree(work, ignore_errors=True)
    built = {image.image_id, image2.image_id, ctx_plain_image_id()}
    for ref, old in before.items():
        if old:
            subprocess.run(["docker", "tag", old, ref], check=True)
    subprocess.run(["docker", "rmi", "-f", *sorted(i for i in built if i and i not in before.values())],
                   capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
