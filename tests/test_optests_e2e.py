"""The operator suite inside the real tiny-cpu image: real torch, real vLLM cpu build, real flag_gems, no device.

FlagGems finds no device there and every FlagGems case is skipped with that reason; vLLM's own CPU kernels
(the ones its cpu engine runs for a Llama, and the ones it only exposes) execute against float64
references and must pass with numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tools.core.recipe import load_recipe
from tools.optests.cases import CATALOG, select
from tools.stages import results
from tools.stages.op_tests import NAME_PREFIX, run_op_tests

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_cpu_image_executes_vllm_kernels_and_skips_flaggems_with_the_reason(tiny_cpu_image, build_dir, tmp_path):
    _, image = tiny_cpu_image
    recipe, _ = load_recipe("tiny-cpu")
    out = tmp_path / "optests"
    assert run_op_tests(recipe, image=image.ref, out=out) is True
    data = json.loads((out / "summary.json").read_text())
    assert data["complete"] and data["ok"] and data["environment"]["vllm_platform"] == "cpu"
    assert data["environment"]["vllm"] == "0.32.0" and data["environment"]["torch"].endswith("+cpu")

    vllm_ops = [name for name, op in CATALOG.items() if op.backend == "vllm"]
    want = select(vllm_ops, recipe.tests.op_tests.dtypes)
    executed = [c for c in data["cases"] if c["backend"] == "vllm"]
    assert [c["case"] for c in executed] == [s.case_id for s in want] and len(executed) >= 20
    for case in executed:  # every one ran and has its numbers
        assert case["status"] == "passed", case
        assert math.isfinite(case["kernel_err"]) and math.isfinite(case["torch_err"])
        assert 0 <= case["kernel_score"] <= 1 and case["kernel_ms"] > 0 and case["torch_ms"] > 0
        assert case["notes"][0].endswith("of vLLM 0.32.0")
    attention = [c for c in executed if c["op"] == "vllm_attention"]
    assert attention and all("(vLLM's _get_attn_isa), block size 128" in c["notes"][-1] for c in attention)

    gems = [c for c in data["cases"] if c["backend"] == "flag_gems"]
    assert gems and {c["status"] for c in gems} == {"skipped"}
    assert all("No device were detected" in c["reason"] for c in gems)
    counts = data["counts"]
    assert data["counts_by_backend"] == {
        "vllm": {"passed": len(executed), "failed": 0, "skipped": 0, "total": len(executed)},
        "flag_gems": {"passed": 0, "failed": 0, "skipped": len(gems), "total": len(gems)}}
    assert data["verdict"].startswith(f"{len(executed)} passed, {len(gems)} skipped of {counts['total']}")

    junit = ET.parse(out / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures"), junit.get("skipped")) == (
        str(counts["total"]), "0", str(len(gems)))
    stored = results.load(image.image_id, "tiny-cpu", "op-tests")
    assert stored is not None and stored.passed and stored.summary["counts"] == counts
    assert stored.summary["counts_by_backend"] == data["counts_by_backend"]
    left = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"name={NAME_PREFIX}"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert left == []
