"""Golden render tests: one per vendor, against a fixed stack so patch edits do not churn them.

Regenerate after an intended template change: UPDATE_GOLDEN=1 pytest tests/test_render.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.core.lock import load_lock
from tools.core.recipe import load_recipe
from tools.stages.plan import BuildOptions, StackRef, choose_install, make_plan
from tools.stages.render import render_dockerfile

GOLDEN = Path(__file__).parent / "golden"
RECIPES = {"cpu": "tiny-cpu", "nvidia": "robobrain2-7b-fp8dynamic-nvidia", "ascend": "robobrain2-32b-ascend"}


def fixed_stack(vendor: str, touched=("vllm/entrypoints/serve/instrumentator/basic.py",)) -> StackRef:
    return StackRef(vendor=vendor, patch_files=(("vllm/common/0001-x.patch", "0" * 64),),
                    stack_hash="f" * 64, short_id="ffffffffffff", touched=tuple(touched))


def _render(vendor: str, options: BuildOptions | None = None) -> str:
    options = options or BuildOptions()
    loaded = load_lock()
    recipe, path = load_recipe(RECIPES[vendor])
    plan = make_plan(loaded, recipe, path, fixed_stack(vendor), options)
    return render_dockerfile(plan, loaded)


@pytest.mark.parametrize("vendor", sorted(RECIPES))
def test_golden(vendor):
    text = _render(vendor)
    golden = GOLDEN / f"Dockerfile.{vendor}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered Dockerfile for {vendor} changed; see {golden}"


@pytest.mark.parametrize("vendor", sorted(RECIPES))
def test_invariants(vendor):
    text = _render(vendor)
    assert "# syntax=" not in text  # would make BuildKit pull a frontend image
    assert "ARG " not in text  # no build args: secrets travel as BuildKit secrets only
    assert "COPY wheelhouse" not in text  # the wheelhouse is bind-mounted, never a layer
    lines = text.splitlines()
    locked = "--- locked:" in text
    markers = (("--- locked:", "--- patched files", "--- prove the patched") if locked else
               ("--- torch stack", "--- FlagGems", "--- engine", "--- prove the patched"))
    order = [next(i for i, line in enumerate(lines) if marker in line) for marker in markers]
    assert order == sorted(order), "layer order must serve the cache"


def test_cpu_installs_only_from_its_lock():
    text = _render("cpu")
    install = next(line for line in text.splitlines() if "/locked/uv pip install" in line)
    assert "--require-hashes --no-deps" in install  # nothing is resolved at build time
    assert "--compile-bytecode" not in text  # the front-door check compiles what the engine imports
    assert "pip install" not in text.replace("uv pip install", "")  # FlagGems/FlagScale/engine fold into it
    assert "pip uninstall" not in text  # torchvision & co. are excluded from the lock instead
    assert "COPY locked" not in text and "source=locked,target=/locked" in text  # uv never lands in a layer
    assert "venv --without-pip" in text  # the installed set is exactly the lock


def test_a_multinode_image_starts_with_every_install_layer_of_the_single_node_one():
    """Ray goes on top: both images share the multi-GB locked install (one cached layer, one copy on disk)."""
    loaded = load_lock()

    def dockerfile(name: str) -> list[str]:
        recipe, path = load_recipe(name)
        plan = make_plan(loaded, recipe, path, fixed_stack("cpu"), BuildOptions())
        return render_dockerfile(plan, loaded).splitlines()

    single, multi = dockerfile("tiny-cpu"), dockerfile("tiny-cpu-2node")
    start = single.index(next(line for line in single if line.startswith("FROM ")))  # after the header comment
    installed = next(i for i, line in enumerate(single) if "/locked/uv pip install" in line) + 1
    assert multi[start:installed] == single[start:installed] and multi[start - 1] != single[start - 1]
    assert "ray" not in "\n".join(multi[start:installed]).lower()
    assert any("-r /locked-multinode/requirements.txt" in line for line in multi[installed:])


def test_base_image_override_is_used():
    assert "FROM local/stand-in:1\n" in _render("nvidia", BuildOptions(base_image="local/stand-in:1"))


def test_recipe_text_is_data_not_template(tmp_path):
    loaded = load_lock()
    recipe, path = load_recipe("tiny-cpu")
    hostile = recipe.model_copy(update={"name": "x{{7*7}}"})
    plan = make_plan(loaded, hostile, path, fixed_stack("cpu"), BuildOptions())
    text = render_dockerfile(plan, loaded)
    assert "x{{7*7}}" in text and "x49" not in text


def test_install_choice():
    pins = load_lock().lock.vendors["cpu"]
    mode, _ = choose_install(pins, fixed_stack("cpu"))
    assert mode == "wheel-overlay"
    mode, why = choose_install(pins, fixed_stack("cpu", touched=("csrc/foo.cu", "vllm/x.py")))
    assert mode == "source" and "csrc/foo.cu" in why
    ascend = load_lock().lock.vendors["ascend"]
    assert choose_install(ascend, fixed_stack("ascend"))[0] == "source"


def test_the_stamp_check_runs_and_names_what_it_found(tmp_path: Path) -> None:
    """The front-door step's Python, as rendered, run against a stand-in vllm package: it passes on the
    build's stack id and says what it found otherwise, without importing vllm."""
    text = _render("cpu").replace("\\\n", "")  # the Dockerfile's line continuations
    code = re.search(r"RUN python -c '([^']+)'", text).group(1)
    package = tmp_path / "vllm"
    package.mkdir()
    (package / "__init__.py").write_text("raise SystemExit('the check must not import vllm')\n")

    def run(stamp: str, where: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        (package / "_flagos_stack.py").write_text(f'STACK_ID = "{stamp}"\n')
        # -S: no site-packages (a real vllm there must not answer); `python -c` finds packages in its cwd
        return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=where)

    assert run("ffffffffffff").returncode == 0
    wrong = run("0123456789ab")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == ("stamp mismatch: the vllm Python finds carries stack 0123456789ab, "
                                    "this build ffffffffffff")
    (tmp_path / "elsewhere").mkdir()
    missing = run("ffffffffffff", tmp_path / "elsewhere")
    assert missing.returncode == 1 and missing.stderr.strip() == "no vllm on the path"
