"""Smoke serve: run the image as its release notes say, and talk to it through the OpenAI API.

The engine runs in a container on the host network but listens on loopback only. An engine that dies
while starting is reported at once with its last log lines (the container state is polled every
second), not after the readiness deadline. The container is always removed (tools.container).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.markup import escape

from tools.core import labels
from tools.core.errors import CheckFailed, UserError
from tools.core.profiles import docker_run_flags
from tools.core.recipe import Recipe, engine_argv
from tools.mech.console import console, info, new_log, phase
from tools.mech.docker import Container, image_facts, running_container
from tools.stages import results
from tools.stages.smoke_checks import Check, run_checks

HOST = "127.0.0.1"
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
TAIL_LINES = 30
NAME_PREFIX = "flagrel-smoke"


@dataclass
class SmokeReport:
    recipe: str
    image_ref: str
    image_id: str
    port: int
    model_dir: str
    passed: bool = False
    start_to_ready_s: float | None = None
    ttft_s: float | None = None
    checks: list[Check] = field(default_factory=list)
    failure: str | None = None
    root_cause: str | None = None
    log_tail: list[str] = field(default_factory=list)
    container_log: str | None = None
    report_path: str | None = None
    docker_run: str | None = None

    def summary(self) -> str:
        lines = [
            f"smoke    {'PASSED' if self.passed else 'FAILED'}  {self.recipe} on {self.image_ref} "
            f"({self.image_id[:19]})",
        ]
        if self.start_to_ready_s is not None:
            lines.append(f"ready    {self.start_to_ready_s:.1f}s after start")
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


def _env_value(value: object) -> str:
    # vLLM parses its boolean variables with int(), so YAML true/false must become 1/0, not True/False.
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_port(recipe: Recipe, requested: int | None) -> int:
    if requested is not None:
        if not _port_free(requested):
            raise UserError(f"port {requested} on {HOST} is in use", where="--port",
                            fix="pick another port, or leave --port out to use a free one")
        return requested
    if _port_free(recipe.serve.port):
        return recipe.serve.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port = int(sock.getsockname()[1])
    info(f"  port {recipe.serve.port} is busy; using free port {port}")
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
        summary={"start_to_ready_s": report.start_to_ready_s, "ttft_s": report.ttft_s,
                 "checks": {c.name: c.passed for c in report.checks}, "failure": report.failure},
    ))


def _wait_ready(container: Container, port: int, timeout_s: float, report: SmokeReport) -> str | None:
    """Wait for GET /v1/models == 200. Returns None when ready, else why not (exit or deadline)."""
    url = f"http://{HOST}:{port}/v1/models"
    start = time.monotonic()
    last_line = ""
    with console.status("starting engine") as status:
        while True:
            elapsed = time.monotonic() - start
            state = container.state()
            if not state.running:
                oom = " (killed: out of memory)" if state.oom_killed else ""
                return f"the engine exited with code {state.exit_code}{oom} {elapsed:.0f}s after start"
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    report.start_to_ready_s = round(time.monotonic() - start, 2)
                    return None
            except requests.RequestException:
                pass  # not listening yet
            if elapsed > timeout_s:
                return f"the engine was not ready after {timeout_s:.0f}s (serve.ready_timeout_s or --timeout)"
            if int(elapsed) % 3 == 0:
                tail = container.log_tail(1)
                last_line = tail[-1][:90] if tail else last_line
            status.update(f"waiting for {url} [dim]{elapsed:4.0f}s/{timeout_s:.0f}s[/] {escape(last_line)}")
            time.sleep(1)


@dataclass(frozen=True)
class RunSpec:
    """How the smoke test runs the engine: docker run flags, mounts, env and the engine's argv."""

    flags: list[str]
    mounts: list[str]
    env: dict[str, str]
    argv: list[str]

    def command_line(self, image_ref: str) -> list[str]:
        return ["docker", "run", "--rm", "--network", "host", *self.flags,
                *sum((["-v", m] for m in self.mounts), []),
                *sum((["-e", f"{k}={v}"] for k, v in self.env.items()), []),
                "--entrypoint", "python3", image_ref, *self.argv]


