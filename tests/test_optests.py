"""The operator suite (tools/optests: FlagGems and vLLM's CPU kernels) and its `op-tests` command.

Most tests need no torch: the runner's loop takes an injected executor, and the reports are plain data.
Tests marked with `needs_torch` run the real torch side and float64 references of every op on the CPU,
against a fake flag_gems and a fake vLLM (the same entry points: flag_gems' functions, vLLM's
torch.ops._C schemas, torch underneath, knobs to break single ops). torch is in the [test] extras, so
they run in CI; they skip only where torch is absent.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
from optests_fakes import FAKE_VLLM, NO_DEVICE, fake_gems, no_device_gems, run_module

from tools import PROJECT_ROOT
from tools.cli import optests as op_tests_command
from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.optests import report
from tools.optests.cases import CATALOG, CaseSpec, OpDef, UnknownName, select, shape
from tools.optests.report import CaseResult
from tools.optests.runner import (
    Measurement,
    Skip,
    capture_gems_log,
    dispatch,
    gems_logger_names,
    judge,
    probe,
    run_cases,
)
from tools.optests.tolerances import EXACT, TOLERANCES, Tolerance, score, tolerance_for, within
from tools.stages import op_tests as optests_cli

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


# --- torch on the host ------------------------------------------------------------------------------------

def test_the_test_extras_pin_the_cpu_vendors_torch():
    """The numerics below need torch: the [test] extras carry the cpu vendor's pin (its +cpu build lies in
    the machines' local wheel folder), so CI's venv has it."""
    import tomllib

    from tools.core.lock import load_lock

    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [req for req in extras["test"] if req.startswith("torch")]
    locked = str(load_lock().lock.vendors["cpu"].torch)  # type: ignore[index]
    assert pin == f"torch=={locked.split('+')[0]}"


@pytest.mark.skipif(not (os.environ.get("CI") or ".nox" in sys.prefix),
                    reason="outside CI and the nox venv, torch may be missing and the numerics tests skip")
def test_ci_runs_the_numerics():
    """In CI (and in the nox venv, built from the [test] extras) the needs_torch tests must not skip."""
    assert importlib.util.find_spec("torch") is not None, "torch is missing: pip install -e '.[test]'"


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
        assert sum(map(bool, (op.aten, op.fused, op.vllm))) == 1
        assert op.backend == ("vllm" if op.name.startswith("vllm_") else "flag_gems")
        if op.reduce:
            assert all(op.reduce in dict(s) for s in op.shapes + op.small)
    with pytest.raises(ValueError, match="exactly one of aten / fused / vllm"):
        OpDef("x", "both", (), (), aten=("mm",), vllm=("onednn_mm",))


def test_catalog_covers_the_kernels_the_cpu_engine_dispatches_for_a_llama():
    """vLLM 0.32.0 cpu, x86, a Llama: rotary (forward_cpu), linear layers (oneDNN), attention (CPU
    backend), greedy sampling run vLLM's kernels; norms and gated activations take the native torch path
    there, and their exposed kernels are tested too, marked engine=False."""
    vllm = {name: op for name, op in CATALOG.items() if op.backend == "vllm"}
    kernels = {k for op in vllm.values() for k in op.vllm}
    assert {"rms_norm", "fused_add_rms_norm", "silu_and_mul", "gelu_and_mul", "rotary_embedding",
            "create_onednn_mm_handler", "onednn_mm", "cpu_attn_reshape_and_cache", "get_scheduler_metadata",
            "cpu_attention_with_kv_cache", "greedy_argmax"} == kernels
    dispatched = {name for name, op in vllm.items() if op.engine}
    assert dispatched == {"vllm_rotary_embedding", "vllm_onednn_mm", "vllm_attention", "vllm_greedy_argmax"}
    # prefill, chunked prefill (context before the queries) and decode, across KV blocks
    attn = [dict(s) for s in vllm["vllm_attention"].shapes]
    assert {a["Q"] == a["S"] for a in attn} == {True, False} and any(a["Q"] == 1 for a in attn)
    assert any(a["S"] > a["BS"] for a in attn) and all(a["Hq"] > a["Hk"] for a in attn)
    assert [s.dtype for s in select(["vllm_greedy_argmax"])] == ["float32"]  # the sampler's logits


def test_select_filters_ops_and_dtypes_in_catalog_order():
    every = select()
    assert len(every) == sum(len(op.shapes) * len(op.dtypes or TOLERANCES) for op in CATALOG.values())
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
    assert select(["vllm_greedy_argmax"], ["bfloat16"]) == []  # an op used in one dtype only


def test_list_needs_no_torch(tmp_path):
    """--list imports neither torch nor vLLM nor flag_gems: the host CLI lists the suite anywhere."""
    code = ("import sys; from tools.optests.main import main; rc = main(['--list', '--out', 'x']); "
            "assert not {'torch', 'vllm', 'flag_gems'} & set(sys.modules), sorted(sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "vllm_attention[bfloat16,B4 Q1 S320 Hq32 Hk8 D128 BS128]" in proc.stdout.splitlines()
    assert len(proc.stdout.splitlines()) == len(select())


# --- the loop: statuses from an injected executor ----------------------------------------------------------

def _specs() -> list[CaseSpec]:
    return [CaseSpec("add", "float16", shape(T=4, H=8)), CaseSpec("mm", "bfloat16", shape(M=4, N=4, K=64)),
            CaseSpec("silu_and_mul", "float32", shape(T=4, I=8)), CaseSpec("topk", "float16", shape(B=2, V=300))]


def test_run_cases_gives_pass_fail_skip_and_never_raises():
    def execute(spec: CaseSpec) -> Measurement:
        if spec.op == "add":
            return Measurement(kernel_err=1e-4, kernel_score=0.5, torch_err=2e-4, torch_score=0.9,
                               torch_ms=2.0, kernel_ms=1.0)
        if spec.op == "mm":
            return Measurement(kernel_err=0.5, kernel_score=3.0, torch_err=0.01, torch_score=0.1)
        if spec.op == "silu_and_mul":
            raise Skip("flag_gems 5.0.2 has no silu_and_mul()")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    seen: list[str] = []
    results = run_cases(_specs(), execute, on_result=lambda i, r: seen.append(f"{i}:{r.status}"))
    assert [r.status for r in results] == ["passed", "failed", "skipped", "failed"]
    assert seen == ["0:passed", "1:failed", "2:skipped", "3:failed"]
    passed, mismatch, skipped, raised = results
    assert passed.ratio == 2.0 and passed.reason == "" and passed.rtol == 1e-3
    assert mismatch.reason.startswith("max |gems - ref| = 0.5 is 3x the tolerance")
    assert "torch native: 0.01" in mismatch.reason and {r.backend for r in results} == {"flag_gems"}
    assert skipped.reason == "flag_gems 5.0.2 has no silu_and_mul()"
    assert raised.reason.startswith("raised RuntimeError: CUDA error") and "Traceback" in raised.detail
    assert raised.rtol == 0.0  # topk is exact


def test_nan_error_fails_and_torch_outside_tolerance_is_noted():
    spec = CaseSpec("add", "bfloat16", shape(T=4, H=8))
    assert judge(spec, Measurement(kernel_err=float("nan"), kernel_score=float("nan"))).status == "failed"
    r = judge(spec, Measurement(kernel_err=0.0, kernel_score=0.0, torch_err=1.0, torch_score=4.0))
    assert r.status == "passed" and r.notes == ["torch native is also outside the tolerance (4x)"]


def test_no_torch_skips_every_case_with_the_reason():
    called = []
    results = run_cases(_specs(), called.append, skip_reason="torch does not import (ModuleNotFoundError: torch)")
    assert not called
    assert {r.status for r in results} == {"skipped"}
    assert all(r.reason == "torch does not import (ModuleNotFoundError: torch)" for r in results)


def test_dispatch_runs_each_backend_and_skips_the_one_without_a_device():
    """On a cpu image: FlagGems has no device, vLLM's kernels run; the vLLM failure is named as such."""
    no_device = f"flag_gems does not import (RuntimeError: {NO_DEVICE})"
    ran: list[str] = []

    def vllm(spec: CaseSpec) -> Measurement:
        ran.append(spec.op)
        score = 2.0 if spec.op == "vllm_onednn_mm" else 0.5
        return Measurement(kernel_err=score / 10, kernel_score=score, torch_ms=1.0, kernel_ms=0.5)

    specs = [*_specs(), CaseSpec("vllm_rms_norm", "bfloat16", shape(T=4, H=64)),
             CaseSpec("vllm_onednn_mm", "float32", shape(M=2, N=8, K=64))]
    results = run_cases(specs, dispatch({"vllm": vllm}, {"flag_gems": no_device}))
    assert ran == ["vllm_rms_norm", "vllm_onednn_mm"]
    assert [(r.backend, r.status) for r in results] == [("flag_gems", "skipped")] * 4 + [
        ("vllm", "passed"), ("vllm", "failed")]
    assert all(r.reason == no_device for r in results[:4])
    assert results[5].reason.startswith("max |vllm - ref| = 0.2 is 2x the tolerance")
    assert report.counts_by_backend(results) == {
        "vllm": {"passed": 1, "failed": 1, "skipped": 0, "total": 2},
        "flag_gems": {"passed": 0, "failed": 0, "skipped": 4, "total": 4}}
    with pytest.raises(Skip, match="no executor for backend vllm"):
        dispatch({}, {})(specs[-1])


