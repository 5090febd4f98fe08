"""Patch-stack benchmark on the real vLLM 0.32.0 tree: our commands beside raw git, in the same run.

  row                     ours                                          raw git
  patch+unpatch (warm)    `python -m tools patch` then `unpatch` on a   `git am` of the same mails, then
                          workspace at pristine (CLI: start, imports)   `git reset --hard` to the base
  check-patches           `python -m tools check-patches` (every vendor) per vendor: shared clone, checkout of
                                                                        the tree, `git am`, `format-patch`
  imports                 `python -X importtime -m tools patch`: what the quick commands load

Runs are interleaved (ours, raw, ours, raw, ...) so that load from other work hits both alike; medians.
Wall time and CPU time (user+sys of the process and its children) are both shown: on a busy shared machine
every extra process waits for a CPU, so wall ratios move with the load while CPU ratios measure work.
Goals (issue 11): patch+unpatch <= 1.5x raw git; check-patches for all vendors <= 3 s.
Usage: python bench/patches.py [--repeat 7] [--vendor cpu --vendor nvidia ...]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.core import vendors  # noqa: E402
from tools.mech import git  # noqa: E402
from tools.stages import patches  # noqa: E402

IDENTITY = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}


class Clock:
    """Wall and CPU seconds of what runs inside `with`."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _children_cpu() - self.cpu


def _children_cpu() -> float:
    """CPU of this process and its children: in-process calls count, and so do the git processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Clock:
    with Clock() as clock:
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return clock


Pair = tuple[float, float]  # (wall, cpu) medians


def medians(clocks: list[Clock]) -> Pair:
    return statistics.median(c.wall for c in clocks), statistics.median(c.cpu for c in clocks)


def raw_git(args: list[str], cwd: Path) -> list[str]:
    """Plain git as a user types it (the user's config off, like ours, so both do the same work)."""
    return ["git", "-c", "core.autocrlf=false", *args]


def tools_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "FLAGREL_WORKSPACES": str(tmp / "workspaces"), "FLAGREL_PATCHES": str(ROOT / "patches"),
            "PYTHONDONTWRITEBYTECODE": "0"}


def plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return {**env, **IDENTITY, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def bench_patch(vendor: str, repeat: int, tmp: Path, pristine) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    stack = patches.stack_info(vendor)
    files = [str(p.path) for p in stack.patches]
    env = tools_env(tmp)
    cli = [sys.executable, "-m", "tools"]
    run([*cli, "patch", "--vendor", vendor], cwd=ROOT, env=env)  # creates the workspace (not timed)
    run([*cli, "unpatch", "--vendor", vendor], cwd=ROOT, env=env)
    raw = tmp / f"raw-{vendor}"
    subprocess.run(["git", "clone", "-q", "--local", "--no-checkout", str(pristine.repo), str(raw)], check=True)
    (raw / ".git/info/attributes").write_text(git.NEUTRAL_ATTRIBUTES)
    subprocess.run(["git", "-C", str(raw), "checkout", "-q", "-B", "main", pristine.commit], check=True,
                   env=plain_env())
    ours_patch: list[Clock] = []
    ours_unpatch: list[Clock] = []
    raw_am: list[Clock] = []
    raw_reset: list[Clock] = []
    in_process: list[Clock] = []
    os.environ.update({k: v for k, v in env.items() if k.startswith("FLAGREL_")})
    for _ in range(repeat):
        with Clock() as clock:  # the same two commands through the API: no interpreter start, no imports
            patches.patch(vendor)
            patches.unpatch(vendor)
        in_process.append(clock)
        ours_patch.append(run([*cli, "patch", "--vendor", vendor], cwd=ROOT, env=env))
        ours_unpatch.append(run([*cli, "unpatch", "--vendor", vendor], cwd=ROOT, env=env))
        raw_am.append(run(raw_git(["am", "-q", "--keep-cr", "--committer-date-is-author-date", *files], raw),
                          cwd=raw, env=plain_env()))
        raw_reset.append(run(raw_git(["reset", "-q", "--hard", pristine.commit], raw), cwd=raw, env=plain_env()))
    return medians(ours_patch), medians(ours_unpatch), medians(raw_am), medians(raw_reset), medians(in_process)


def raw_check(tmp: Path, pristine) -> None:
    for vendor in vendors.names():
        scratch = tmp / f"raw-check-{vendor}"
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(pristine.repo), str(scratch)],
                       check=True)
        env = plain_env()
        subprocess.run(["git", "-C", str(scratch), "checkout", "-q", "-B", "main", pristine.commit], check=True,
                       env=env)
        files = [str(p.path) for p in patches.stack_info(vendor).patches]
        subprocess.run(["git", "-C", str(scratch), "am", "-q", "--keep-cr", *files], check=True, env=env)
        subprocess.run(["git", "-C", str(scratch), "format-patch", "-q", "--zero-commit", "--no-stat", "-o",
                        str(tmp / f"raw-out-{vendor}"), f"{pristine.commit}..HEAD"], check=True, env=env)
        shutil.rmtree(scratch)


