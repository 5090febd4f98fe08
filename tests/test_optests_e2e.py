"""The operator suite inside the real tiny-cpu image: real torch, real flag_gems, no device."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

from tools.core.recipe import load_recipe
from tools.stages import results
from tools.stages.op_tests import NAME_PREFIX, run_op_tests

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_cpu_image_run_skips_every_case_with_the_reason(tiny_cpu_image, build_dir, tmp_path):
    _, image = tiny_cpu_image
    recipe, _ = load_recipe("tiny-cpu")
    out = tmp_path / "optests"
    assert run_op_tests(recipe, image=image.ref, out=out) is True  # green for cpu: nothing can run there
    data = json.loads((out / "summary.json").read_text())
    counts = data["counts"]
    assert counts["passed"] == 0 and counts["failed"] == 0 and counts["skipped"] == counts["total"] > 0
    assert all("No device were detected" in case["reason"] for case in data["cases"])
    junit = ET.parse(out / "junit.xml").getroot()
    assert sum(int(suite.get("skipped")) for suite in junit.iter("testsuite")) == counts["total"]
    stored = results.load(image.image_id, "op-tests")
    assert stored is not None and stored.passed and stored.summary["counts"] == counts
    left = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"name={NAME_PREFIX}"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert left == []

