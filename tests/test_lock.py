from pathlib import Path

import pytest

from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.core.paths import lock_file


def test_project_lock_loads_and_pins_everything():
    loaded = load_lock()
    lock = loaded.lock
    assert lock.upstream.version == "0.32.0"
    assert len(lock.upstream.git_commit) in (9, 40)
    assert lock.upstream.git_commit.startswith("5df63a720")
    assert lock.upstream.sdist_sha256 == "d2c957d5eee3d0985012151315ddc62cbe0cd368fc96a5fc3510438d9dddf2ad"
    assert set(lock.vendors) == {"nvidia", "ascend", "cpu"}
    assert lock.vendors["nvidia"].base.digest.startswith("sha256:")
    assert len(loaded.sha256) == 64


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = lock_file().read_text()
    assert old in text, old
    path = tmp_path / "versions.lock"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('version = "0.32.0"', 'version = "0.32.0"\nflavour = "x"', "upstream.flavour"),
        ('sdist_sha256 = "d2c9', 'sdist_sha256 = "XYZ', "upstream.sdist_sha256"),
        ('git_tag = "v0.32.0"\n', "", "upstream.git_tag"),
        ('torch = "2.13.0+cpu"', 'torch = "latest"', "vendors.cpu.torch"),
    ],
)
def test_bad_lock_names_key_and_file(tmp_path, old, new, key):
    path = _broken(tmp_path, old, new)
    with pytest.raises(UserError) as info:
        load_lock(path)
    message = info.value.render()
    assert key in message
    assert str(path) in message
    assert "fix:" in message


def test_lock_not_toml(tmp_path):
    path = tmp_path / "versions.lock"
    path.write_text("[upstream\nversion=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_lock(path)


def test_missing_lock(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_lock(tmp_path / "nope.lock")
