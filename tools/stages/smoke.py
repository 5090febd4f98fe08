"""Smoke serve: run the image as its release notes say, and talk to it through the OpenAI API.

How the engine starts is the launcher's business (tools.stages.launch: the image's entrypoint, `flagscale
serve` with the baked config, or a Ray cluster of one container per node); this module orders the run:
prepare, start, wait for /v1/models, check, record. The engine listens on loopback only. One that dies
while starting is reported at once with its last log lines, not after the readiness deadline. Every
container is removed whatever happens, and every log is kept first.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.markup import escape

from tools.core import labels
from tools.core.errors import CheckFailed, UserError
from tools.core.recipe import Recipe
from tools.mech.console import console, info, new_log, phase
from tools.mech.docker import image_facts, memory_usage
from tools.stages import launch, results
from tools.stages.launch import Served
from tools.stages.smoke_checks import Check, check_cluster, check_isolation, run_checks

HOST = launch.LOOPBACK
TAIL_LINES = 30
NAME_PREFIX = "flagrel-smoke"


@dataclass
class SmokeReport:
    recipe: str
    image_ref: str
    image_id: str
    port: int
    model_dir: str
    launcher: str = "engine"
    host: str = HOST
    passed: bool = False
    # from the first container's start to /v1/models answering; launch_s of it went to containers, Ray and
    # FlagScale's CLI before the engine command started
    start_to_ready_s: float | None = None
    launch_s: float | None = None
    ttft_s: float | None = None
    checks: list[Check] = field(default_factory=list)
    failure: str | None = None
    root_cause: str | None = None
    log_tail: list[str] = field(default_factory=list)
    container_log: str | None = None
    report_path: str | None = None
    # the commands that reproduce the run by hand, one per line
    docker_run: str | None = None
    # one per node (a single-node launcher has one): rank, ip, container, log, memory, and for a Ray
    # cluster what Ray says of it (alive, CPUs, vLLM workers)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # a multi-node run's private network: its interfaces and every TCP listener in it
    network: dict[str, Any] | None = None

    def summary(self) -> str:
        lines = [
            f"smoke    {'PASSED' if self.passed else 'FAILED'}  {self.recipe} on {self.image_ref} "
            f"({self.image_id[:19]}) via {self.launcher} at {self.host}:{self.port}",
        ]
        if self.start_to_ready_s is not None:
            lines.append(f"ready    {self.start_to_ready_s:.1f}s after start (launch {self.launch_s or 0:.1f}s)")
        for node in self.nodes:
            workers = f", vLLM workers {len(node['workers'])}" if "workers" in node else ""
            lines.append(f"node{node['rank']}    {node['ip']} {node['container']} memory {node.get('memory', '?')}"
                         f"{workers}; log {node['log']}")
        if self.ttft_s is not None:
            lines.append(f"ttft     {self.ttft_s * 1000:.0f} ms (streamed)")
        for check in self.checks:
            lines.append(f"  {'✓' if check.passed else '✗'} {check.name:<10} {check.detail}")
        if self.failure:
            lines.append(f"failure  {self.failure}")
        lines.append(f"report   {self.report_path}")
        lines.append(f"log      {self.container_log}")
        return "\n".join(lines)


class SmokeFailed(CheckFailed):
    """The engine never became ready; carries the written report."""

    def __init__(self, what: str, report: SmokeReport, *, fix: str) -> None:
        super().__init__(what, where=report.container_log, fix=fix)
        self.report = report


_env_value = launch.env_value
# how the engine launcher runs the image (its docker run line is the report's docker_run)
RunSpec, run_spec = launch.RunSpec, launch.run_spec


def _pick_port(recipe: Recipe, requested: int | None, host: str = HOST) -> int:
    if requested is not None:
        if not launch.port_free(host, requested):
            raise UserError(f"port {requested} on {host} is in use", where="--port",
                            fix="pick another port, or leave --port out to use a free one")
        return requested
    if launch.port_free(host, recipe.serve.port):
        return recipe.serve.port
    port = launch.free_port(host)
    info(f"  port {recipe.serve.port} on {host} is busy; using free port {port}")
    return port


def _model_dir(recipe: Recipe, given: Path | None, image: str | None = None) -> Path:
    if given is not None:
        path = Path(given)
    elif recipe.model.host_path:
        path = Path(recipe.model.host_path)
    elif recipe.model.source == "tiny":
        from tools.stages.tinymodel import make_tiny_model

        path = make_tiny_model()
    elif recipe.model.source == "tiny-vl" and image is not None:
        # made with the served image's own transformers (the host has none)
        from tools.stages.tinyvl import make_tiny_vl_model

        path = make_tiny_vl_model(image).path
    else:
        how = f"fetch them with: {recipe.model.download}, then " if recipe.model.download else ""
        raise UserError(f"recipe {recipe.name} names no local weights for {recipe.model.id}",
                        where="model.host_path",
                        fix=f"{how}set model.host_path in the recipe or pass --model-dir DIR")
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist", where="model.host_path / --model-dir",
                        fix="point it at a directory holding config.json and the weights")
    return path.resolve()


# Wrappers vLLM raises around the real error; the root cause is the exception printed before them.
_GENERIC = ("Engine core initialization failed", "WorkerProc initialization failed")
# A traceback's last line, bare or behind vLLM's "(Proc pid=N) ERROR date [file:line] " prefix; warnings
# that merely mention an error (e.g. "can cause `OSError: ...`") do not match.
_EXC_LINE = re.compile(r"^(?:\([^)]*\) ERROR [^\]]*\] )?([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def root_cause(log_text: str) -> str | None:
    """The first `SomethingError: message` in the log that is not one of vLLM's wrappers."""
    for line in log_text.splitlines():
        match = _EXC_LINE.match(line)
        if match and not any(g in match.group(2) for g in _GENERIC):
            return f"{match.group(1)}: {match.group(2).strip()}"[:300]
    return None