def test_budget_skips_the_cases_left():
    ticks = iter([0.0, 0.0, 1.0, 1.0, 50.0, 50.0, 60.0, 60.0, 61.0])
    results = run_cases(_specs(), lambda s: Measurement(kernel_err=0.0, kernel_score=0.0), budget_s=30,
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
    assert env.gems is None and env.vllm is None and env.skip_reason is None
    assert env.info["torch"] == "2.13.0+cpu" and env.info["triton"] == "3.6.0"
    assert env.backend_skips["flag_gems"] == (
        "flag_gems does not import (RuntimeError: No device were detected on your machine ! "
        "Please check that your driver is complete.)")
    assert env.backend_skips["vllm"].startswith("vLLM's kernels do not import (RuntimeError: No device")
    assert env.info["skip_reasons"] == env.backend_skips


def test_probe_takes_vllm_kernels_only_on_its_cpu_platform():
    def importer(device_type: str):
        modules = {"torch": SimpleNamespace(__version__="2.13.0+cpu", version=SimpleNamespace(cuda=None)),
                   "vllm": SimpleNamespace(__version__="0.32.0"), "vllm._custom_ops": SimpleNamespace(),
                   "vllm.platforms": SimpleNamespace(current_platform=SimpleNamespace(device_type=device_type))}

        def imp(name: str):
            if name not in modules:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return modules[name]
        return imp

    env = probe(importer("cpu"))
    assert env.vllm.__version__ == "0.32.0" and "vllm" not in env.backend_skips
    assert env.info["vllm"] == "0.32.0" and env.info["vllm_platform"] == "cpu"
    assert env.backend_skips["flag_gems"] == ("flag_gems does not import "
                                              "(ModuleNotFoundError: No module named 'flag_gems')")
    env = probe(importer("cuda"))
    assert env.vllm is None
    assert env.backend_skips["vllm"].startswith("vLLM's platform here is cuda: the vllm_* cases cover its cpu kernels")
    # a run with vLLM cases only imports no flag_gems (on a GPU that import initialises the device)
    asked: list[str] = []

    def recording(name: str):
        asked.append(name)
        return importer("cpu")(name)

    env = probe(recording, backends={"vllm"})
    assert "flag_gems" not in asked and "vllm._custom_ops" in asked and env.backend_skips == {}


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
        CaseResult("mm", "float16", "M4 N4 K64", "passed", rtol=1e-3, atol=8e-5, kernel_err=1e-3, torch_err=1e-3,
                   kernel_score=0.2, torch_score=0.2, torch_ms=2.0, kernel_ms=1.0, duration_s=1.5),
        CaseResult("mm", "float16", "M1 N4 K64", "passed", kernel_score=0.1, torch_ms=1.0, kernel_ms=2.0,
                   duration_s=0.5),
        CaseResult("mm", "bfloat16", "M4 N4 K64", "failed", "max |gems - ref| = 9 is 3x the tolerance",
                   detail="details <&>", kernel_score=3.0, kernel_err=9.0, duration_s=0.25),
        CaseResult("softmax", "float32", "B2 V8", "skipped", "flag_gems 5.0.2 registers no kernel for aten::x"),
        CaseResult("softmax", "float16", "B2 V8", "failed", "raised RuntimeError: boom"),
    ]


