"""publish shows the image's vulnerability count and refuses on the recipe's release.max_vulnerabilities."""

from __future__ import annotations

import pytest

from tools.core.errors import UserError
from tools.core.recipe import load_recipe
from tools.stages import facts
from tools.stages.publish import check_audit

IMAGE = "sha256:" + "b" * 64


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAGREL_BUILD", str(tmp_path))
    return load_recipe("tiny-cpu")[0]


def _store(vulns: int, not_audited: int) -> None:
    facts.store(facts.ImageFacts(
        image_id=IMAGE, python="3.11.2", os="Debian", distributions={"numpy": "2.3.5"}, torch=None, engine=None,
        lock_matches=True, audit={"packages": 10, "audited": 10 - not_audited, "not_audited": not_audited,
                                  "vulnerabilities": vulns, "findings": [], "report": "x"}))


def _limit(recipe, limit):
    return recipe.model_copy(update={"release": recipe.release.model_copy(update={"max_vulnerabilities": limit})})


def test_no_policy_shows_and_passes(recipe):
    _store(vulns=3, not_audited=0)
    contents = check_audit(recipe, IMAGE)
    assert contents is not None and contents.audit["vulnerabilities"] == 3 and contents.lock_matches


def test_over_the_limit_refuses(recipe):
    _store(vulns=3, not_audited=0)
    assert check_audit(_limit(recipe, 3), IMAGE) is not None
    with pytest.raises(UserError, match="3 found \\(limit 2\\)"):
        check_audit(_limit(recipe, 2), IMAGE)


def test_unaudited_packages_prove_nothing(recipe):
    _store(vulns=0, not_audited=4)
    with pytest.raises(UserError, match="4 packages not audited"):
        check_audit(_limit(recipe, 0), IMAGE)


def test_limit_without_a_report_refuses(recipe):
    with pytest.raises(UserError, match="no pip-audit report"):
        check_audit(_limit(recipe, 0), IMAGE)