def _hint(log_text: str) -> str:
    """Turn the commonest start failures into a concrete next step."""
    if "/dev/shm" in log_text:
        return "the engine needs more shared memory: set run.shm_size in the recipe (e.g. 1g)"
    if "No module named 'vllm'" in log_text:
        return "the image has no vllm importable by python3: is this a FlagRelease engine image?"
    if "libnuma" in log_text:
        return "the image lacks libnuma (vLLM CPU's _C extension needs it): install libnuma1 in the image"
    if "Unsupported CPU attention configuration" in log_text:
        return "the CPU attention backend rejects the model's head_dim (64 works, 16 does not)"
    return "read the container log; rerun the engine by hand with the docker_run line in the report"


def _write_report(report: SmokeReport, path: Path, recipe_file: str | None) -> None:
    report.report_path = str(path)
    data: dict[str, Any] = asdict(report)
    data["recipe_file"] = recipe_file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _store(recipe: Recipe, report: SmokeReport, overrides: dict[str, Any]) -> None:
    results.store(results.result_for(
        recipe, "smoke", report.image_id, passed=report.passed, overrides=overrides, report=report.report_path,
        summary={"launcher": report.launcher, "start_to_ready_s": report.start_to_ready_s, "ttft_s": report.ttft_s,
                 "checks": {c.name: c.passed for c in report.checks}, "failure": report.failure},
    ))


def _wait_ready(served: Served, started: float, timeout_s: float, report: SmokeReport) -> str | None:
    """Wait for GET /v1/models == 200. Returns None when ready, else why not (exit or deadline)."""
    url = f"http://{served.host}:{served.port}/v1/models"
    last_line = ""
    with console.status("starting engine") as status:
        while True:
            elapsed = time.monotonic() - started
            stopped = served.dead()
            if stopped:
                return f"{stopped} {elapsed:.0f}s after start"
            try:
                if served.call(requests.get, url, timeout=2).status_code == 200:
                    report.start_to_ready_s = round(time.monotonic() - started, 2)
                    return None
            except requests.RequestException:
                pass  # not listening yet
            if elapsed > timeout_s:
                return f"the engine was not ready after {timeout_s:.0f}s (serve.ready_timeout_s or --timeout)"
            if int(elapsed) % 3 == 0:
                tail = served.tail(1)
                last_line = tail[-1][:90] if tail else last_line
            status.update(f"waiting for {url} [dim]{elapsed:4.0f}s/{timeout_s:.0f}s[/] {escape(last_line)}")
            time.sleep(1)


LAUNCHERS = {"engine": launch.engine, "flagscale": launch.flagscale, "ray-cluster": launch.ray_cluster}


def _record_nodes(served: Served, report: SmokeReport) -> None:
    """Each node's memory now and, for a Ray cluster, Ray's own view of it (checked: every node alive with
    its vLLM workers)."""
    memory = memory_usage([c.name for c in served.containers])
    for node in served.nodes:
        node.facts["memory"] = memory.get(node.container, "?")
    if isinstance(served, launch.RayServed):
        cluster, facts = check_cluster(served.cluster, [n.ip for n in served.nodes], served.workers_per_node)
        for node in served.nodes:
            node.facts.update(facts.get(node.ip, {}))
        report.network = served.network()
        for check in (cluster, check_isolation(report.network)):
            report.checks.append(check)
            info(f"  {'[green]✓' if check.passed else '[red]✗'} {check.name}[/] {escape(check.detail)}")
    report.nodes = [{"rank": n.rank, "ip": n.ip, "container": n.container, "log": n.log, **n.facts}
                    for n in served.nodes]


