"""`nox -s op-tests -- RECIPE [--image REF | --host]`: operator tests against float64 references.

The suite itself is the self-contained package tools/optests (stdlib + torch, with flag_gems and vllm
where present): FlagGems' kernels where a device exists, vLLM's own CPU kernels where its platform is
cpu; a run in which nothing passed is a failure on every vendor. With --image
(default: the recipe's local build) it runs inside the image: the package is mounted read-only at
/opt/flagrelease/optests and run as `python3 -m optests` with PYTHONPATH=/opt/flagrelease, under the
vendor's device flags, in a uniquely named container that is always removed. With --host it runs in a
Python on this machine (a GPU machine without Docker). Either way junit.xml, summary.json and table.txt
land in --out, the table is printed, and an image's result is stored for publishing.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core import paths, vendors
from tools.core.errors import CheckFailed
from tools.core.labels import local_image
from tools.core.recipe import Recipe
from tools.optests import report

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "optests"
CONTAINER_ROOT = "/opt/flagrelease"
CONTAINER_PACKAGE = f"{CONTAINER_ROOT}/optests"
CONTAINER_OUT = "/opt/flagrelease-out"
NAME_PREFIX = "flagrel-optests"


def default_out(recipe_name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return paths.build_dir() / "optests" / f"{recipe_name}-{stamp}"


def suite_args(out: str, vendor: str, ops: Sequence[str], dtypes: Sequence[str], *,
               budget_s: float | None = None, small: bool = False) -> list[str]:
    """The arguments of `python3 -m optests` (same in a container and on the host)."""
    args = ["--out", out, "--vendor", vendor]
    if ops:
        args += ["--ops", *ops]
    if dtypes:
        args += ["--dtypes", *dtypes]
    if budget_s is not None:
        args += ["--budget-s", f"{budget_s:g}"]
    if small:
        args.append("--small")
    return args


def _existing_devices(flags: Sequence[str], exists: Callable[[str], bool]) -> list[str]:
    """Drop `--device PATH` pairs whose PATH is not on this host (docker run would refuse them)."""
    out: list[str] = []
    i = 0
    while i < len(flags):
        if flags[i] == "--device" and i + 1 < len(flags):
            if exists(flags[i + 1].split(":", 1)[0]):
                out += flags[i:i + 2]
            i += 2
            continue
        out.append(flags[i])
        i += 1
    return out


def vendor_flags(vendor: str, *, shm_size: str | None = None,
                 exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """nvidia: --gpus all --ipc=host ...; ascend: the /dev/davinci* devices this host has; cpu: none."""
    from tools.core.profiles import docker_run_flags

    return _existing_devices(docker_run_flags(vendor, shm_size=shm_size), exists)  # type: ignore[arg-type]


def docker_argv(image: str, name: str, out_dir: Path, suite: Sequence[str], flags: Sequence[str], *,
                user: str | None = None) -> list[str]:
    argv = ["docker", "run", "--rm", "--name", name, "--label", f"io.flagrelease.owner={NAME_PREFIX}",
            "--network", "host", *flags,
            "-v", f"{PACKAGE_DIR}:{CONTAINER_PACKAGE}:ro",
            "-v", f"{out_dir}:{CONTAINER_OUT}",
            "-e", f"PYTHONPATH={CONTAINER_ROOT}", "-e", "PYTHONUNBUFFERED=1", "-e", "PYTHONDONTWRITEBYTECODE=1"]
    if user:  # files in the output folder belong to the caller, and Triton's cache needs a writable HOME
        argv += ["--user", user, "-e", "HOME=/tmp"]
    return [*argv, "--entrypoint", "python3", image, "-m", "optests", *suite]


def host_argv(python: str, suite: Sequence[str]) -> list[str]:
    return [python, "-m", "tools.optests", *suite]


def run_op_tests(recipe: Recipe, *, image: str | None = None, host: bool = False, out: Path | None = None,
                 ops: Sequence[str] | None = None, dtypes: Sequence[str] | None = None,
                 python: str | None = None, budget_s: float | None = None, small: bool = False) -> bool:
    """Run the suite for a recipe (in its image, or on the host); print the table; True when it passed."""
    from tools.mech.console import console, info, new_log, print_tail, run_logged, warn
    from tools.stages import results

    out = (out or default_out(recipe.name)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # a run narrower than the recipe's is recorded as such: it does not validate the recipe for publishing
    overrides: dict[str, object] = {}
    if ops and list(ops) != list(recipe.tests.op_tests.ops):
        overrides["ops"] = list(ops)
    if dtypes and list(dtypes) != list(recipe.tests.op_tests.dtypes):
        overrides["dtypes"] = list(dtypes)
    if budget_s is not None:
        overrides["budget_s"] = budget_s
    if small:
        overrides["small"] = True
    ops = list(ops if ops else recipe.tests.op_tests.ops)
    dtypes = list(dtypes if dtypes else recipe.tests.op_tests.dtypes)
    log = new_log(f"optests-{recipe.name}")
    image_id: str | None = None
    if host:
        cmd = host_argv(python or sys.executable, suite_args(str(out), recipe.vendor, ops, dtypes,
                                                            budget_s=budget_s, small=small))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        info(f"op-tests on the host: {' '.join(cmd)}")
        result = run_logged(cmd, log, title="op-tests (host)", env=env, cwd=PROJECT_ROOT)
        where = "host"
    else:
        from tools.mech import docker

        image = image or local_image(recipe.name)
        image_id = docker.image_id(image)
        flags = vendor_flags(recipe.vendor, shm_size=recipe.run.shm_size)
        globs = vendors.get(recipe.vendor).device_globs
        if globs and not any(glob.glob(pattern) for pattern in globs):
            warn(f"no {' or '.join(globs)} device on this host: the accelerator is not visible in the container")
        name = f"{NAME_PREFIX}-{secrets.token_hex(4)}"
        user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") and os.getuid() != 0 else None
        cmd = docker_argv(image, name, out, suite_args(CONTAINER_OUT, recipe.vendor, ops, dtypes,
                                                      budget_s=budget_s, small=small), flags, user=user)
        info(f"op-tests in {image} (container {name})")
        result = docker.run_attached(cmd[1:], name=name, log=log, title=f"op-tests ({image})")
        where = image

    summary_path = out / "summary.json"
    if not summary_path.is_file():
        print_tail(result)
        if image_id:
            results.store(results.result_for(recipe, "op-tests", image_id, passed=False, overrides=overrides,
                                             report=str(log),
                                             summary={"error": f"no summary (exit {result.returncode})"}))
        raise CheckFailed(f"the op-test run in {where} wrote no summary (exit {result.returncode})",
                        where=str(log),
                        fix="read the log: the image needs python3 with torch; a crash before the first case "
                            "shows there")
    try:
        data = json.loads(summary_path.read_bytes().decode("utf-8"))
        cases = report.load_results(data)
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckFailed(f"the op-test run in {where} wrote an unreadable summary ({exc.__class__.__name__}: "
                          f"{str(exc)[:160]})", where=str(summary_path),
                          fix=f"read the log {log}; rerun the op tests (nox -s op-tests -- {recipe.name})") from exc
    ok = bool(data.get("ok")) and bool(data.get("complete")) and result.returncode == 0
    if result.returncode not in (0, 1) or not data.get("complete"):
        print_tail(result)
    console.print(report.describe_environment(data.get("environment", {})), markup=False, highlight=False)
    console.print(report.table(cases), markup=False, highlight=False, soft_wrap=True)
    console.print(f"op-tests {'PASSED' if ok else 'FAILED'}: {data.get('verdict')}", markup=False,
                  style="green" if ok else "red")
    console.print(f"junit    {out / 'junit.xml'}\nsummary  {summary_path}\nlog      {log}", markup=False,
                  highlight=False)
    if image_id:
        results.store(results.result_for(
            recipe, "op-tests", image_id, passed=ok, overrides=overrides, report=str(summary_path),
            summary={"counts": data.get("counts"), "counts_by_backend": data.get("counts_by_backend"),
                     "verdict": data.get("verdict"),
                     "speed_ratio_geomean": data.get("speed_ratio_geomean"),
                     "device": data.get("environment", {}).get("device_name"),
                     "flag_gems": data.get("environment", {}).get("flag_gems")}))
    return ok


