"""Locks checked against the real index (PyPI through this machine's proxy): every locked file is there with
its sha256 and installs on the vendor's Python and platform. nvidia's image cannot be built here; this is
what proves its lock."""

from __future__ import annotations

import dataclasses

import pytest

from tools.core.lock import load_lock
from tools.stages import pylock

pytestmark = pytest.mark.e2e

INDEX = "https://pypi.org/simple"


@pytest.mark.parametrize("vendor", ["nvidia", "cpu"])
def test_every_locked_file_is_on_the_index_and_installs(vendor):
    found = pylock.load(vendor)
    assert found is not None
    assert pylock.index_problems(found, load_lock().lock.vendors[vendor], INDEX) == []


def test_a_hash_the_index_does_not_have_is_named():
    found = pylock.load("nvidia")
    entry = found.entries["triton"]
    tampered = dataclasses.replace(entry, hashes=["0" * 64])
    one = dataclasses.replace(found, entries={"triton": tampered})
    problems = pylock.index_problems(one, load_lock().lock.vendors["nvidia"], INDEX)
    assert len(problems) == 1 and problems[0].startswith(f"triton=={entry.version}: none of the")


def test_a_wheel_for_a_newer_glibc_does_not_install_on_an_older_base():
    # llguidance 1.7.6 ships x86_64 wheels for manylinux_2_31 (and an sdist): lock only the 2_31 wheel's hash
    # and ask for a glibc 2.28 base
    from tools.mech import pyindex

    files = pyindex.project_files(__import__("requests").Session(), INDEX, "llguidance")
    wheel = next(f for f in files if f.filename == "llguidance-1.7.6-cp39-abi3-manylinux_2_31_x86_64.whl")
    lock = pylock.PyLock("nvidia", "3.12", "x86_64-manylinux_2_28",
                         {"llguidance": pylock.Locked("llguidance", "1.7.6", [wheel.sha256])})
    pins = load_lock().lock.vendors["nvidia"]
    assert pylock.index_problems(lock, pins, INDEX) == []  # glibc 2.39: installs
    old = pins.model_copy(update={"glibc": "2.28"})
    problems = pylock.index_problems(lock, old, INDEX)
    assert len(problems) == 1 and "no locked file installs on Python 3.12 x86_64-manylinux_2_28" in problems[0]


def test_relocking_with_the_same_pins_changes_nothing():
    """lock-deps starts from the locked versions: with versions.lock unchanged, the index's newer releases
    do not leak in (only --upgrade takes them)."""
    from tools.stages.context import wheel_folders
    from tools.stages.plan import BuildOptions

    text = pylock.compile_lock(load_lock().lock, "cpu", wheel_folders(BuildOptions()))
    assert text == pylock.lock_path("cpu").read_text(encoding="utf-8")


def test_an_unlocked_vendors_pins_are_asked_for():
    pins = load_lock().lock.vendors["ascend"]
    found = " ".join(pylock.unlocked_pin_problems(pins, INDEX))
    assert "torch==" not in found and "torch-npu==" not in found  # torch 2.13.0 and torch-npu for aarch64
    made_up = pins.model_copy(update={"pins": {**pins.pins, "torch_npu": "99.0.0"}})
    assert any(p.startswith("torch-npu==99.0.0: not on the index (newest there: ")
               for p in pylock.unlocked_pin_problems(made_up, INDEX))
