"""Build benchmark, cpu recipe, one run, side by side:

  cold build, pip     today's pip path (the lock hidden): resolution at build time; pip byte-compiles all
  cold build, uv+lock locks/cpu.txt installed by uv, hash-checked; the front-door check writes the byte-code
                      of what the engine imports (both paths run that check)
  (both: layers --no-cache and the pip/uv cache mounts pruned first)
  main job, first     `nox -s build-cpu -- tiny-cpu` validates the image (smoke + op tests)
  main job, no-op     the same again: content key matches, checks passed before: nothing runs
  start to ready      smoke serve of the uv image as built, with every installed file compiled
                      (uv --compile-bytecode's result) and with every .pyc removed
  cold build          BuildKit cache pruned (layers and pip cache mounts), our context
  no-op rebuild       same inputs again: the content key short-cuts the build
  one-patch rebuild   a one-line change in one patch, new in every run (so no earlier run's layers can
                      answer it): only the overlay and the front-door check rebuild
  plain docker build  the same rendered Dockerfile, whole patched source tree (+ wheels) as context
  push                the uv image to the local htpasswd registry (127.0.0.1:5000), a new repository
Each cold build also prints its slowest BuildKit steps, read from its build log (uv's own lines split
install from byte-compiling).

Usage: python bench/builds.py [--keep-cache] [--patch-rows]  (--patch-rows: also the one-patch/plain rows)
Goals: uv+lock cold build <= 50% of pip's; no-op main job <= 2 s; start to ready <= 40 s;
one-patch rebuild under 10% of the cold build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import PROJECT_ROOT  # noqa: E402
from tools.core.lock import DebootstrapBase  # noqa: E402
from tools.mech import host as engine
from tools.mech.docker import image_exists, image_id  # noqa: E402
from tools.pipeline import built_image, context_for  # noqa: E402
from tools.stages import (
    patches,  # noqa: E402
    pylock,  # noqa: E402
)
from tools.stages.plan import (
    BuildOptions,  # noqa: E402
    plan_for,  # noqa: E402
)

# the rows, by the label each is printed with (measure() writes them, main() reads the goals' rows)
PIP_COLD = "cold build, pip path (resolves at build time)"
UV_COLD = "cold build, uv + lock (hash-checked)"
FIRST = "main job, first (validates: smoke + op tests)"
NOOP = "main job, no-op (nox included)"
READY = "start to ready, as built (front-door byte-code)"
READY_EVERY = "start to ready, every installed file compiled"
READY_NONE = "start to ready, same image without .pyc"
PUSH = "push to the local registry (new repository)"
ONE_PATCH = "one-patch rebuild (ours: patch, context, build)"
ONE_PATCH_PLAIN = "one-patch rebuild, plain docker build of whole tree"


def prune_cache_mounts() -> None:
    """Only the pip/uv cache mounts (layers are rebuilt with --no-cache): other builds keep their layers."""
    subprocess.run(["docker", "builder", "prune", "-af", "--filter", "type=exec.cachemount"], check=True,
                   capture_output=True)


@contextlib.contextmanager
def lock_hidden() -> Iterator[None]:
    """Today's pip path: render and context as if the vendor had no lock."""
    real = pylock.lock_path
    pylock.lock_path = lambda vendor: Path("/nonexistent") / f"{vendor}.txt"
    try:
        yield
    finally:
        pylock.lock_path = real


def timed_main_job() -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "nox", "-f", str(PROJECT_ROOT / "noxfile.py"), "-s", "build-cpu",
                    "--", "tiny-cpu"], check=True, capture_output=True, cwd=PROJECT_ROOT)
    return time.monotonic() - start


