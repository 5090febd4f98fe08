"""`python3 -m optests --out DIR [--ops ...] [--dtypes ...] [--vendor V]`: run the suite, write
junit.xml, summary.json and table.txt under DIR, print the table. Exit 0 when the verdict is ok, 1 when a
case failed or nothing passed (every case skipped), 2 on bad arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import report
from .cases import CATALOG, UnknownName, select
from .report import CaseResult
from .runner import Environment, Executor, GemsExecutor, dispatch, env_summary, probe, run_cases
from .tolerances import DTYPES


def _names(values: Sequence[str] | None) -> list[str]:
    """--ops a,b c -> [a, b, c]"""
    return [n for v in values or () for n in v.replace(",", " ").split()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m optests", description=__doc__)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where junit.xml/summary.json go")
    p.add_argument("--ops", nargs="*", metavar="OP", help=f"ops to run (default all): {', '.join(CATALOG)}")
    p.add_argument("--dtypes", nargs="*", metavar="DTYPE", help=f"dtypes (default all): {', '.join(DTYPES)}")
    p.add_argument("--vendor", help="the image's vendor, recorded in the summary "
                                    "(default: flag_gems' vendor when it imports, else cpu)")
    p.add_argument("--small", action="store_true", help="tiny shapes (a quick check of the suite itself)")
    p.add_argument("--reps", type=int, help="timed calls per side (median; default 30, 10 for vLLM's CPU kernels)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 5, 2 for vLLM's CPU kernels)")
    p.add_argument("--seed", type=int, default=0, help="changes every case's random inputs")
    p.add_argument("--budget-s", type=float, metavar="S",
                   help="skip the remaining cases once this many seconds are spent (outputs still written)")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        specs = select(_names(args.ops), _names(args.dtypes), small=args.small)
    except UnknownName as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.list:
        for spec in specs:
            print(spec.case_id)
        return 0
    env = probe(backends={spec.backend for spec in specs})  # no import of a backend the run does not use
    vendor = args.vendor or (getattr(env.gems, "vendor_name", None) if env.gems is not None else None) or "cpu"
    environment = env_summary(env)
    environment["vendor"] = vendor
    print(f"optests: {len(specs)} cases; {report.describe_environment(environment)}", flush=True)
    if env.skip_reason:
        print(f"optests: every case is skipped: {env.skip_reason}", flush=True)
    for backend, reason in env.backend_skips.items():
        if any(s.backend == backend for s in specs):
            print(f"optests: every {report.BACKEND_NAMES[backend]} case is skipped: {reason}", flush=True)
    quiet = {env.skip_reason, *env.backend_skips.values()}  # said once above, not on every case

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary_path, junit_path, table_path = out / "summary.json", out / "junit.xml", out / "table.txt"
    done: list[CaseResult] = []

    def progress(i: int, r: CaseResult) -> None:
        done.append(r)
        timing = f" torch {r.torch_ms:.4f} ms kernel {r.kernel_ms:.4f} ms" if r.ratio is not None else ""
        err = f" err {r.kernel_err:.2g} err/tol {r.kernel_score:.2g}" if r.kernel_score is not None else ""
        why = f" ({r.reason})" if r.reason and r.reason not in quiet else ""
        print(f"[{i + 1}/{len(specs)}] {r.case_id} {r.status.upper()}{timing}{err}{why} {r.duration_s:.1f}s",
              flush=True)
        # written after every case: a run killed part way still leaves what it measured
        report.write_summary(summary_path, done, environment, vendor, complete=False)

    executor = None if env.skip_reason else _executor(env, args)
    results = run_cases(specs, executor, skip_reason=env.skip_reason, budget_s=args.budget_s, on_result=progress)
    report.write_summary(summary_path, results, environment, vendor)
    report.write_junit(junit_path, results, environment)
    text = report.table(results)
    verdict = report.verdict(results)
    table_path.write_text(f"{report.describe_environment(environment)}\n{text}\n{verdict.message}\n",
                          encoding="utf-8")
    print(text)
    print(f"verdict: {'OK' if verdict.ok else 'FAILED'}: {verdict.message}")
    print(f"junit:   {junit_path}\nsummary: {summary_path}\ntable:   {table_path}", flush=True)
    return 0 if verdict.ok else 1



def _executor(env: Environment, args: argparse.Namespace) -> Executor:
    """One executor per backend that can run here; the others skip with their reason."""
    def knobs(reps: int, warmup: int) -> dict[str, int]:
        return {"reps": args.reps or reps, "warmup": warmup if args.warmup is None else args.warmup,
                "seed": args.seed}

    executors: dict = {}
    if env.gems is not None:
        executors["flag_gems"] = GemsExecutor(env.torch, env.gems, **knobs(30, 5))
    if env.vllm is not None:
        from .vllm_ops import VllmExecutor  # imports torch

        # fewer calls on a CPU of a few cores, often shared: the cases are there for numbers, not benchmarks
        executors["vllm"] = VllmExecutor(env.torch, env.vllm, **knobs(10, 2))
    return dispatch(executors, env.backend_skips)
