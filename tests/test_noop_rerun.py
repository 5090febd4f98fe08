"""A re-run whose image was reused by content key and already passed both checks skips them."""

from __future__ import annotations

import pytest

from tools.core.recipe import load_recipe
from tools.pipeline import _passed_before
from tools.stages import results
from tools.stages.build import BuiltImage

IMAGE = "sha256:" + "c" * 64


@pytest.fixture(autouse=True)
def build_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAGREL_BUILD", str(tmp_path))


def _image(skipped: bool) -> BuiltImage:
    return BuiltImage(IMAGE, "flagrelease-local/x:latest", "k" * 64, skipped=skipped, log=None)


RECIPE, _ = load_recipe("tiny-cpu")


def _store(smoke: bool, op_tests: bool, recipe=RECIPE) -> None:
    results.store(results.result_for(recipe, "smoke", IMAGE, passed=smoke))
    results.store(results.result_for(recipe, "op-tests", IMAGE, passed=op_tests))


def test_reused_image_that_passed_skips_both():
    _store(True, True)
    found = _passed_before(RECIPE, _image(skipped=True))
    assert set(found) == {"smoke", "op-tests"} and all(v.startswith("passed (stored") for v in found.values())


@pytest.mark.parametrize("smoke, op_tests", [(True, False), (False, True)])
def test_any_failed_or_skipped_check_runs_again(smoke, op_tests):
    _store(smoke, op_tests)
    assert _passed_before(RECIPE, _image(skipped=True)) == {}


def test_new_build_or_no_results_validates():
    assert _passed_before(RECIPE, _image(skipped=True)) == {}
    _store(True, True)
    assert _passed_before(RECIPE, _image(skipped=False)) == {}


def test_results_of_another_configuration_or_recipe_run_again():
    other = RECIPE.model_copy(update={"name": "other"})
    _store(True, True, recipe=other)
    assert _passed_before(RECIPE, _image(skipped=True)) == {}
    edited = RECIPE.model_copy(update={"serve": RECIPE.serve.model_copy(update={"served_model_name": "renamed"})})
    _store(True, True, recipe=edited)
    assert _passed_before(RECIPE, _image(skipped=True)) == {}
    _store(True, True)
    assert set(_passed_before(RECIPE, _image(skipped=True))) == {"smoke", "op-tests"}