def test_verdict_rules():
    rs = _results()
    assert report.verdict(rs) == report.Verdict(False, "2 of 5 case(s) failed: FlagGems 2/5 passed, 2 failed, "
                                                       "1 skipped (flag_gems 5.0.2 registers no kernel for aten::x)")
    ok = [r for r in rs if r.status != "failed"]
    assert report.verdict(ok).ok
    # nothing ran is no pass, whatever the vendor (the verdict no longer takes one)
    skipped = [CaseResult("add", "float16", "T4", "skipped", "no device")] * 3
    v = report.verdict(skipped)
    assert not v.ok
    assert v.message == "nothing was tested: all 3 case(s) skipped: FlagGems 0/3 passed, 3 skipped (no device)"
    assert report.verdict([]) == report.Verdict(False, "nothing was tested: no case selected")
    # a cpu image: FlagGems skipped (no device), vLLM's kernels passed
    cpu = skipped + [CaseResult("vllm_rms_norm", "float32", "T4 H8", "passed", backend="vllm")] * 2
    assert report.verdict(cpu) == report.Verdict(
        True, "2 passed, 3 skipped of 5: vLLM kernels 2/2 passed; FlagGems 0/3 passed, 3 skipped (no device)")


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
    assert cases[0].get("classname") == "optests.flag_gems.mm" and cases[0].get("time") == "1.500"
    assert cases[0].find("system-out").text.startswith("backend=flag_gems kernel_ms=1 torch_ms=2 ratio=2")
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    failure = cases[2].find("failure")
    assert failure.get("message").startswith("max |gems - ref| = 9") and failure.get("type") == "mismatch"
    assert failure.text == "details <&>"
    sm = suites["softmax"].findall("testcase")
    assert sm[0].find("skipped").get("message") == "flag_gems 5.0.2 registers no kernel for aten::x"
    assert sm[1].find("failure").get("type") == "error"