def smoke(recipe: Recipe, image_ref: str, *, model_dir: Path | None = None, port: int | None = None,
          timeout_s: int | None = None, recipe_file: str | None = None) -> SmokeReport:
    """Serve the recipe's model from the image and check it answers. Raises SmokeFailed if it never
    becomes ready; returns a report (passed or not) otherwise. Both ways the report is written and stored."""
    launcher = launch.launcher_of(recipe)
    with phase(f"Smoke: prepare {recipe.name} ({launcher})"):
        ident, found_labels = image_facts(image_ref)
        stack_id = found_labels.get(labels.STACK_ID)
        host_model = _model_dir(recipe, model_dir, image_ref)
        # weights other than the recipe's are recorded: such a run does not validate the recipe for publishing
        default = Path(recipe.model.host_path).resolve() if recipe.model.host_path else None
        overrides = {"model_dir": str(host_model)} if model_dir is not None and host_model != default else {}
        host = launch.serve_host(recipe)
        # a Ray cluster's nodes have a network of their own, where every port is free
        chosen = (port or recipe.serve.port) if launcher == "ray-cluster" else _pick_port(recipe, port, host)
        info(f"  image {image_ref} ({ident[:19]}), stack id {stack_id or '(none)'}")
        info(f"  model {host_model} -> {recipe.model.path} (read-only), engine at {host}:{chosen}")

    log_path = new_log(f"smoke-{recipe.name}")
    report = SmokeReport(recipe=recipe.name, image_ref=image_ref, image_id=ident, port=chosen,
                         model_dir=str(host_model), launcher=launcher, host=host, container_log=str(log_path))
    report_path = log_path.with_suffix(".json")
    timeout = float(timeout_s if timeout_s is not None else recipe.serve.ready_timeout_s)

    def finish(served: Served) -> str:
        # logs first: the report names the files and quotes from them, and the containers are about to go
        served.keep_logs()
        full_log = served.log.read_text(encoding="utf-8", errors="replace") if served.log.exists() else ""
        if not report.passed:
            report.root_cause = root_cause(full_log)
        _write_report(report, report_path, recipe_file)
        _store(recipe, report, overrides)
        return full_log

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        with phase(f"Smoke: launch via {launcher}"):
            try:
                served = stack.enter_context(LAUNCHERS[launcher](
                    recipe, image_ref, model_dir=host_model, host=host, port=chosen, log=log_path,
                    name_prefix=f"{NAME_PREFIX}-{recipe.name}"))
            except UserError as err:
                # a start that failed before the engine ran (docker run, ray start, flagscale serve) is
                # recorded like any other failed smoke; its logs are already on the host
                report.failure = err.what.splitlines()[0]
                _write_report(report, report_path, recipe_file)
                _store(recipe, report, overrides)
                raise
        report.launch_s = round(time.monotonic() - started, 2)
        report.container_log = str(served.log)
        report.docker_run = "\n".join(served.commands)
        finished = False
        try:
            with phase(f"Smoke: wait for the engine (deadline {timeout:.0f}s)"):
                not_ready = _wait_ready(served, started, timeout, report)
                if not_ready:
                    report.log_tail = served.tail(TAIL_LINES)
                    report.failure = not_ready
                    full_log = finish(served)
                    finished = True
                    tail = "\n".join(f"  | {line}" for line in report.log_tail)
                    cause = f"\nroot cause: {report.root_cause}" if report.root_cause else ""
                    raise SmokeFailed(f"smoke serve of {image_ref} failed: {not_ready}; "
                                      f"last log lines:\n{tail}{cause}", report,
                                      fix=f"{_hint(full_log)} (report: {report_path})")
                info(f"  ready after {report.start_to_ready_s:.1f}s (launch {report.launch_s:.1f}s)")
            with phase("Smoke: OpenAI API checks"):
                report.checks, report.ttft_s = served.call(run_checks, recipe, host, chosen, stack_id)
                _record_nodes(served, report)
                report.passed = bool(report.checks) and all(c.passed for c in report.checks)
                if not report.passed:
                    report.failure = "failed checks: " + ", ".join(c.name for c in report.checks if not c.passed)
                    info(f"  [red]{report.failure}")
            finish(served)
            finished = True
            for node in report.nodes:
                info(f"  node{node['rank']} {node['ip']}: memory {node['memory']}, log {node['log']}")
        finally:
            if not finished:
                # interrupted or crashed in our own code: keep the engine's logs anyway
                served.keep_logs()
    return report