def import_profile(vendor: str, tmp: Path) -> tuple[float, list[str], bool]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tools", "patch", "--vendor", vendor], cwd=ROOT,
                          env=tools_env(tmp), capture_output=True, text=True, check=True)
    rows = re.findall(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", proc.stderr)
    total = sum(int(self_us) for self_us, _, _, _ in rows) / 1e6
    top = sorted(((int(cum), name) for _, cum, indent, name in rows if not indent), reverse=True)[:4]
    heavy = any(name.split(".")[0] in {"pydantic", "rich", "requests", "jinja2"} for _, _, _, name in rows)
    return total, [f"{name} {cum / 1e3:.0f} ms" for cum, name in top], heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--vendor", action="append", choices=vendors.names(), default=[])
    args = parser.parse_args()
    chosen = args.vendor or list(vendors.names())
    pristine = patches.pristine_for(None)
    rows: list[tuple[str, Pair, Pair, str]] = []
    goals: list[tuple[str, bool]] = []
    bounds: list[tuple[str, float, float]] = []  # vendor, in-process git work, raw git
    add = lambda a, b: (a[0] + b[0], a[1] + b[1])  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-patches-") as name:
        tmp = Path(name)
        for vendor in chosen:
            op, ou, ra, rr, api = bench_patch(vendor, args.repeat, tmp, pristine)
            count = len(patches.stack_info(vendor).patches)
            both, raw = add(op, ou), add(ra, rr)
            rows.append((f"{vendor}: patch ({count} patches)", op, ra, "python -m tools patch | git am"))
            rows.append((f"{vendor}: unpatch", ou, rr, "python -m tools unpatch | git reset --hard"))
            rows.append((f"{vendor}: patch+unpatch", both, raw, "goal <= 1.5x"))
            rows.append((f"{vendor}: patch+unpatch (API)", api, raw, "the same in one process: start-up and imports "
                         "excluded"))
            goals.append((f"{vendor} patch+unpatch {both[0] / raw[0]:.2f}x raw git wall, {both[1] / raw[1]:.2f}x CPU "
                           "(<= 1.5x)", both[0] <= 1.5 * raw[0]))
            bounds.append((vendor, api[0], raw[0]))
        floor = medians([run([sys.executable, "-c", "pass"]) for _ in range(args.repeat)])
        # what our quick commands cannot do without (options, state files, paths): the bound on their start-up
        cli_floor = medians([run([sys.executable, "-c", "import argparse, json, pathlib, re"])
                             for _ in range(args.repeat)])
        ours_check: list[Clock] = []
        raw_checks: list[Clock] = []
        for _ in range(max(3, args.repeat // 2)):
            ours_check.append(run([sys.executable, "-m", "tools", "check-patches"], cwd=ROOT, env=tools_env(tmp)))
            with Clock() as clock:
                raw_check(tmp, pristine)
            raw_checks.append(clock)
        check = medians(ours_check)
        rows.append((f"check-patches ({len(vendors.names())} vendors)", check, medians(raw_checks),
                     "ours: private index, no checkout | raw: clone+checkout+am+format-patch"))
        goals.append((f"check-patches {check[0]:.2f} s for all vendors (<= 3 s)", check[0] <= 3.0))
        imports, top, heavy = import_profile(chosen[0], tmp)
    load = os.getloadavg()
    print(f"\nvLLM {pristine.version} ({pristine.files} files); median of {args.repeat}, interleaved; load average "
          f"{load[0]:.1f} on {os.cpu_count()} CPUs; `python -c pass` alone {floor[0] * 1e3:.0f} ms wall, "
          f"{floor[1] * 1e3:.0f} ms CPU; with argparse, json, pathlib, re imported "
          f"{cli_floor[0] * 1e3:.0f} ms wall\n")
    print(f"| {'operation':<28} | {'ours wall':>9} | {'raw wall':>9} | {'ratio':>6} | {'ours CPU':>9} | "
          f"{'raw CPU':>9} | {'ratio':>6} | what")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 8}|------")
    for label, ours, base, note in rows:
        print(f"| {label:<28} | {ours[0]:8.3f}s | {base[0]:8.3f}s | {ours[0] / base[0]:5.2f}x | {ours[1]:8.3f}s | "
              f"{base[1]:8.3f}s | {ours[1] / max(base[1], 1e-6):5.2f}x | {note}")
    print(f"\nimports of `python -m tools patch --vendor {chosen[0]}`: {imports * 1e3:.0f} ms in all; "
          f"largest: {', '.join(top)}; pydantic/rich/requests/jinja2 loaded: {'yes' if heavy else 'no'}")
    for vendor, work, raw in bounds:
        least = work + 2 * cli_floor[0]
        print(f"{vendor}: two Python CLI starts with only the stdlib floor plus our in-process work: "
              f"{least:.3f}s = {least / raw:.2f}x raw git (the least a Python CLI pair could take)")
    for text, met in goals:
        print(f"goal: {text}: {'met' if met else 'NOT met'}")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