def derived(image_ref: str, name: str, command: str) -> str:
    """The same image with one more RUN step."""
    ref = f"flagrelease-bench/{name}:latest"
    source = "flagrelease-bench/as-built:latest"  # BuildKit's FROM takes a name, not an image id
    subprocess.run(["docker", "tag", image_ref, source], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-derived-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(f"FROM {source}\nRUN {command}\n")
        subprocess.run(["docker", "build", "-q", "-t", ref, tmp], check=True, capture_output=True)
    return ref


def start_to_ready(image_ref: str) -> float:
    from tools.core.recipe import load_recipe
    from tools.stages.smoke import smoke

    recipe, _ = load_recipe("tiny-cpu")
    report = smoke(recipe, image_ref)
    assert report.passed and report.start_to_ready_s is not None
    return report.start_to_ready_s


_STEP = re.compile(r"^#(\d+) ([^0-9].*)$")
_DONE = re.compile(r"^#(\d+) DONE ([0-9.]+)s$")
_UV = re.compile(r"^#\d+ [0-9.]+ ((?:Prepared|Installed|Bytecode compiled) .* in .*)$")


def slowest_steps(log: Path, top: int = 4) -> list[str]:
    """The slowest steps of a --progress=plain build log, plus uv's own timing lines."""
    titles: dict[str, str] = {}
    done: dict[str, float] = {}
    uv_lines: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        if m := _DONE.match(line):
            done[m.group(1)] = float(m.group(2))
        elif m := _STEP.match(line):
            titles.setdefault(m.group(1), m.group(2)[:70])
        elif m := _UV.match(line):
            uv_lines.append(f"    uv: {m.group(1)}")
    ranked = sorted(done.items(), key=lambda kv: -kv[1])[:top]
    return [f"    {seconds:7.1f}s  {titles.get(step, '#' + step)}" for step, seconds in ranked] + uv_lines


def push_seconds(image: str) -> float:
    """docker push of the image to the local registry under a repository it has never seen."""
    from tools.mech.local_registry import ensure_local_registry
    from tools.mech.registry import Credentials, docker_env

    registry = ensure_local_registry()
    ref = f"{registry.address}/flagrelease-bench:push-{int(time.time())}"
    subprocess.run(["docker", "tag", image, ref], check=True)
    creds = Credentials(registry.user, registry.password, source="bench", from_env=True)
    try:
        with docker_env(registry.address, creds) as env:
            start = time.monotonic()
            subprocess.run(["docker", "push", ref], check=True, capture_output=True, env=env)
            return time.monotonic() - start
    finally:
        subprocess.run(["docker", "rmi", ref], check=False, capture_output=True)


def one_build(options: BuildOptions) -> tuple[float, object, object]:
    start = time.monotonic()
    plan, loaded, _, recipe_file = plan_for("tiny-cpu", "cpu", options)
    ctx = context_for(plan, loaded, recipe_file, options)
    image = built_image(ctx, loaded, options, revision="bench")
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
        for part in ctx.directory.iterdir():  # our context's own parts (wheelhouse, locked/, overlay, ...)
            if part.name in ("source", ".dockerignore"):
                continue
            copy = shutil.copytree if part.is_dir() else shutil.copy2
            copy(part, context / part.name)
        ca = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        cmd = ["docker", "build", "--network", "host", "--secret", f"id=cacert,src={ca}", "-t",
               "flagrelease-bench/plain:latest", str(context)]
        start = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        return time.monotonic() - start


def ctx_plain_image_id() -> str | None:
    ref = "flagrelease-bench/plain:latest"
    return image_id(ref) if image_exists(ref) else None


def measure(args: argparse.Namespace, row: Callable[[str, float], None], built: set[str]) -> None:
    if not args.keep_cache:
        prune_cache_mounts()
    with lock_hidden():
        pip_cold, _, pip_image = one_build(BuildOptions(no_cache=True))
    built.add(pip_image.image_id)
    row(PIP_COLD, pip_cold)
    if not args.keep_cache:
        prune_cache_mounts()
    cold, _, uv_image = one_build(BuildOptions(no_cache=True))
    built.add(uv_image.image_id)
    row(UV_COLD, cold)
    for name, image in (("pip", pip_image), ("uv + lock", uv_image)):
        if image.log:
            print(f"slowest steps, cold build {name} (log: {image.log}):", *slowest_steps(image.log), sep="\n")
    row(FIRST, timed_main_job())
    row(NOOP, timed_main_job())
    row(READY, start_to_ready(uv_image.image_id))
    # what uv --compile-bytecode gives: every installed file (the same invalidation mode: timestamps; and as
    # uv does, files that do not compile, such as test data in Python 2 syntax, are passed over)
    every = derived(uv_image.image_id, "every-pyc", "python -m compileall -q -j 0 /opt/venv/lib > /dev/null || true")
    built.add(image_id(every))
    row(READY_EVERY, start_to_ready(every))
    nopyc = derived(uv_image.image_id, "no-pyc", "find /opt/venv -name '*.pyc' -delete")
    built.add(image_id(nopyc))
    row(READY_NONE, start_to_ready(nopyc))
    row(PUSH, push_seconds(uv_image.image_id))
    if args.patch_rows:
        edit_one_patch(f"1 at {time.time_ns()}")
        one, _, image2 = one_build(BuildOptions())
        built.add(image2.image_id)
        assert not image2.skipped
        row(ONE_PATCH, one)
        edit_one_patch(f"2 at {time.time_ns()}")
        prepared_start = time.monotonic()
        plan, loaded, _, recipe_file = plan_for("tiny-cpu", "cpu", BuildOptions())
        tree = patches.patched_tree("cpu")
        prep = time.monotonic() - prepared_start
        ctx_plain = context_for(plan, loaded, recipe_file, BuildOptions())
        plain = prep + plain_docker_build(ctx_plain, tree)
        built.add(ctx_plain_image_id() or "")
        row(ONE_PATCH_PLAIN, plain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-cache", action="store_true")
    parser.add_argument("--patch-rows", action="store_true")
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
    rows: list[tuple[str, float]] = []

    def row(name: str, seconds: float) -> None:  # printed at once: a later failure keeps what was measured
        rows.append((name, seconds))
        print(f"ROW {name:<55} {seconds:9.2f}", flush=True)

    built: set[str] = set()
    try:
        measure(args, row, built)
    finally:  # also after a failure: the recipe's tags go back, the bench's images go
        shutil.rmtree(work, ignore_errors=True)
        for ref, old in before.items():
            subprocess.run(["docker", "tag", old, ref], check=False)
        subprocess.run(["docker", "rmi", "-f", *sorted(i for i in built if i and i not in before.values())],
                       capture_output=True, check=False)
    print(f"\n{'case':<55} {'seconds':>9}")
    for name, seconds in rows:
        print(f"{name:<55} {seconds:9.2f}")
    took = dict(rows)
    cold, pip_cold = took[UV_COLD], took[PIP_COLD]
    noop, ready_pyc = took[NOOP], took[READY]
    ready_nopyc = took[READY_NONE]
    ready_every = took[READY_EVERY]
    verdict = "met" if cold <= 0.5 * pip_cold else "MISSED"
    print(f"\nuv+lock / pip cold build: {cold / pip_cold:.2f} (goal <= 0.50: {verdict})")
    print(f"no-op main job {noop:.2f}s (goal <= 2 s: {'met' if noop <= 2 else 'MISSED'})")
    print(f"start to ready as built / every file compiled / no byte-code: {ready_pyc:.1f} / {ready_every:.1f} / "
          f"{ready_nopyc:.1f} s (goal <= 40 s: {'met' if ready_pyc <= 40 else 'MISSED'})")
    if ONE_PATCH in took:
        one = took[ONE_PATCH]
        verdict = "met" if one < 0.1 * cold else "MISSED"
        print(f"one-patch rebuild / uv cold build: {one / cold:.2f} (goal < 0.10: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