def test_summary_round_trips_and_keeps_inf_as_text(tmp_path):
    rs = _results()
    rs[2].kernel_score = math.inf
    path = report.write_summary(tmp_path / "summary.json", rs, {"torch": "2.11.0"}, "nvidia")
    data = json.loads(path.read_text())
    assert data["counts"] == {"passed": 2, "failed": 2, "skipped": 1, "total": 5}
    assert data["ok"] is False and data["complete"] is True and data["vendor"] == "nvidia"
    assert data["speed_ratio_geomean"] == pytest.approx(1.0)  # geomean of 2.0 and 0.5
    first = data["cases"][0]
    assert first["case"] == "mm[float16,M4 N4 K64]" and first["ratio"] == 2.0 and "detail" not in first
    assert {"op", "dtype", "shape", "status", "reason", "kernel_err", "torch_err", "rtol", "atol", "torch_ms",
            "kernel_ms", "backend"} <= set(first)
    assert data["cases"][2]["kernel_score"] == "inf"
    assert data["counts_by_backend"] == {"flag_gems": data["counts"]}
    back = report.load_results(data)
    assert [r.case_id for r in back] == [r.case_id for r in rs] and back[2].kernel_score == math.inf
    # summaries written before vLLM's kernels were tested name the kernel side gems_*
    old = {"cases": [{"op": "mm", "dtype": "float16", "shape": "M4", "status": "failed", "gems_score": "inf",
                      "gems_ms": 1.5, "case": "mm[float16,M4]"}]}
    (r,) = report.load_results(old)
    assert r.kernel_score == math.inf and r.kernel_ms == 1.5 and r.backend == "flag_gems"