def run_spec(recipe: Recipe, host_model: Path, port: int) -> RunSpec:
    return RunSpec(
        flags=docker_run_flags(recipe.vendor, shm_size=recipe.run.shm_size),
        mounts=[f"{host_model}:{recipe.model.path}:ro", *recipe.run.mounts],
        env={k: _env_value(v) for k, v in {**recipe.serve.env, **recipe.run.env}.items()},
        argv=["-m", ENGINE_MODULE, *engine_argv(recipe, recipe.model.path, HOST, port)],
    )


def smoke(recipe: Recipe, image_ref: str, *, model_dir: Path | None = None, port: int | None = None,
          timeout_s: int | None = None, recipe_file: str | None = None) -> SmokeReport:
    """Serve the recipe's model from the image and check it answers. Raises SmokeFailed if it never
    becomes ready; returns a report (passed or not) otherwise. Both ways the report is written and stored."""
    with phase(f"Smoke: prepare {recipe.name}"):
        ident, found_labels = image_facts(image_ref)
        stack_id = found_labels.get(labels.STACK_ID)
        host_model = _model_dir(recipe, model_dir, image_ref)
        # weights other than the recipe's are recorded: such a run does not validate the recipe for publishing
        default = Path(recipe.model.host_path).resolve() if recipe.model.host_path else None
        overrides = {"model_dir": str(host_model)} if model_dir is not None and host_model != default else {}
        chosen = _pick_port(recipe, port)
        info(f"  image {image_ref} ({ident[:19]}), stack id {stack_id or '(none)'}")
        info(f"  model {host_model} -> {recipe.model.path} (read-only), port {HOST}:{chosen}")

    log_path = new_log(f"smoke-{recipe.name}")
    report = SmokeReport(recipe=recipe.name, image_ref=image_ref, image_id=ident, port=chosen,
                         model_dir=str(host_model), container_log=str(log_path))
    report_path = log_path.with_suffix(".json")
    run = run_spec(recipe, host_model, chosen)
    flags, mounts, env, argv = run.flags, run.mounts, run.env, run.argv
    # what a user would type to reproduce this run by hand (shell-quoted: every value stays one word)
    report.docker_run = shlex.join(run.command_line(image_ref))
    timeout = float(timeout_s if timeout_s is not None else recipe.serve.ready_timeout_s)

    def finish(container: Container) -> str:
        # logs first: the report names the file and quotes from it, and the container is about to go
        container.save_logs(log_path)
        full_log = log_path.read_text(encoding="utf-8", errors="replace")
        if not report.passed:
            report.root_cause = root_cause(full_log)
        _write_report(report, report_path, recipe_file)
        _store(recipe, report, overrides)
        return full_log

    with running_container(image_ref, argv, name_prefix=f"{NAME_PREFIX}-{recipe.name}", flags=flags,
                           mounts=mounts, env=env, entrypoint="python3") as container:
        finished = False
        try:
            with phase(f"Smoke: start the engine (deadline {timeout:.0f}s)"):
                info(f"  container {container.name}; log: {log_path}")
                not_ready = _wait_ready(container, chosen, timeout, report)
                if not_ready:
                    report.log_tail = container.log_tail(TAIL_LINES)
                    report.failure = not_ready
                    full_log = finish(container)
                    finished = True
                    tail = "\n".join(f"  | {line}" for line in report.log_tail)
                    cause = f"\nroot cause: {report.root_cause}" if report.root_cause else ""
                    raise SmokeFailed(f"smoke serve of {image_ref} failed: {not_ready}; "
                                      f"last log lines:\n{tail}{cause}", report,
                                      fix=f"{_hint(full_log)} (report: {report_path})")
                info(f"  ready after {report.start_to_ready_s:.1f}s")
            with phase("Smoke: OpenAI API checks"):
                report.checks, report.ttft_s = run_checks(recipe, HOST, chosen, stack_id)
                report.passed = bool(report.checks) and all(c.passed for c in report.checks)
                if not report.passed:
                    report.failure = "failed checks: " + ", ".join(c.name for c in report.checks if not c.passed)
                    info(f"  [red]{report.failure}")
            finish(container)
            finished = True
        finally:
            if not finished:
                # interrupted or crashed in our own code: keep the engine's log anyway
                container.save_logs(log_path)
    return report
