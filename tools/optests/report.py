"""Results of a suite run: junit XML, a JSON summary, a table and the verdict (stdlib only)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["passed", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("passed", "failed", "skipped")
SUITE = "op-tests"
# what each backend's kernels are called in messages, in this order
BACKEND_NAMES: dict[str, str] = {"vllm": "vLLM kernels", "flag_gems": "FlagGems"}
# summary keys written before the kernel under test could be vLLM's (read back from older summaries)
_OLD_KEYS = {"gems_err": "kernel_err", "gems_score": "kernel_score", "gems_ms": "kernel_ms",
             "gems_stream_ms": "kernel_stream_ms"}


@dataclass
class CaseResult:
    op: str
    dtype: str
    shape: str
    status: Status
    reason: str = ""
    detail: str = ""  # traceback or extra text for junit
    rtol: float | None = None
    atol: float | None = None
    kernel_err: float | None = None  # max |kernel - ref|: the kernel under test, FlagGems' or vLLM's
    torch_err: float | None = None  # max |torch - ref|: torch's own (vLLM's native) path
    kernel_score: float | None = None  # max |kernel - ref| / (atol + rtol |ref|): <= 1 passes
    torch_score: float | None = None
    torch_ms: float | None = None  # latency: median of single calls from an idle device (eager mode)
    kernel_ms: float | None = None
    torch_stream_ms: float | None = None  # mean per call of back-to-back calls (launches overlapped)
    kernel_stream_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    backend: str = "flag_gems"  # whose kernel: "flag_gems" or "vllm"

    @property
    def case_id(self) -> str:
        return f"{self.op}[{self.dtype},{self.shape}]"

    @property
    def ratio(self) -> float | None:
        """torch time / kernel time: > 1 means the kernel under test is faster."""
        if self.torch_ms is None or not self.kernel_ms:
            return None
        return self.torch_ms / self.kernel_ms

    @property
    def stream_ratio(self) -> float | None:
        if self.torch_stream_ms is None or not self.kernel_stream_ms:
            return None
        return self.torch_stream_ms / self.kernel_stream_ms


def counts(results: Iterable[CaseResult]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for r in results:
        out[r.status] += 1
    out["total"] = sum(out[s] for s in STATUSES)
    return out


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str


def counts_by_backend(results: Iterable[CaseResult]) -> dict[str, dict[str, int]]:
    groups: dict[str, list[CaseResult]] = {}
    for r in results:
        groups.setdefault(r.backend, []).append(r)
    order = [b for b in BACKEND_NAMES if b in groups] + sorted(b for b in groups if b not in BACKEND_NAMES)
    return {b: counts(groups[b]) for b in order}


def _backend_line(results: Sequence[CaseResult]) -> str:
    """'vLLM kernels 13/13 passed; FlagGems 0/40 passed, 40 skipped (flag_gems does not import (...))'"""
    parts = []
    for backend, c in counts_by_backend(results).items():
        text = f"{BACKEND_NAMES.get(backend, backend)} {c['passed']}/{c['total']} passed"
        if c["failed"]:
            text += f", {c['failed']} failed"
        if c["skipped"]:
            reasons = sorted({r.reason for r in results if r.backend == backend and r.status == "skipped"})
            text += f", {c['skipped']} skipped ({'; '.join(reasons[:2])})"
        parts.append(text)
    return "; ".join(parts)


def verdict(results: Sequence[CaseResult]) -> Verdict:
    """ok: nothing failed and something passed. A run where nothing ran is no pass, on any vendor."""
    c = counts(results)
    if c["failed"]:
        return Verdict(False, f"{c['failed']} of {c['total']} case(s) failed: {_backend_line(results)}")
    if c["passed"] == 0:
        if not c["total"]:
            return Verdict(False, "nothing was tested: no case selected")
        return Verdict(False, f"nothing was tested: all {c['skipped']} case(s) skipped: {_backend_line(results)}")
    return Verdict(True, f"{c['passed']} passed, {c['skipped']} skipped of {c['total']}: {_backend_line(results)}")


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _num(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "nan": JSON has no such numbers
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def case_dict(r: CaseResult) -> dict[str, Any]:
    data = asdict(r)
    data.pop("detail")
    data["case"] = r.case_id
    data["ratio"] = r.ratio
    data["stream_ratio"] = r.stream_ratio
    return _json_safe(data)


def summary(results: Sequence[CaseResult], environment: Mapping[str, Any], vendor: str, *,
            complete: bool = True) -> dict[str, Any]:
    v = verdict(results)
    return {
        "suite": SUITE,
        "vendor": vendor,
        "complete": complete,
        "environment": _json_safe(dict(environment)),
        "counts": counts(results),
        "counts_by_backend": counts_by_backend(results),
        "ok": v.ok,
        "verdict": v.message,
        "speed_ratio_geomean": geomean(r.ratio for r in results if r.status == "passed" and r.ratio),
        "stream_ratio_geomean": geomean(r.stream_ratio for r in results if r.status == "passed" and r.stream_ratio),
        "cases": [case_dict(r) for r in results],
    }


def write_summary(path: Path, results: Sequence[CaseResult], environment: Mapping[str, Any], vendor: str, *,
                  complete: bool = True) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary(results, environment, vendor, complete=complete), indent=2) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    return path


def load_results(data: Mapping[str, Any]) -> list[CaseResult]:
    """CaseResults back from a summary written by write_summary (the host reads the container's)."""
    names = {f for f in CaseResult.__dataclass_fields__ if f != "detail"}
    out = []
    for case in data.get("cases", []):
        case = {_OLD_KEYS.get(k, k): v for k, v in case.items()}
        kw = {k: v for k, v in case.items() if k in names}
        for key in ("kernel_score", "torch_score", "kernel_err", "torch_err"):
            if isinstance(kw.get(key), str):
                kw[key] = float(kw[key])
        out.append(CaseResult(**kw))
    return out


def junit_xml(results: Sequence[CaseResult], environment: Mapping[str, Any]) -> bytes:
    """One <testsuite> per op, one <testcase> per op x dtype x shape."""
    c = counts(results)
    root = ET.Element("testsuites", name=SUITE, tests=str(c["total"]), failures=str(c["failed"]),
                      errors="0", skipped=str(c["skipped"]),
                      time=f"{sum(r.duration_s for r in results):.3f}")
    by_op: dict[str, list[CaseResult]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    for op, cases in by_op.items():
        oc = counts(cases)
        suite = ET.SubElement(root, "testsuite", name=op, tests=str(oc["total"]), failures=str(oc["failed"]),
                              errors="0", skipped=str(oc["skipped"]),
                              time=f"{sum(r.duration_s for r in cases):.3f}")
        props = ET.SubElement(suite, "properties")
        for key, value in environment.items():
            ET.SubElement(props, "property", name=str(key), value=str(value))
        for r in cases:
            case = ET.SubElement(suite, "testcase", classname=f"optests.{r.backend}.{op}", name=f"{r.dtype}-{r.shape}",
                                 time=f"{r.duration_s:.3f}")
            if r.status == "skipped":
                ET.SubElement(case, "skipped", message=r.reason)
            elif r.status == "failed":
                fail = ET.SubElement(case, "failure", message=r.reason, type="mismatch" if r.kernel_score else "error")
                fail.text = r.detail or r.reason
            out = (f"backend={r.backend} kernel_ms={_num(r.kernel_ms)} torch_ms={_num(r.torch_ms)} "
                   f"ratio={_num(r.ratio)} kernel_err={_num(r.kernel_err)} torch_err={_num(r.torch_err)} "
                   f"rtol={r.rtol} atol={r.atol}")
            if r.notes:
                out += "\n" + "\n".join(r.notes)
            ET.SubElement(case, "system-out").text = out
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, results: Sequence[CaseResult], environment: Mapping[str, Any]) -> Path:
    path.write_bytes(junit_xml(results, environment))
    return path


def table(results: Sequence[CaseResult]) -> str:
    """Per op and dtype: passed / failed / skipped, median ms of each side, the speed ratio, and the worst
    error against float64 (max |kernel - ref|) with its share of the tolerance."""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        groups.setdefault((r.op, r.dtype), []).append(r)
    head = ("op", "dtype", "pass", "fail", "skip", "torch ms", "kernel ms", "torch/kernel", "stream t/k",
            "max err", "err/tol", "note")
    rows: list[tuple[str, ...]] = []
    for (op, dtype), cases in groups.items():
        c = counts(cases)
        timed = [r for r in cases if r.ratio is not None]
        torch_ms = sum(r.torch_ms or 0.0 for r in timed) if timed else None
        kernel_ms = sum(r.kernel_ms or 0.0 for r in timed) if timed else None
        scores = [r.kernel_score for r in cases if r.kernel_score is not None]
        errs = [r.kernel_err for r in cases if r.kernel_err is not None]
        note = next((r.reason for r in cases if r.status == "failed"), "") or \
            next((r.reason for r in cases if r.status == "skipped"), "")
        rows.append((op, dtype, str(c["passed"]), str(c["failed"]), str(c["skipped"]),
                     _num(torch_ms, ".4f"), _num(kernel_ms, ".4f"),
                     _num(geomean(r.ratio for r in timed if r.ratio), ".2f"),
                     _num(geomean(r.stream_ratio for r in timed if r.stream_ratio), ".2f"),
                     _num(max(errs) if errs else None, ".2g"),
                     _num(max(scores) if scores else None, ".2g"), note[:70]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    right = {2, 3, 4, 5, 6, 7, 8, 9, 10}

    def fmt(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    c = counts(results)
    ratio = geomean(r.ratio for r in results if r.status == "passed" and r.ratio)
    stream = geomean(r.stream_ratio for r in results if r.status == "passed" and r.stream_ratio)
    lines.append(f"total: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped of {c['total']}; "
                 f"geomean over passed cases: torch/kernel {_num(ratio, '.2f')}, stream {_num(stream, '.2f')} "
                 "(>1: the kernel is faster)")
    lines.append("kernel: FlagGems' for the plain op names, vLLM's torch.ops._C for vllm_*; ms: median latency of "
                 "one call from an idle device (eager mode, launch overhead included), summed over a row's shapes; "
                 "stream t/k: the same ratio for back-to-back calls; max err: max |kernel - float64 reference|; "
                 "err/tol: worst error / tolerance (<= 1 passes)")
    return "\n".join(lines)


def describe_environment(environment: Mapping[str, Any]) -> str:
    keys = ("device_name", "flag_gems", "flag_gems_vendor", "vllm", "vllm_platform", "torch", "triton", "cuda",
            "python")
    parts = [f"{k}={environment[k]}" for k in keys if environment.get(k) is not None]
    if environment.get("skip_reason"):
        parts.append(f"skip_reason={environment['skip_reason']!r}")
    for backend, reason in (environment.get("skip_reasons") or {}).items():
        parts.append(f"{backend}_skipped={reason!r}")
    return " ".join(parts)