def test_table_counts_per_op_and_dtype():
    lines = report.table(_results()).splitlines()
    assert lines[0].split()[:5] == ["op", "dtype", "pass", "fail", "skip"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:-2]}
    assert list(rows) == [("mm", "float16"), ("mm", "bfloat16"), ("softmax", "float32"), ("softmax", "float16")]
    mm16 = rows[("mm", "float16")]
    assert mm16[2:5] == ["2", "0", "0"]
    assert mm16[5:9] == ["3.0000", "3.0000", "1.00", "-"]  # ms summed over shapes, ratio: geomean of 2 and 0.5
    assert mm16[9:11] == ["0.001", "0.2"]  # worst error against float64, and its share of the tolerance
    assert rows[("mm", "bfloat16")][2:5] == ["0", "1", "0"]
    assert rows[("softmax", "float32")][2:5] == ["0", "0", "1"] and "registers" in lines[4]
    assert lines[-2].startswith("total: 2 passed, 2 failed, 1 skipped of 5")


# --- the module run for real, in this interpreter -------------------------------------------------------------

@pytest.mark.parametrize("vendor", ["cpu", "nvidia"])
def test_a_run_where_nothing_can_run_fails_on_every_vendor(tmp_path, vendor):
    """No device for FlagGems and no vLLM: every case skipped with its reason, and that is no pass."""
    proc = run_module(tmp_path / "out", "--vendor", vendor, "--ops", "mm,softmax", "add", "vllm_rms_norm",
                       "--dtypes", "float32", pythonpath=no_device_gems(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["counts"] == {"passed": 0, "failed": 0, "skipped": 5, "total": 5} and data["ok"] is False
    env = data["environment"]
    if "skip_reason" in env:  # no torch here: one reason for every case
        reasons = {env["skip_reason"]}
        assert env["skip_reason"].startswith("torch does not import")
        assert f"every case is skipped: {env['skip_reason']}" in proc.stdout
    else:  # torch: flag_gems' real no-device error, and vLLM missing
        reasons = set(env["skip_reasons"].values())
        assert NO_DEVICE in env["skip_reasons"]["flag_gems"]
        assert env["skip_reasons"]["vllm"].startswith("vLLM's kernels do not import (ModuleNotFoundError")
        assert "every FlagGems case is skipped: flag_gems does not import (RuntimeError: No device" in proc.stdout
    assert {c["reason"] for c in data["cases"]} == reasons and {c["status"] for c in data["cases"]} == {"skipped"}
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("skipped") == "5" and len(root.iter("skipped").__next__().get("message")) > 10
    assert "verdict: FAILED: nothing was tested: all 5 case(s) skipped" in proc.stdout
    assert (tmp_path / "out" / "table.txt").read_text().count("\n") >= 7


def test_unknown_op_is_a_usage_error(tmp_path):
    proc = run_module(tmp_path / "out", "--ops", "conv9d")
    assert proc.returncode == 2 and "unknown op conv9d" in proc.stderr


# --- the real torch side, against a fake flag_gems on the CPU ---------------------------------------------------

@needs_torch
def test_every_op_passes_against_correct_gems_and_vllm_kernels_on_cpu(tmp_path):
    proc = run_module(tmp_path / "out", "--small", "--vendor", "nvidia", "--reps", "2", "--warmup", "1",
                      pythonpath=[fake_gems(tmp_path), FAKE_VLLM])
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    bad = [(c["case"], c["reason"]) for c in data["cases"] if c["status"] != "passed"]
    assert not bad and proc.returncode == 0, (bad, proc.stdout[-3000:], proc.stderr[-3000:])
    assert data["counts"]["passed"] == len(select(small=True))
    assert data["environment"]["flag_gems"] == "0.0.0+fake" and data["environment"]["vllm"] == "0.0.0+fake"
    assert set(data["counts_by_backend"]) == {"flag_gems", "vllm"}
    for case in data["cases"]:
        assert case["kernel_ms"] > 0 and case["torch_ms"] > 0 and case["kernel_score"] <= 1.0
        assert case["rtol"] == (0.0 if CATALOG[case["op"]].exact else TOLERANCES[case["dtype"]].rtol)
        assert case["backend"] == CATALOG[case["op"]].backend


@needs_torch
def test_broken_missing_silent_and_raising_gems_ops_on_cpu(tmp_path):
    knobs = {"FAKE_BREAK": "mm,argmax,topk,silu_and_mul", "FAKE_MISSING": "gelu_and_mul,cumsum",
             "FAKE_SILENT": "add,rms_norm", "FAKE_RAISE": "bmm"}
    proc = run_module(tmp_path / "out", "--small", "--vendor", "nvidia", "--reps", "1", "--warmup", "0",
                       "--dtypes", "bfloat16", "float32", pythonpath=fake_gems(tmp_path), env=knobs)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {(c["op"], c["dtype"]): c for c in data["cases"]}
    for dtype in ("bfloat16", "float32"):
        for op in ("mm", "silu_and_mul"):  # 5% off: beyond even bfloat16's 1.6e-2 rtol
            case = status[(op, dtype)]
            assert case["status"] == "failed" and "the tolerance" in case["reason"], case
            assert case["torch_score"] <= 1.0
        for op in ("argmax", "topk"):  # index results are checked by what they select
            assert status[(op, dtype)]["status"] == "failed" and status[(op, dtype)]["kernel_score"] == "inf"
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
    vllm_cases = [s for s in select(dtypes=["bfloat16", "float32"], small=True) if s.backend == "vllm"]
    assert int(root.get("failures")) == 2 * 5 and int(root.get("skipped")) == 2 * 3 + len(vllm_cases)
    assert all(status[(s.op, s.dtype)]["reason"].startswith("vLLM's kernels do not import") for s in vllm_cases)


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
    stored = results.load("sha256:" + "cd" * 32, "tiny-cpu", "op-tests")
    assert stored is not None and stored.passed is False and stored.recipe == "tiny-cpu"


@pytest.mark.parametrize("recipe_name", ["tiny-cpu", "robobrain2-7b-fp8dynamic-nvidia"])
def test_host_command_where_nothing_runs_fails(tmp_path, build_dir, recipe_name, monkeypatch):
    """--host in this interpreter, no device and no vLLM: every case skipped, and that fails on every vendor."""
    import argparse

    monkeypatch.setenv("PYTHONPATH", str(no_device_gems(tmp_path)))
    parser = argparse.ArgumentParser()
    op_tests_command.configure("op-tests", parser)
    args = parser.parse_args([recipe_name, "--host", "--out", str(tmp_path / "o"), "--ops", "add", "softmax"])
    assert op_tests_command.command("op-tests", args) == 1
    data = json.loads((tmp_path / "o" / "summary.json").read_text())
    recipe, _ = load_recipe(recipe_name)
    assert data["vendor"] == recipe.vendor and data["ok"] is False
    assert data["verdict"].startswith("nothing was tested")
    assert {c["dtype"] for c in data["cases"]} == set(recipe.tests.op_tests.dtypes)
    assert data["counts"]["skipped"] == data["counts"]["total"] == 2 * len(recipe.tests.op_tests.dtypes)
    assert (tmp_path / "o" / "junit.xml").is_file()


@needs_torch
def test_host_command_on_a_cpu_machine_runs_vllm_kernels(tmp_path, build_dir, monkeypatch):
    """tiny-cpu's recipe dtypes, no device for FlagGems, (fake) vLLM cpu kernels: green, with numbers."""
    import argparse

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(no_device_gems(tmp_path)), str(FAKE_VLLM)]))
    parser = argparse.ArgumentParser()
    op_tests_command.configure("op-tests", parser)
    args = parser.parse_args(["tiny-cpu", "--host", "--small", "--out", str(tmp_path / "o"),
                              "--ops", "add", "vllm_rms_norm", "vllm_attention"])
    assert op_tests_command.command("op-tests", args) == 0
    data = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert data["counts_by_backend"] == {"vllm": {"passed": 8, "failed": 0, "skipped": 0, "total": 8},
                                         "flag_gems": {"passed": 0, "failed": 0, "skipped": 2, "total": 2}}
    assert all(c["kernel_err"] is not None for c in data["cases"] if c["backend"] == "vllm")


def test_python_needs_host():
    import argparse

    parser = argparse.ArgumentParser()
    op_tests_command.configure("op-tests", parser)
    with pytest.raises(UserError, match="--python only applies with --host"):
        op_tests_command.command("op-tests", parser.parse_args(["tiny-cpu", "--python", "/usr/bin/python3"]))
