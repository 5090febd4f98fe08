"""Patch-stack benchmark on the real vLLM 0.32.0 tree: ours beside a plain baseline, in the same run.

  operation            ours                                         baseline
  cold fetch           fetch_source into an empty cache (git try,   download + `tar -xzf` (no verification
                       sdist download, sha256, unpack, git import)  of ownership, no git)
  first patch          `patch` with no workspace yet                `cp -a` of the tree + `git apply` stack
  patch (warm)         `patch` on a pristine workspace              `git apply` of the stack on a clean copy
  unpatch (warm)       `unpatch` on a patched workspace             `git apply -R`, last patch first
  patch (no-op)        `patch` on an already patched workspace      (plain git apply cannot tell: n/a)
  patch/unpatch (CLI)  `python -m tools patch|unpatch` (interpreter start and imports included)
  check-patches        apply + export + compare, every vendor       per vendor `cp -a` + `git apply` of its stack

Warm rows are the median of --repeat runs. Usage: python bench/patches.py [--vendor nvidia] [--repeat 5]
Goal: patch and unpatch of a warm workspace under 1 s each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import PROJECT_ROOT, source
from tools.core.lock import load_lock
from tools.core.vendors import names as vendor_names  # noqa: E402
from tools.mech import git
from tools.mech.download import download_verified
from tools.stages import patches


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_of(repeat: int, action: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    runs = []
    for _ in range(repeat):
        if before:
            before()
        runs.append(timed(action))
    return statistics.median(runs)


def git_apply(tree: Path, files: list[Path], *, reverse: bool = False) -> None:
    args = ["apply", "--whitespace=nowarn", *(["--reverse"] if reverse else []), *map(str, files)]
    git.git(args, cwd=tree)


def copy_tree(src: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", default="nvidia", choices=vendor_names())
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    vendor, repeat = args.vendor, args.repeat
    lock = load_lock().lock
    up = lock.upstream
    rows: list[tuple[str, float, float | None, str]] = []

    with tempfile.TemporaryDirectory(prefix="bench-patches-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["FLAGREL_CACHE"] = str(tmp / "cache")
        os.environ["FLAGREL_WORKSPACES"] = str(tmp / "workspaces")
        os.environ["FLAGREL_PATCHES"] = str(PROJECT_ROOT / "patches")
        stack = patches.stack_info(vendor)
        files = [p.path for p in stack.patches]

        # cold fetch
        ours = timed(lambda: source.fetch_source(lock))
        pristine = source.fetch_source(lock)

        def baseline_fetch() -> None:
            archive = download_verified(up.sdist_url, tmp / "plain-dl" / "vllm.tar.gz", up.sdist_sha256)
            (tmp / "plain-tree").mkdir()
            subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp / "plain-tree")], check=True)

        rows.append(("cold fetch", ours, timed(baseline_fetch),
                     f"{pristine.origin}, {pristine.files} files; baseline: download + tar -xzf"))

        # first patch: a new workspace
        ours = timed(lambda: patches.patch(vendor))
        plain = tmp / "plain-copy"
        base = timed(lambda: (copy_tree(pristine.path, plain), git_apply(plain, files)))
        rows.append(("first patch (new workspace)", ours, base, "baseline: cp -a + git apply"))

        # warm patch / unpatch
        unpatch_t = median_of(repeat, lambda: patches.unpatch(vendor), before=lambda: patches.patch(vendor))
        patch_t = median_of(repeat, lambda: patches.patch(vendor), before=lambda: patches.unpatch(vendor))
        # the plain copy is patched now: time its unpatch and patch in turns, like ours
        base_patch_runs, base_unpatch_runs = [], []
        for _ in range(repeat):
            base_unpatch_runs.append(timed(lambda: git_apply(plain, list(reversed(files)), reverse=True)))
            base_patch_runs.append(timed(lambda: git_apply(plain, files)))
        base_patch = statistics.median(base_patch_runs)
        rows.append((f"patch (warm, {len(files)} patches)", patch_t, base_patch,
                     "baseline: git apply on a clean copy"))
        rows.append(("unpatch (warm)", unpatch_t, statistics.median(base_unpatch_runs),
                     "baseline: git apply -R, last patch first"))
        rows.append(("patch (no-op, already patched)", median_of(repeat, lambda: patches.patch(vendor)), None,
                     "idempotence check: state, status, rev-list"))

        # the same through the command line
        def cli(name: str) -> None:
            subprocess.run([sys.executable, "-m", "tools", name, "--vendor", vendor], check=True, cwd=PROJECT_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        cli_patch = median_of(repeat, lambda: cli("patch"), before=lambda: patches.unpatch(vendor))
        cli_unpatch = median_of(repeat, lambda: cli("unpatch"), before=lambda: patches.patch(vendor))
        rows.append(("patch (warm, CLI)", cli_patch, base_patch, "python -m tools patch; baseline: git apply"))
        rows.append(("unpatch (warm, CLI)", cli_unpatch, statistics.median(base_unpatch_runs),
                     "python -m tools unpatch; baseline: git apply -R"))

        # check-patches
        ours = median_of(max(1, repeat // 2), lambda: patches.check())

        def baseline_check() -> None:
            for name in vendor_names():
                copy = tmp / f"plain-check-{name}"
                copy_tree(pristine.path, copy)
                git_apply(copy, [p.path for p in patches.stack_info(name).patches])
                shutil.rmtree(copy)

        rows.append((f"check-patches ({len(vendor_names())} vendors)", ours, timed(baseline_check),
                     "ours also exports and compares bytes; baseline: cp -a + git apply per vendor"))

    load = os.getloadavg()
    print(f"\nvLLM {up.version} ({pristine.files} files), vendor {vendor}, stack {stack.short_id}; "
          f"median of {repeat} for warm rows; load average {load[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"| {'operation':<34} | {'ours':>8} | {'baseline':>8} | {'ours/base':>9} | note")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 11}|------")
    for name, ours_s, base_s, note in rows:
        base_txt = f"{base_s:7.3f}s" if base_s is not None else "     n/a"
        ratio = f"{ours_s / base_s:8.2f}x" if base_s else "      n/a"
        print(f"| {name:<34} | {ours_s:7.3f}s | {base_txt} | {ratio} | {note}")
    warm = {name: s for name, s, _, _ in rows}
    goal = all(warm[k] < 1.0 for k in warm if k.startswith(("patch (warm", "unpatch (warm")))
    print(f"\ngoal (patch and unpatch of a warm workspace < 1 s each): {'met' if goal else 'NOT met'}")
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
