"""The sdist's recorded commit must agree with the lock's pin (full or abbreviated)."""

from pathlib import Path

import pytest

from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.stages.source import _check_sdist_commit


def _tree(tmp_path: Path, commit_id: str) -> Path:
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "_version.py").write_text(f"__commit_id__ = commit_id = 'g{commit_id}'\n")
    return tmp_path


def test_matching_commit_passes(tmp_path):
    up = load_lock().lock.upstream
    _check_sdist_commit(_tree(tmp_path, up.git_commit[:9]), up)


def test_other_commit_is_refused(tmp_path):
    up = load_lock().lock.upstream
    with pytest.raises(UserError, match="cut from commit 1234567ab"):
        _check_sdist_commit(_tree(tmp_path, "1234567ab"), up)
