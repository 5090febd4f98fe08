"""vLLM's CPU kernels in the op-test suite, run for real on this host's CPU against a fake vLLM build.

The fake (tests/fakes/vllm) registers the torch.ops._C schemas of vLLM 0.32.0's cpu build with
torch.library and computes them with torch, so the suite's builders, float64 references, tolerances and
reports run exactly as in the image; knobs break, drop or fail single kernels. The real kernels run in
tests/test_optests_e2e.py, inside the tiny-cpu image.
"""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET

import pytest
from optests_fakes import FAKE_VLLM, NO_DEVICE, no_device_gems, run_module

from tools.optests.cases import CATALOG, select

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
VLLM_OPS = [name for name, op in CATALOG.items() if op.backend == "vllm"]


def _cases(out) -> dict[tuple[str, str], list[dict]]:
    data = json.loads((out / "summary.json").read_text())
    cases: dict[tuple[str, str], list[dict]] = {}
    for case in data["cases"]:
        cases.setdefault((case["op"], case["dtype"]), []).append(case)
    return cases


def test_cpu_machine_runs_vllm_kernels_while_flaggems_has_no_device(tmp_path):
    """What a cpu image sees: FlagGems skipped with its real reason, every vLLM kernel case executed."""
    proc = run_module(tmp_path / "out", "--small", "--vendor", "cpu", "--reps", "2", "--warmup", "0",
                      "--dtypes", "float32", "bfloat16", "--ops", "mm", "softmax", *VLLM_OPS,
                      pythonpath=[no_device_gems(tmp_path), FAKE_VLLM])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    vllm = [c for c in data["cases"] if c["backend"] == "vllm"]
    gems = [c for c in data["cases"] if c["backend"] == "flag_gems"]
    assert len(vllm) == len(select(VLLM_OPS, ["float32", "bfloat16"], small=True)) == 19
    assert {c["status"] for c in vllm} == {"passed"} and {c["status"] for c in gems} == {"skipped"}
    assert all(NO_DEVICE in c["reason"] for c in gems)
    for c in vllm:  # numbers, not just a status
        assert c["kernel_err"] is not None and c["torch_err"] is not None and 0 <= c["kernel_score"] <= 1
        assert c["kernel_ms"] > 0 and c["torch_ms"] > 0
        assert c["notes"][0].startswith("torch.ops._C.") and c["notes"][0].endswith("of vLLM 0.0.0+fake")
    native = {c["op"] for c in vllm if any("takes the torch-native path" in n for n in c["notes"])}
    assert native == {"vllm_rms_norm", "vllm_fused_add_rms_norm", "vllm_silu_and_mul", "vllm_gelu_and_mul"}
    assert data["ok"] is True and data["verdict"].startswith(f"{len(vllm)} passed, {len(gems)} skipped")
    assert "vLLM kernels 19/19 passed; FlagGems 0/4 passed, 4 skipped (flag_gems does not import" in data["verdict"]
    assert "every FlagGems case is skipped: flag_gems does not import (RuntimeError: No device" in proc.stdout
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    classes = {c.get("classname") for c in root.iter("testcase")}
    assert "optests.vllm.vllm_attention" in classes and "optests.flag_gems.mm" in classes


def test_broken_missing_and_raising_vllm_kernels_fail_or_skip_with_the_reason(tmp_path):
    knobs = {"FAKE_VLLM_BREAK": "rms_norm,cpu_attention_with_kv_cache,greedy_argmax,rotary_embedding",
             "FAKE_VLLM_MISSING": "gelu_and_mul", "FAKE_VLLM_RAISE": "silu_and_mul", "FAKE_VLLM_NO_FP16_MM": "1"}
    proc = run_module(tmp_path / "out", "--small", "--vendor", "cpu", "--reps", "1", "--warmup", "0",
                      "--dtypes", "float16", "float32", "--ops", *VLLM_OPS,
                      pythonpath=[no_device_gems(tmp_path), FAKE_VLLM], env=knobs)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = _cases(tmp_path / "out")
    for dtype in ("float16", "float32"):
        for op in ("vllm_rms_norm", "vllm_rotary_embedding", "vllm_attention"):  # 5% off
            for case in cases[(op, dtype)]:
                assert case["status"] == "failed" and case["reason"].startswith("max |vllm - ref| = "), case
                # vLLM's native path is right (in float32; its float16 rotary rounds q*cos - k*sin in float16
                # and is outside the tolerance near cancellation, which the case notes): the kernel is wrong
                assert case["torch_score"] <= 1.0 or (op, dtype) == ("vllm_rotary_embedding", "float16")
        (silu,) = cases[("vllm_silu_and_mul", dtype)]
        assert silu["status"] == "failed"
        assert silu["reason"] == "raised RuntimeError: fake vLLM kernel silu_and_mul failed"
        (gelu,) = cases[("vllm_gelu_and_mul", dtype)]
        assert (gelu["status"], gelu["reason"]) == ("skipped", "vLLM 0.0.0+fake has no torch.ops._C.gelu_and_mul")
        (fused,) = cases[("vllm_fused_add_rms_norm", dtype)]
        assert fused["status"] == "passed"
    # the oneDNN float16 matmul this CPU lacks: vLLM falls back to torch, so the case is skipped, not failed
    (mm16,) = cases[("vllm_onednn_mm", "float16")]
    assert mm16["status"] == "skipped"
    assert mm16["reason"].startswith("oneDNN builds no torch.float16 matmul on this CPU")
    assert "fall back to torch.nn.functional.linear" in mm16["reason"]
    assert cases[("vllm_onednn_mm", "float32")][0]["status"] == "passed"
    # greedy sampling's index is checked by the logit it picks (all zeros: not the max)
    (argmax,) = cases[("vllm_greedy_argmax", "float32")]
    assert argmax["status"] == "failed" and argmax["kernel_score"] == "inf"
    assert ("vllm_greedy_argmax", "float16") not in cases
    assert "verdict: FAILED" in proc.stdout


def test_vllm_on_another_platform_is_skipped_and_nothing_ran_fails(tmp_path):
    proc = run_module(tmp_path / "out", "--small", "--vendor", "nvidia", "--dtypes", "float32",
                      "--ops", "vllm_rms_norm", "add", pythonpath=[no_device_gems(tmp_path), FAKE_VLLM],
                      env={"FAKE_VLLM_PLATFORM": "cuda"})
    assert proc.returncode == 1
    cases = _cases(tmp_path / "out")
    (rms,) = cases[("vllm_rms_norm", "float32")]
    assert rms["status"] == "skipped" and rms["reason"].startswith("vLLM's platform here is cuda")
    assert "verdict: FAILED: nothing was tested: all 2 case(s) skipped" in proc.stdout
