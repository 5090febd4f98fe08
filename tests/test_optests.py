"""The FlagGems operator suite (tools/optests) and its `op-tests` command.

Most tests need no torch: the runner's loop takes an injected executor, and the reports are plain data.
Tests marked with `needs_torch` run the real torch side of every op on the CPU against a fake flag_gems
(the same entry points, torch underneath, knobs to break single ops) and skip where torch is absent.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools import PROJECT_ROOT
from tools.cli import optests as op_tests_command
from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.optests import report
from tools.optests.cases import CATALOG, CaseSpec, UnknownName, select, shape
from tools.optests.report import CaseResult
from tools.optests.runner import (
    Measurement,
    Skip,
    capture_gems_log,
    gems_logger_names,
    judge,
    probe,
    run_cases,
)
from tools.optests.tolerances import EXACT, TOLERANCES, Tolerance, score, tolerance_for, within
from tools.stages import op_tests as optests_cli

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
NO_DEVICE = "No device were detected on your machine !"


# --- tolerances -------------------------------------------------------------------------------------------

def test_tolerances_per_dtype_and_their_scaling():
    assert tolerance_for("float32") == Tolerance(1e-4, 1e-6)
    assert tolerance_for("float16") == Tolerance(1e-3, 1e-5)
    assert tolerance_for("bfloat16") == Tolerance(1.6e-2, 1e-4)
    # half precisions are looser than float32, bfloat16 (8 bits) looser than float16 (11 bits)
    assert TOLERANCES["float32"].rtol < TOLERANCES["float16"].rtol < TOLERANCES["bfloat16"].rtol
    k4096 = tolerance_for("bfloat16", reduce_dim=4096)
    assert k4096.rtol == 1.6e-2 and k4096.atol == pytest.approx(1e-4 * 4096)
    assert tolerance_for("float32", exact=True) is EXACT and EXACT.exact
    with pytest.raises(ValueError, match="no tolerance for dtype 'int8'"):
        tolerance_for("int8")


def test_score_is_the_fraction_of_the_allowed_error():
    tol = Tolerance(rtol=1e-3, atol=1e-5)
    bound = 1e-5 + 1e-3 * 2.0
    assert score(bound, 2.0, tol) == pytest.approx(1.0)
    assert within(bound * 0.999, 2.0, tol)
    assert not within(bound * 1.001, 2.0, tol)
    assert score(0.0, 0.0, EXACT) == 0.0 and score(1e-30, 1.0, EXACT) == math.inf
    assert score(float("nan"), 1.0, tol) == math.inf and not within(float("nan"), 1.0, tol)


def test_case_tolerance_scales_only_reductions():
    mm = CaseSpec("mm", "float16", shape(M=16, N=8, K=400))
    assert mm.tolerance == Tolerance(1e-3, pytest.approx(1e-5 * 400))
    assert CaseSpec("add", "float16", shape(T=4, H=8)).tolerance == Tolerance(1e-3, 1e-5)
    assert CaseSpec("topk", "bfloat16", shape(B=2, V=300)).tolerance is EXACT
    assert CaseSpec("cumsum", "float32", shape(B=2, V=300)).tolerance == Tolerance(1e-4, 1e-6)
    assert mm.case_id == "mm[float16,M16 N8 K400]"


# --- the catalog --------------------------------------------------------------------------------------------

def test_catalog_covers_the_ops_vllm_uses():
    want = {"rms_norm", "layer_norm", "silu_and_mul", "gelu", "rotary_embedding", "softmax", "mm", "addmm",
            "bmm", "embedding", "add", "mul", "argmax", "topk", "cumsum", "fused_add_rms_norm"}
    assert want <= set(CATALOG)
    fused = {name for name, op in CATALOG.items() if op.fused}
    assert fused == {"fused_add_rms_norm", "silu_and_mul", "gelu_and_mul", "rotary_embedding"}
    for op in CATALOG.values():
        assert op.shapes and op.small
        assert bool(op.aten) != bool(op.fused)
        if op.reduce:
            assert all(op.reduce in dict(s) for s in op.shapes + op.small)


def test_select_filters_ops_and_dtypes_in_catalog_order():
    every = select()
    assert len(every) == 3 * sum(len(op.shapes) for op in CATALOG.values())
    assert len({s.case_id for s in every}) == len(every)
    picked = select(["softmax", "mm"], ["bfloat16", "float32"])
    assert [s.case_id for s in picked] == [
        "softmax[float32,B256 V32000]", "softmax[bfloat16,B256 V32000]",
        "mm[float32,M1024 N4096 K4096]", "mm[bfloat16,M1024 N4096 K4096]",
        "mm[float32,M16 N4096 K4096]", "mm[bfloat16,M16 N4096 K4096]",
    ]
    assert select(["mm"], small=True)[0].params == {"M": 8, "N": 48, "K": 64}
    with pytest.raises(UnknownName, match="unknown op conv9d"):
        select(["conv9d"])
    with pytest.raises(UnknownName, match="unknown dtype float64"):
        select([], ["float64"])


# --- the loop: statuses from an injected executor ----------------------------------------------------------

def _specs() -> list[CaseSpec]:
    return [CaseSpec("add", "float16", shape(T=4, H=8)), CaseSpec("mm", "bfloat16", shape(M=4, N=4, K=64)),
            CaseSpec("silu_and_mul", "float32", shape(T=4, I=8)), CaseSpec("topk", "float16", shape(B=2, V=300))]


def test_run_cases_gives_pass_fail_skip_and_never_raises():
    def execute(spec: CaseSpec) -> Measurement:
        if spec.op == "add":
            return Measurement(gems_err=1e-4, gems_score=0.5, torch_err=2e-4, torch_score=0.9,
                               torch_ms=2.0, gems_ms=1.0)
        if spec.op == "mm":
            return Measurement(gems_err=0.5, gems_score=3.0, torch_err=0.01, torch_score=0.1)
        if spec.op == "silu_and_mul":
            raise Skip("flag_gems 5.0.2 has no silu_and_mul()")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    seen: list[str] = []
    results = run_cases(_specs(), execute, on_result=lambda i, r: seen.append(f"{i}:{r.status}"))
    assert [r.status for r in results] == ["passed", "failed", "skipped", "failed"]
    assert seen == ["0:passed", "1:failed", "2:skipped", "3:failed"]
    passed, mismatch, skipped, raised = results
    assert passed.ratio == 2.0 and passed.reason == "" and passed.rtol == 1e-3
    assert "3x the tolerance" in mismatch.reason and "torch native: 0.01" in mismatch.reason
    assert skipped.reason == "flag_gems 5.0.2 has no silu_and_mul()"
    assert raised.reason.startswith("raised RuntimeError: CUDA error") and "Traceback" in raised.detail
    assert raised.rtol == 0.0  # topk is exact


def test_nan_error_fails_and_torch_outside_tolerance_is_noted():
    spec = CaseSpec("add", "bfloat16", shape(T=4, H=8))
    assert judge(spec, Measurement(gems_err=float("nan"), gems_score=float("nan"))).status == "failed"
    r = judge(spec, Measurement(gems_err=0.0, gems_score=0.0, torch_err=1.0, torch_score=4.0))
    assert r.status == "passed" and r.notes == ["torch native is also outside the tolerance (4x)"]


def test_no_device_skips_every_case_with_the_reason():
    called = []
    results = run_cases(_specs(), called.append, skip_reason=f"flag_gems does not import (RuntimeError: {NO_DEVICE})")
    assert not called
    assert {r.status for r in results} == {"skipped"}
    assert all(NO_DEVICE in r.reason for r in results)


def test_budget_skips_the_cases_left():
    ticks = iter([0.0, 0.0, 1.0, 1.0, 50.0, 50.0, 60.0, 60.0, 61.0])
    results = run_cases(_specs(), lambda s: Measurement(gems_err=0.0, gems_score=0.0), budget_s=30,
                        clock=lambda: next(ticks))
    assert [r.status for r in results] == ["passed", "passed", "skipped", "skipped"]
    assert results[2].reason == "time budget of 30s spent before this case"


def test_probe_reports_why_nothing_can_run():
    def no_torch(name: str):
        raise ModuleNotFoundError("No module named 'torch'")

    env = probe(no_torch)
    assert env.torch is None
    assert env.skip_reason == "torch does not import (ModuleNotFoundError: No module named 'torch')"

    fake_torch = SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None))

    def no_device(name: str):
        if name == "torch":
            return fake_torch
        if name == "triton":
            return SimpleNamespace(__version__="3.6.0")
        raise RuntimeError(NO_DEVICE + " \n Please check that your driver is complete. ")

    env = probe(no_device)
    assert env.gems is None and env.info["torch"] == "2.13.0+cpu" and env.info["triton"] == "3.6.0"
    assert env.skip_reason == ("flag_gems does not import (RuntimeError: No device were detected on your machine ! "
                               "Please check that your driver is complete.)")


def test_gems_log_capture_sees_arch_loggers_and_prints_nothing(tmp_path, monkeypatch, capsys):
    gems_dir = tmp_path / "flag_gems"
    arch = SimpleNamespace(__file__=str(gems_dir / "runtime" / "backend" / "_nvidia" / "hopper" / "__init__.py"))
    monkeypatch.setitem(sys.modules, "hopper", arch)
    monkeypatch.setitem(sys.modules, "unrelated", SimpleNamespace(__file__=str(tmp_path / "unrelated.py")))
    names = gems_logger_names(SimpleNamespace(__file__=str(gems_dir / "__init__.py")))
    assert names == ["flag_gems", "hopper"]
    root = logging.getLogger()
    stream = logging.StreamHandler(sys.stderr)
    root.addHandler(stream)
    try:
        with capture_gems_log(names) as log:
            logging.getLogger("hopper.ops.mul").debug("GEMS MUL")
            logging.getLogger("flag_gems.ops.add").debug("GEMS ADD")
            logging.getLogger("flag_gems.ops.add").debug("not a kernel")
            logging.getLogger("elsewhere").warning("GEMS elsewhere")
    finally:
        root.removeHandler(stream)
    assert log.messages == ["GEMS MUL", "GEMS ADD"]
    assert "GEMS MUL" not in capsys.readouterr().err
    assert logging.getLogger("hopper").level == logging.NOTSET and logging.getLogger("hopper").propagate
    assert not logging.getLogger("flag_gems.ops.add").isEnabledFor(logging.DEBUG)


# --- verdict, junit, summary, table --------------------------------------------------------------------------

def _results() -> list[CaseResult]:
    return [
        CaseResult("mm", "float16", "M4 N4 K64", "passed", rtol=1e-3, atol=8e-5, gems_err=1e-3, torch_err=1e-3,
                   gems_score=0.2, torch_score=0.2, torch_ms=2.0, gems_ms=1.0, duration_s=1.5),
        CaseResult("mm", "float16", "M1 N4 K64", "passed", gems_score=0.1, torch_ms=1.0, gems_ms=2.0,
                   duration_s=0.5),
        CaseResult("mm", "bfloat16", "M4 N4 K64", "failed", "max |gems - ref| = 9 is 3x the tolerance",
                   detail="details <&>", gems_score=3.0, gems_err=9.0, duration_s=0.25),
        CaseResult("softmax", "float32", "B2 V8", "skipped", "flag_gems 5.0.2 registers no kernel for aten::x"),
        CaseResult("softmax", "float16", "B2 V8", "failed", "raised RuntimeError: boom"),
    ]


def test_verdict_rules():
    rs = _results()
    assert report.verdict(rs, "cpu") == report.Verdict(False, "2 of 5 case(s) failed")
    ok = [r for r in rs if r.status != "failed"]
    assert report.verdict(ok, "nvidia").ok
    skipped = [CaseResult("add", "float16", "T4", "skipped", "no device")] * 3
    assert report.verdict(skipped, "cpu").ok
    assert "nothing was tested" in report.verdict(skipped, "cpu").message
    for vendor in ("nvidia", "ascend"):
        v = report.verdict(skipped, vendor)
        assert not v.ok and v.message.startswith(f"no case passed on a GPU vendor ({vendor})")
        assert "no device" in v.message


def test_junit_is_well_formed_with_the_right_counts():
    rs = _results()
    root = ET.fromstring(report.junit_xml(rs, {"torch": "2.11.0", "device_name": "NVIDIA H100"}))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("5", "2", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["mm", "softmax"]
    mm = suites["mm"]
    assert (mm.get("tests"), mm.get("failures"), mm.get("skipped"), mm.get("time")) == ("3", "1", "0", "2.250")
    assert {p.get("name"): p.get("value") for p in mm.find("properties")}["device_name"] == "NVIDIA H100"
    cases = mm.findall("testcase")
    assert [c.get("name") for c in cases] == ["float16-M4 N4 K64", "float16-M1 N4 K64", "bfloat16-M4 N4 K64"]
    assert cases[0].get("classname") == "optests.mm" and cases[0].get("time") == "1.500"
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    failure = cases[2].find("failure")
    assert failure.get("message").startswith("max |gems - ref| = 9") and failure.get("type") == "mismatch"
    assert failure.text == "details <&>"
    sm = suites["softmax"].findall("testcase")
    assert sm[0].find("skipped").get("message") == "flag_gems 5.0.2 registers no kernel for aten::x"
    assert sm[1].find("failure").get("type") == "error"


def test_summary_round_trips_and_keeps_inf_as_text(tmp_path):
    rs = _results()
    rs[2].gems_score = math.inf
    path = report.write_summary(tmp_path / "summary.json", rs, {"torch": "2.11.0"}, "nvidia")
    data = json.loads(path.read_text())
    assert data["counts"] == {"passed": 2, "failed": 2, "skipped": 1, "total": 5}
    assert data["ok"] is False and data["complete"] is True and data["vendor"] == "nvidia"
    assert data["speed_ratio_geomean"] == pytest.approx(1.0)  # geomean of 2.0 and 0.5
    first = data["cases"][0]
    assert first["case"] == "mm[float16,M4 N4 K64]" and first["ratio"] == 2.0 and "detail" not in first
    assert {"op", "dtype", "shape", "status", "reason", "gems_err", "torch_err", "rtol", "atol", "torch_ms",
            "gems_ms"} <= set(first)
    assert data["cases"][2]["gems_score"] == "inf"
    back = report.load_results(data)
    assert [r.case_id for r in back] == [r.case_id for r in rs] and back[2].gems_score == math.inf


def test_table_counts_per_op_and_dtype():
    lines = report.table(_results()).splitlines()
    assert lines[0].split()[:5] == ["op", "dtype", "pass", "fail", "skip"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:-2]}
    assert list(rows) == [("mm", "float16"), ("mm", "bfloat16"), ("softmax", "float32"), ("softmax", "float16")]
    mm16 = rows[("mm", "float16")]
    assert mm16[2:5] == ["2", "0", "0"]
    assert mm16[5:9] == ["3.0000", "3.0000", "1.00", "-"]  # ms summed over shapes, ratio: geomean of 2 and 0.5
    assert rows[("mm", "bfloat16")][2:5] == ["0", "1", "0"]
    assert rows[("softmax", "float32")][2:5] == ["0", "0", "1"] and "registers" in lines[4]
    assert lines[-2].startswith("total: 2 passed, 2 failed, 1 skipped of 5")


# --- the module run for real, in this interpreter -------------------------------------------------------------

def _no_device_gems(tmp_path: Path) -> Path:
    """A flag_gems that fails to import the way the real one does on a CPU-only machine."""
    pkg = tmp_path / "nodevice" / "flag_gems"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise RuntimeError({NO_DEVICE + ' ' + chr(10) + ' Please check.'!r})\n")
    return pkg.parent


def _run_module(out: Path, *args: str, pythonpath: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    paths = [str(pythonpath)] if pythonpath else []
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, str(PROJECT_ROOT)]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "tools.optests", "--out", str(out), *args],
                          capture_output=True, text=True, env=full_env, cwd=PROJECT_ROOT, timeout=600)


@pytest.mark.parametrize(("vendor", "code"), [("cpu", 0), ("nvidia", 1)])
def test_cpu_machine_run_skips_everything(tmp_path, vendor, code):
    proc = _run_module(tmp_path / "out", "--vendor", vendor, "--ops", "mm,softmax", "add",
                       "--dtypes", "float32", pythonpath=_no_device_gems(tmp_path))
    assert proc.returncode == code, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["counts"] == {"passed": 0, "failed": 0, "skipped": 4, "total": 4}
    reason = data["environment"]["skip_reason"]
    # torch missing (the project's own venv) or flag_gems' real no-device error (an env with torch)
    assert reason.startswith("torch does not import") or NO_DEVICE in reason
    assert all(c["reason"] == reason and c["status"] == "skipped" for c in data["cases"])
    assert f"every case is skipped: {reason}" in proc.stdout
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("skipped") == "4" and len(root.iter("skipped").__next__().get("message")) > 10
    if vendor == "nvidia":
        assert "verdict: FAILED: no case passed on a GPU vendor (nvidia)" in proc.stdout
    else:
        assert "verdict: OK: all 4 case(s) skipped on vendor cpu" in proc.stdout
    assert (tmp_path / "out" / "table.txt").read_text().count("\n") >= 7


def test_unknown_op_is_a_usage_error(tmp_path):
    proc = _run_module(tmp_path / "out", "--ops", "conv9d")
    assert proc.returncode == 2 and "unknown op conv9d" in proc.stderr


# --- the real torch side, against a fake flag_gems on the CPU ---------------------------------------------------

FAKE_GEMS = '''
"""A stand-in for flag_gems on the CPU: its entry points, torch underneath, env knobs to break ops."""
import logging
import os

import torch
import torch.nn.functional as F

__version__ = "0.0.0+fake"
device = "cpu"
vendor_name = "fake"
_log = logging.getLogger("flag_gems.ops.fake")

# like FlagGems' arch ops (runtime/backend/_nvidia/hopper imported as top-level 'hopper'): mul logs outside
# the flag_gems logger tree
import importlib
import sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_arch"))
_arch_log = logging.getLogger(importlib.import_module("fakearch").__name__ + ".ops.mul")
sys.path.pop(0)


def _knob(name):
    return set(filter(None, os.environ.get(name, "").split(",")))


BREAK, SILENT, MISSING, RAISE = (_knob(k) for k in ("FAKE_BREAK", "FAKE_SILENT", "FAKE_MISSING", "FAKE_RAISE"))
TARGETS = {"rms_norm": (F, "rms_norm", "rms_norm"), "layer_norm": (F, "layer_norm", "native_layer_norm"),
           "silu": (F, "silu", "silu"), "gelu": (F, "gelu", "gelu"), "softmax": (torch, "softmax", "_softmax"),
           "log_softmax": (torch, "log_softmax", "_log_softmax"), "mm": (torch, "mm", "mm"),
           "addmm": (torch, "addmm", "addmm"), "bmm": (torch, "bmm", "bmm"),
           "embedding": (F, "embedding", "embedding"), "add": (torch, "add", "add.Tensor"),
           "mul": (torch, "mul", "mul.Tensor"), "argmax": (torch, "argmax", "argmax"),
           "topk": (torch, "topk", "topk"), "sort": (torch, "sort", "sort"), "cumsum": (torch, "cumsum", "cumsum")}


def _named(name):
    def fn(*args, **kwargs):
        raise AssertionError("registry entry, not called")
    fn.__name__ = name
    return fn


_FULL_CONFIG = tuple((aten, _named(n)) for n, (_, _, aten) in TARGETS.items() if n not in MISSING)


def _out(name, out):
    if name in RAISE:
        raise RuntimeError(f"fake kernel {name} failed")
    if name not in BREAK:
        return out
    if isinstance(out, tuple):
        return tuple(_out(name, o) for o in out)
    return out * 1.05 if out.is_floating_point() else torch.zeros_like(out)


def _wrap(name, orig):
    def fn(*args, **kwargs):
        if name not in SILENT:
            (_arch_log if name == "mul" else _log).debug("GEMS %s", name.upper())
        return _out(name, orig(*args, **kwargs))
    return fn


class use_gems:
    def __init__(self, exclude=None, include=None):
        self.include = list(include or TARGETS)

    def __enter__(self):
        self.saved = [(TARGETS[n][0], TARGETS[n][1]) for n in self.include]
        self.saved = [(mod, attr, getattr(mod, attr)) for mod, attr in self.saved]
        for name, (mod, attr, orig) in zip(self.include, self.saved):
            setattr(mod, attr, _wrap(name, orig))

    def __exit__(self, *exc):
        for mod, attr, orig in reversed(self.saved):
            setattr(mod, attr, orig)


def _fused(name, fn):
    def wrapper(*args, **kwargs):
        _log.debug("GEMS %s", name.upper())
        return _out(name, fn(*args, **kwargs))
    wrapper.__name__ = name
    return wrapper


def rms_norm(x, normalized_shape, weight, eps=1e-5):  # flag_gems.rms_norm, called without dispatch
    _log.debug("GEMS RMS_NORM")
    return (F.rms_norm(x.float(), normalized_shape, weight.float(), eps)).to(x.dtype)


def _silu_and_mul(a, b):
    return (F.silu(a.float()) * b.float()).to(a.dtype)


def _gelu_and_mul(a, b, approximate="none"):
    return (F.gelu(a.float(), approximate=approximate) * b.float()).to(a.dtype)


def _fused_add_rms_norm(x, residual, normalized_shape, weight, eps=1e-5):
    r = x.float() + residual.float()
    y = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    x.copy_(y)
    residual.copy_(r)
    return x, residual


def _apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, rotary_interleaved=False, inplace=False):
    c, s = cos[position_ids].float().unsqueeze(-2), sin[position_ids].float().unsqueeze(-2)
    def rot(x):
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
    return rot(q), rot(k)


for _name, _fn in (("silu_and_mul", _silu_and_mul), ("gelu_and_mul", _gelu_and_mul),
                   ("fused_add_rms_norm", _fused_add_rms_norm), ("apply_rotary_pos_emb", _apply_rotary_pos_emb)):
    if _name not in MISSING:
        globals()[_name] = _fused(_name, _fn)
'''


def _fake_gems(tmp_path: Path) -> Path:
    pkg = tmp_path / "fake" / "flag_gems"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FAKE_GEMS))
    (pkg / "_arch" / "fakearch").mkdir(parents=True)
    (pkg / "_arch" / "fakearch" / "__init__.py").write_text("")
    return pkg.parent


@needs_torch
def test_every_op_passes_against_a_correct_gems_on_cpu(tmp_path):
    proc = _run_module(tmp_path / "out", "--small", "--vendor", "nvidia", "--reps", "2", "--warmup", "1",
                       pythonpath=_fake_gems(tmp_path))
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    bad = [(c["case"], c["reason"]) for c in data["cases"] if c["status"] != "passed"]
    assert not bad and proc.returncode == 0, (bad, proc.stdout[-3000:], proc.stderr[-3000:])
    assert data["counts"]["passed"] == len(select(small=True))
    assert data["environment"]["flag_gems"] == "0.0.0+fake"
    for case in data["cases"]:
        assert case["gems_ms"] > 0 and case["torch_ms"] > 0 and case["gems_score"] <= 1.0
        assert case["rtol"] == (0.0 if CATALOG[case["op"]].exact else TOLERANCES[case["dtype"]].rtol)


@needs_torch
def test_broken_missing_silent_and_raising_gems_ops_on_cpu(tmp_path):
    knobs = {"FAKE_BREAK": "mm,argmax,topk,silu_and_mul", "FAKE_MISSING": "gelu_and_mul,cumsum",
             "FAKE_SILENT": "add,rms_norm", "FAKE_RAISE": "bmm"}
    proc = _run_module(tmp_path / "out", "--small", "--vendor", "nvidia", "--reps", "1", "--warmup", "0",
                       "--dtypes", "bfloat16", "float32", pythonpath=_fake_gems(tmp_path), env=knobs)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {(c["op"], c["dtype"]): c for c in data["cases"]}
    for dtype in ("bfloat16", "float32"):
        for op in ("mm", "silu_and_mul"):  # 5% off: beyond even bfloat16's 1.6e-2 rtol
            case = status[(op, dtype)]
            assert case["status"] == "failed" and "the tolerance" in case["reason"], case
            assert case["torch_score"] <= 1.0
        for op in ("argmax", "topk"):  # index results are checked by what they select
            assert status[(op, dtype)]["status"] == "failed" and status[(op, dtype)]["gems_score"] == "inf"
        assert status[("gelu_and_mul", dtype)]["reason"] == "flag_gems 0.0.0+fake has no gelu_and_mul()"
        assert status[("cumsum", dtype)]["reason"] == "flag_gems 0.0.0+fake registers no kernel for aten::cumsum"
        assert status[("add", dtype)]["status"] == "skipped"
        assert status[("add", dtype)]["reason"].startswith("no FlagGems kernel ran for aten::add.Tensor")
        assert status[("bmm", dtype)]["reason"] == "raised RuntimeError: fake kernel bmm failed"
        for op in ("rms_norm", "rotary_embedding", "softmax", "embedding", "sort", "fused_add_rms_norm", "mul"):
            assert status[(op, dtype)]["status"] == "passed", status[(op, dtype)]
        # aten::rms_norm did not reach FlagGems (silent), so its own function was called, and that is said
        assert status[("rms_norm", dtype)]["notes"] == [
            "aten::rms_norm under use_gems(include=['rms_norm']) ran no FlagGems kernel: "
            "called flag_gems.rms_norm() directly"]
    assert "verdict: FAILED" in proc.stdout
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert int(root.get("failures")) == 2 * 5 and int(root.get("skipped")) == 2 * 3


# --- the op-tests command -----------------------------------------------------------------------------------

def test_suite_args_and_host_argv():
    args = optests_cli.suite_args("/o", "nvidia", ["mm", "add"], ["bfloat16"], budget_s=300)
    assert args == ["--out", "/o", "--vendor", "nvidia", "--ops", "mm", "add", "--dtypes", "bfloat16",
                    "--budget-s", "300"]
    assert optests_cli.suite_args("/o", "cpu", [], []) == ["--out", "/o", "--vendor", "cpu"]
    assert optests_cli.host_argv("/usr/bin/python3", args)[:3] == ["/usr/bin/python3", "-m", "tools.optests"]


def test_docker_argv_mounts_the_package_read_only_with_vendor_flags(tmp_path):
    flags = optests_cli.vendor_flags("nvidia", shm_size="1g")
    assert flags[:2] == ["--gpus", "all"] and "--ipc=host" in flags and "--shm-size=1g" in flags
    argv = optests_cli.docker_argv("img:1", "flagrel-optests-ab12", tmp_path, ["--out", "/x"], flags)
    assert argv[:5] == ["docker", "run", "--rm", "--name", "flagrel-optests-ab12"]
    assert argv[argv.index("--network") + 1] == "host"
    assert f"{optests_cli.PACKAGE_DIR}:/opt/flagrelease/optests:ro" in argv
    assert f"{tmp_path}:{optests_cli.CONTAINER_OUT}" in argv
    assert "PYTHONPATH=/opt/flagrelease" in argv
    assert argv[-6:] == ["python3", "img:1", "-m", "optests", "--out", "/x"]
    assert argv[argv.index("--entrypoint") + 1] == "python3"
    assert (optests_cli.PACKAGE_DIR / "__main__.py").is_file()
    assert optests_cli.vendor_flags("cpu") == []


def test_ascend_passes_only_devices_this_host_has(monkeypatch):
    import glob

    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/davinci0", "/dev/davinci1"])
    present = {"/dev/davinci0", "/dev/davinci_manager", "/dev/hisi_hdc"}
    flags = optests_cli.vendor_flags("ascend", exists=present.__contains__)
    devices = [flags[i + 1] for i, f in enumerate(flags) if f == "--device"]
    assert devices == ["/dev/davinci0", "/dev/davinci_manager", "/dev/hisi_hdc"]


def test_container_is_removed_even_when_the_run_is_interrupted(tmp_path, monkeypatch, build_dir):
    recipe, _ = load_recipe("robobrain2-7b-fp8dynamic-nvidia")
    calls: list[list[str]] = []
    monkeypatch.setattr("tools.mech.docker.image_id", lambda ref: "sha256:" + "ab" * 32)

    def interrupted(cmd, log, **kwargs):
        calls.append(list(cmd))
        raise KeyboardInterrupt

    monkeypatch.setattr("tools.mech.console.run_logged", interrupted)
    monkeypatch.setattr("tools.mech.docker._shielded", lambda args, timeout=60: calls.append(["docker", *args]) or 0)
    with pytest.raises(KeyboardInterrupt):
        optests_cli.run_op_tests(recipe, image="img:1", out=tmp_path / "o")
    run, rm = calls
    name = run[run.index("--name") + 1]
    assert name.startswith("flagrel-optests-") and rm == ["docker", "rm", "-f", "-v", name]
    assert run[run.index("--gpus") + 1] == "all"
    suite = run[run.index("optests") + 1:]
    assert suite[:4] == ["--out", optests_cli.CONTAINER_OUT, "--vendor", "nvidia"]
    assert suite[suite.index("--dtypes") + 1:] == ["float16", "bfloat16", "float32"]  # from the recipe


def test_image_run_without_summary_is_a_clear_error_and_is_stored(tmp_path, monkeypatch, build_dir):
    from tools.mech.console import RunResult
    from tools.stages import results

    recipe, _ = load_recipe("tiny-cpu")
    monkeypatch.setattr("tools.mech.docker.image_id", lambda ref: "sha256:" + "cd" * 32)
    monkeypatch.setattr("tools.mech.console.run_logged",
                        lambda cmd, log, **kw: RunResult(127, ["python3: not found"], log))
    monkeypatch.setattr("tools.mech.docker._shielded", lambda args, timeout=60: 0)
    with pytest.raises(UserError, match="wrote no summary"):
        optests_cli.run_op_tests(recipe, image="img:1", out=tmp_path / "o")
    stored = results.load("sha256:" + "cd" * 32, "op-tests")
    assert stored is not None and stored.passed is False


@pytest.mark.parametrize(("recipe_name", "code"), [("tiny-cpu", 0), ("robobrain2-7b-fp8dynamic-nvidia", 1)])
def test_host_command_end_to_end(tmp_path, build_dir, recipe_name, code, capsys, monkeypatch):
    """--host in this interpreter: on a machine without a GPU every case is skipped; green only for cpu."""
    import argparse

    monkeypatch.setenv("PYTHONPATH", str(_no_device_gems(tmp_path)))
    parser = argparse.ArgumentParser()
    op_tests_command.configure("op-tests", parser)
    args = parser.parse_args([recipe_name, "--host", "--out", str(tmp_path / "o"), "--ops", "add", "softmax"])
    assert op_tests_command.command("op-tests", args) == code
    data = json.loads((tmp_path / "o" / "summary.json").read_text())
    recipe, _ = load_recipe(recipe_name)
    assert data["vendor"] == recipe.vendor
    assert {c["dtype"] for c in data["cases"]} == set(recipe.tests.op_tests.dtypes)
    assert data["counts"]["skipped"] == data["counts"]["total"] == 2 * len(recipe.tests.op_tests.dtypes)
    assert (tmp_path / "o" / "junit.xml").is_file()


def test_python_needs_host():
    import argparse

    parser = argparse.ArgumentParser()
    op_tests_command.configure("op-tests", parser)
    with pytest.raises(UserError, match="--python only applies with --host"):
        op_tests_command.command("op-tests", parser.parse_args(["tiny-cpu", "--python", "/usr/bin/python3"]))
