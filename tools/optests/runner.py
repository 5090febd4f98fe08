"""Run the cases: probe torch, flag_gems and vLLM, then compare and time each op (torch only once it imports).

A case's status:
- skipped: torch does not import (every case), its backend cannot run here (flag_gems does not import:
  no device; vLLM's kernels do not import, or its platform is not cpu), the kernel is missing (FlagGems
  has no kernel for the op or did not run one: no 'GEMS ...' log record came from flag_gems while it
  ran; vLLM's build lacks the torch.ops._C op), or the time budget ran out; the reason says which;
- failed: the kernel's result is off the float64 reference by more than the tolerance, has the wrong
  shape/dtype/indices, or the call raised;
- passed: otherwise. Timing never decides a status; it is recorded.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import math
import os
import platform
import statistics
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cases import Backend, CaseSpec
from .report import CaseResult


class Skip(Exception):
    """The case cannot run here; the message says why."""


@dataclass
class Measurement:
    kernel_err: float  # the kernel under test (FlagGems' or vLLM's) against the reference
    kernel_score: float
    torch_err: float | None = None
    torch_score: float | None = None
    torch_ms: float | None = None
    kernel_ms: float | None = None
    torch_stream_ms: float | None = None
    kernel_stream_ms: float | None = None
    notes: list[str] = field(default_factory=list)


Executor = Callable[[CaseSpec], Measurement]


@dataclass
class Environment:
    info: dict[str, Any]
    torch: Any = None
    gems: Any = None
    vllm: Any = None  # the vllm package, once vllm._custom_ops imported on a cpu platform
    skip_reason: str | None = None  # torch does not import: every case
    backend_skips: dict[Backend, str] = field(default_factory=dict)  # backend -> why its cases cannot run


def dispatch(executors: dict[Backend, Executor], reasons: dict[Backend, str]) -> Executor:
    """One executor over the backends: a case whose backend has none is skipped with that backend's reason."""
    def execute(spec: CaseSpec) -> Measurement:
        run = executors.get(spec.backend)
        if run is None:
            raise Skip(reasons.get(spec.backend) or f"no executor for backend {spec.backend}")
        return run(spec)

    return execute


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def probe(import_module: Callable[[str], Any] = importlib.import_module,
          backends: Iterable[Backend] = ("flag_gems", "vllm")) -> Environment:
    """Import torch, and flag_gems and vLLM's kernels where the run has cases for them; never raises. On a
    CPU-only machine flag_gems' import raises RuntimeError('No device were detected on your machine !'):
    that becomes the skip reason of every FlagGems case, while vLLM's CPU kernels still run."""
    backends = set(backends)
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    env = Environment(info=info)
    try:
        torch = import_module("torch")
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to skip, not to crash
        env.skip_reason = f"torch does not import ({_short(exc)})"
        info["skip_reason"] = env.skip_reason
        return env
    env.torch = torch
    info["torch"] = getattr(torch, "__version__", "?")
    info["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    with contextlib.suppress(Exception):
        info["triton"] = import_module("triton").__version__
    if "flag_gems" in backends:
        try:
            env.gems = import_module("flag_gems")
        except Exception as exc:  # noqa: BLE001
            env.backend_skips["flag_gems"] = f"flag_gems does not import ({_short(exc)})"
        else:
            _gems_info(env.gems, torch, info)
    if "vllm" in backends:
        _probe_vllm(env, import_module)
    if env.backend_skips:
        info["skip_reasons"] = dict(env.backend_skips)
    return env


def _probe_vllm(env: Environment, import_module: Callable[[str], Any]) -> None:
    try:
        import_module("vllm._custom_ops")  # loads the build's torch.ops._C kernels
        vllm = import_module("vllm")
        platform_ = import_module("vllm.platforms").current_platform
    except Exception as exc:  # noqa: BLE001
        env.backend_skips["vllm"] = f"vLLM's kernels do not import ({_short(exc)})"
        return
    env.info["vllm"] = getattr(vllm, "__version__", "?")
    device = str(getattr(platform_, "device_type", "?"))
    env.info["vllm_platform"] = device
    if device != "cpu":
        env.backend_skips["vllm"] = (f"vLLM's platform here is {device}: the vllm_* cases cover its cpu "
                                     "kernels (the FlagGems cases cover the device)")
        return
    env.vllm = vllm


def _gems_info(gems: Any, torch: Any, info: dict[str, Any]) -> None:
    info["flag_gems"] = getattr(gems, "__version__", "?")
    info["flag_gems_vendor"] = getattr(gems, "vendor_name", None)
    info["flag_gems_device"] = getattr(gems, "device", None)
    with contextlib.suppress(Exception):
        device_mod = getattr(torch, str(gems.device))
        info["device_count"] = device_mod.device_count()
        info["device_name"] = device_mod.get_device_name(0)
    with contextlib.suppress(Exception):
        info["allow_tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)


# --- the loop (no torch here: executors are injected, so it is testable anywhere) --------------------------

def judge(spec: CaseSpec, m: Measurement) -> CaseResult:
    tol = spec.tolerance
    r = CaseResult(spec.op, spec.dtype, spec.shape, "passed", rtol=tol.rtol, atol=tol.atol,
                   kernel_err=m.kernel_err, torch_err=m.torch_err, kernel_score=m.kernel_score,
                   torch_score=m.torch_score, torch_ms=m.torch_ms, kernel_ms=m.kernel_ms,
                   torch_stream_ms=m.torch_stream_ms, kernel_stream_ms=m.kernel_stream_ms, notes=list(m.notes),
                   backend=spec.backend)
    if not m.kernel_score <= 1.0:  # also catches NaN
        r.status = "failed"
        r.reason = (f"max |{_SIDE[spec.backend]} - ref| = {m.kernel_err:.3g} is {m.kernel_score:.3g}x the tolerance "
                    f"(rtol {tol.rtol:g}, atol {tol.atol:.3g}); torch native: {_fmt(m.torch_err)} "
                    f"({_fmt(m.torch_score)}x)")
    if m.torch_score is not None and m.torch_score > 1.0:
        r.notes.append(f"torch native is also outside the tolerance ({m.torch_score:.3g}x)")
    return r


_SIDE: dict[Backend, str] = {"flag_gems": "gems", "vllm": "vllm"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def run_cases(specs: Sequence[CaseSpec], execute: Executor | None, *, skip_reason: str | None = None,
              budget_s: float | None = None, on_result: Callable[[int, CaseResult], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> list[CaseResult]:
    """Every spec gives exactly one result; nothing raised by a case escapes."""
    results: list[CaseResult] = []
    start = clock()
    for i, spec in enumerate(specs):
        t0 = clock()
        if skip_reason is not None or execute is None:
            result = CaseResult(spec.op, spec.dtype, spec.shape, "skipped", skip_reason or "no executor",
                                backend=spec.backend)
        elif budget_s is not None and t0 - start > budget_s:
            result = CaseResult(spec.op, spec.dtype, spec.shape, "skipped",
                                f"time budget of {budget_s:g}s spent before this case", backend=spec.backend)
        else:
            tol = spec.tolerance
            try:
                result = judge(spec, execute(spec))
            except Skip as exc:
                result = CaseResult(spec.op, spec.dtype, spec.shape, "skipped", str(exc), rtol=tol.rtol,
                                    atol=tol.atol, backend=spec.backend)
            except Exception as exc:  # noqa: BLE001 - a raising kernel is that case's failure
                result = CaseResult(spec.op, spec.dtype, spec.shape, "failed", f"raised {_short(exc)}",
                                    detail=traceback.format_exc(), rtol=tol.rtol, atol=tol.atol,
                                    backend=spec.backend)
        result.duration_s = round(clock() - t0, 3)
        results.append(result)
        if on_result is not None:
            on_result(i, result)
    return results


# --- the torch executor --------------------------------------------------------------------------------

class _GemsLog(logging.Handler):
    """Counts 'GEMS ...' debug records from flag_gems' loggers: proof that a FlagGems kernel ran."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            msg = record.getMessage()
            if msg.startswith("GEMS"):
                self.messages.append(msg)


def gems_logger_names(gems: Any = None) -> list[str]:
    """'flag_gems', plus the top-level names FlagGems imports its arch-specific ops under: it puts
    runtime/backend/_nvidia on sys.path and imports 'hopper', so hopper's mm/mul log as 'hopper.ops.mul'."""
    names = {"flag_gems"}
    root = os.path.dirname(getattr(gems, "__file__", None) or "") if gems is not None else ""
    if root:
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(root + os.sep) and not name.startswith("flag_gems"):
                names.add(name.split(".")[0])
    return sorted(names)


@contextlib.contextmanager
def capture_gems_log(names: Sequence[str] = ("flag_gems",)) -> Iterator[_GemsLog]:
    """Collect DEBUG records of these loggers (and their children) without passing them on to the root's
    handlers: nothing is printed, and levels are restored afterwards."""
    handler = _GemsLog()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


class Bench:
    """Timing and seeding shared by the executors (torch is handed in: this module imports without it)."""

    def __init__(self, torch: Any, device: Any, *, reps: int = 30, warmup: int = 5, seed: int = 0) -> None:
        self.torch, self.device = torch, device
        self.reps, self.warmup, self.seed = reps, warmup, seed

    def sync(self) -> None:
        mod = getattr(self.torch, self.device.type, None)
        if mod is not None and hasattr(mod, "synchronize") and self.device.type != "cpu":
            mod.synchronize()

    def _timed(self, fn: Callable[[], Any], calls: int) -> float:
        """Milliseconds for `calls` back-to-back calls, from an idle device to the last one's end."""
        if self.device.type == "cuda":
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) * 1000.0

    def bench(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(latency, stream) in ms after warm-up. latency: median over `reps` single calls, each from an idle
        device, so it includes the host's launch overhead (what an eager-mode engine pays per call);
        stream: mean per call over `reps` back-to-back calls, where launches overlap the kernels."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        latency = statistics.median(self._timed(fn, 1) for _ in range(self.reps))
        stream = self._timed(fn, self.reps) / self.reps
        return latency, stream

    def _gen(self, spec: CaseSpec) -> Any:
        seed = (self.seed * 1_000_003 + zlib.crc32(spec.case_id.encode())) & 0x7FFFFFFF
        try:
            gen = self.torch.Generator(device=self.device)
        except Exception:  # noqa: BLE001 - a backend without device generators: draw on the CPU
            gen = self.torch.Generator()
        return gen.manual_seed(seed)


class GemsExecutor(Bench):
    """Runs one case on the device flag_gems chose: reference, torch native, FlagGems, timings."""

    def __init__(self, torch: Any, gems: Any, *, reps: int = 30, warmup: int = 5, seed: int = 0) -> None:
        from . import ops

        super().__init__(torch, torch.device(str(getattr(gems, "device", "cpu"))), reps=reps, warmup=warmup,
                         seed=seed)
        self.gems, self.ops = gems, ops
        # float64 on the GPU where it is fast and exact; elsewhere (NPUs lack float64) on the CPU
        self.ref_device = self.device if self.device.type in {"cuda", "cpu"} else torch.device("cpu")
        self.version = getattr(gems, "__version__", "?")
        self.loggers = gems_logger_names(gems)
        self._unused = self._vendor_unused()

    def _vendor_unused(self) -> set[str]:
        vendor = getattr(self.gems, "vendor_name", "nvidia")
        if vendor == "nvidia":
            return set()
        with contextlib.suppress(Exception):
            return set(self.gems.runtime.backend.get_unused_ops(vendor))
        return set()

    def include_names(self, aten: Sequence[str]) -> list[str]:
        """FlagGems function names registered for these aten overloads (what use_gems(include=) takes)."""
        config = getattr(self.gems, "_FULL_CONFIG", None)
        if config is None:
            return sorted({a.split(".")[0].lstrip("_") for a in aten})
        names: list[str] = []
        for item in config:
            if len(item) < 2 or item[0] not in aten:
                continue
            if len(item) > 2 and callable(item[2]) and not item[2]():
                continue
            name = getattr(item[1], "__name__", None)
            if name and name not in names:
                names.append(name)
        return names

    def __call__(self, spec: CaseSpec) -> Measurement:
        torch, op = self.torch, spec.opdef
        dtype = getattr(torch, spec.dtype)
        tol = spec.tolerance
        gems_fn = None
        names: list[str] = []
        if op.fused:
            gems_fn = getattr(self.gems, op.fused, None)
            if gems_fn is None:
                raise Skip(f"flag_gems {self.version} has no {op.fused}()")
        else:
            names = self.include_names(op.aten)
            if not names:
                raise Skip(f"flag_gems {self.version} registers no kernel for aten::{', aten::'.join(op.aten)}")
            unused = sorted(set(names) & self._unused)
            if unused:
                raise Skip(f"flag_gems marks {', '.join(unused)} unused on {self.gems.vendor_name}")
        ctx = self.ops.Ctx(self.device, self.ref_device, dtype, self._gen(spec), gems_fn, self.gems)
        prepared = self.ops.BUILDERS[spec.op](ctx, spec.params)
        notes: list[str] = []
        with torch.no_grad():
            ref = prepared.reference()
            with capture_gems_log(self.loggers) as log:
                torch_out = prepared.torch_call()
                self.sync()
            if log.messages:
                notes.append(f"torch native path ran FlagGems kernels ({log.messages[0]}): registrations leaked")
            torch_err, torch_score = self.ops.compare(prepared, torch_out, ref, tol.rtol, tol.atol)
            gems_ctx = self.gems.use_gems(include=names) if names else contextlib.nullcontext()
            gems_call = prepared.kernel_bench or prepared.kernel_call
            with gems_ctx:
                with capture_gems_log(self.loggers) as log:
                    gems_out = prepared.kernel_call()
                    self.sync()
                if names and not log.messages:
                    routed = f"aten::{', aten::'.join(op.aten)} under use_gems(include={names})"
                    if prepared.gems_direct is None:
                        raise Skip(f"no FlagGems kernel ran for {routed} (no 'GEMS' log record)")
                    notes.append(f"{routed} ran no FlagGems kernel: called flag_gems.{spec.op}() directly")
                    with capture_gems_log(self.loggers) as log:
                        gems_out = prepared.gems_direct()
                        self.sync()
                    if not log.messages:
                        raise Skip(f"no FlagGems kernel ran for {routed} nor for flag_gems.{spec.op}()")
                    gems_call = prepared.gems_direct
                gems_ms, gems_stream_ms = self.bench(gems_call)
            gc.collect()  # drop use_gems' torch.library registrations now, not at some later collection
            torch_ms, torch_stream_ms = self.bench(prepared.torch_call)
            self._same_kind(torch_out, gems_out)
            gems_err, gems_score = self.ops.compare(prepared, gems_out, ref, tol.rtol, tol.atol)
        return Measurement(kernel_err=gems_err, kernel_score=gems_score, torch_err=torch_err,
                           torch_score=torch_score, torch_ms=round(torch_ms, 5), kernel_ms=round(gems_ms, 5),
                           torch_stream_ms=round(torch_stream_ms, 5), kernel_stream_ms=round(gems_stream_ms, 5),
                           notes=notes)

    def _same_kind(self, torch_out: Any, gems_out: Any) -> None:
        t = self.ops._tensors(torch_out)
        g = self.ops._tensors(gems_out)
        for a, b in zip(t, g, strict=False):
            if a.dtype != b.dtype:
                raise self.ops.Mismatch(f"FlagGems returned {b.dtype}, torch returns {a.dtype}")


def env_summary(env: Environment) -> dict[str, Any]:
    info = dict(env.info)
    info["argv"] = " ".join(sys.argv)
    return {k: v for k, v in info.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
