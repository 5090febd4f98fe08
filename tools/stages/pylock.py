"""locks/<vendor>.txt: every Python package of a vendor's image, with versions and sha256 hashes.

Made by `uv pip compile` for the vendor's Python and platform from the pins in versions.lock, in three parts:
  1. resolved: the engine wheel, torch and the runtime deps FlagGems/FlagScale/Ray import, with everything
     they need (torchvision/torchaudio/torchcodec excluded from the resolution: CUDA builds on PyPI);
  2. no-deps: flag-gems and flag-scale themselves (their metadata pins would wreck the engine's packages);
  3. multi-node: what Ray adds, resolved against part 1, installed only when a recipe spans machines.
The file stays in uv's requirements format (pip-audit and `uv pip install -r` read it); section lines
start with SECTION.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core import paths
from tools.core.errors import UserError
from tools.core.lock import LoadedLock, Lock, VendorPins

SECTION = "# --- section: "
SECTIONS = ("resolved", "no-deps", "multi-node")
# PyPI's builds of these are CUDA builds that break imports beside a CPU torch; never in a cpu image
CPU_EXCLUDED = ("torchvision", "torchaudio", "torchcodec")
ARCHES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def platform_of(pins: VendorPins) -> str:
    """uv's --python-platform for a vendor: its first platform's arch at its base image's glibc."""
    return f"{ARCHES[pins.platforms[0]]}-manylinux_{pins.glibc.replace('.', '_')}"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(vendor: str) -> Path:
    return PROJECT_ROOT / "locks" / f"{vendor}.txt"


@dataclass
class Locked:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    section: str = "resolved"


@dataclass
class PyLock:
    vendor: str
    python: str
    platform: str
    entries: dict[str, Locked]

    def names(self, *, multinode: bool) -> dict[str, str]:
        """normalized name -> version of what an image installs."""
        return {k: e.version for k, e in self.entries.items() if multinode or e.section != "multi-node"}

    def requirements(self, *, multinode: bool) -> str:
        """The hash-checked requirements an image installs (uv pip install --require-hashes --no-deps)."""
        return self._requirements(f"multi-node part {'in' if multinode else 'left out'}",
                                  lambda section: multinode or section != "multi-node")

    def multinode_part(self) -> str:
        """Only the multi-node part: a multi-node image installs it in a layer of its own, over the same
        single-node layer (same bytes, one cached layer for both images)."""
        return self._requirements("multi-node part only", lambda section: section == "multi-node")

    def _requirements(self, what: str, take: Callable[[str], bool]) -> str:
        lines = [f"# from locks/{self.vendor}.txt ({what})"]
        for entry in sorted(self.entries.values(), key=lambda e: normalize(e.name)):
            if take(entry.section):
                hashes = " ".join(f"--hash=sha256:{h}" for h in entry.hashes)
                lines.append(f"{entry.name}=={entry.version} {hashes}")
        return "\n".join(lines) + "\n"


def parse(text: str, vendor: str, where: str) -> PyLock:
    header = dict(re.findall(r"^# (python|platform)=(\S+)", text, flags=re.M))
    if set(header) != {"python", "platform"}:
        raise UserError("lock header lacks python=/platform= lines", where=where, fix="nox -s lock-deps")
    entries: dict[str, Locked] = {}
    section, current = "resolved", None
    for line in text.splitlines():
        if line.startswith(SECTION):
            section = line.removeprefix(SECTION).split()[0]
            if section not in SECTIONS:
                raise UserError(f"unknown lock section {section!r}", where=where, fix="nox -s lock-deps")
            continue
        match = _ENTRY.match(line)
        if match:
            current = Locked(match.group(1), match.group(2), section=section)
            if normalize(current.name) in entries:
                raise UserError(f"{current.name} is locked twice", where=where, fix="nox -s lock-deps")
            entries[normalize(current.name)] = current
        for digest in _HASH.findall(line):
            if current is None:
                raise UserError("a hash before any package", where=where, fix="nox -s lock-deps")
            current.hashes.append(digest)
    missing = [e.name for e in entries.values() if not e.hashes]
    if missing:
        raise UserError(f"no sha256 for {', '.join(missing)}", where=where, fix="nox -s lock-deps")
    return PyLock(vendor, header["python"], header["platform"], entries)


def load(vendor: str) -> PyLock | None:
    path = lock_path(vendor)
    if not path.is_file():
        return None
    return parse(path.read_text(encoding="utf-8"), vendor, f"locks/{vendor}.txt")


def _pin(req: str) -> tuple[str, str]:
    name, _, version = req.partition("==")
    return normalize(name), version


def expected_pins(lock: Lock, vendor: str) -> dict[str, tuple[str, str]]:
    """normalized name -> (version, where in versions.lock) every lock of this vendor must carry."""
    pins = lock.vendors[vendor]
    want: dict[str, tuple[str, str]] = {
        "torch": (pins.torch, f"vendors.{vendor}.torch"),
        "flag-gems": (lock.flaggems.version, "flaggems.version"),
        "flag-scale": (lock.flagscale.version, "flagscale.version"),
        "ray": (lock.ray.version, "ray.version"),
    }
    if pins.engine_wheel:
        want[normalize(pins.engine_wheel.name)] = (pins.engine_wheel.version, f"vendors.{vendor}.engine_wheel")
    for part, deps in (("flaggems", lock.flaggems.runtime_deps), ("flagscale", lock.flagscale.runtime_deps),
                       ("ray", lock.ray.runtime_deps)):
        for dep in deps:
            name, version = _pin(dep)
            want[name] = (version, f"{part}.runtime_deps")
    return want


def expected_hashes(lock: Lock, vendor: str) -> dict[str, str]:
    """normalized name -> a sha256 versions.lock pins for that package's file."""
    pins = lock.vendors[vendor]
    hashes = {"flag-gems": lock.flaggems.wheel.sha256, "flag-scale": lock.flagscale.wheel.sha256}
    hashes |= {normalize(w.name): w.sha256 for w in pins.wheelhouse}
    if pins.engine_wheel:
        hashes[normalize(pins.engine_wheel.name)] = pins.engine_wheel.sha256
    return hashes


def disagreements(pylock: PyLock, lock: Lock) -> list[str]:
    """Every way a vendor's Python lock disagrees with versions.lock (empty: they agree)."""
    vendor = pylock.vendor
    pins = lock.vendors[vendor]
    problems: list[str] = []
    if pylock.python != pins.python:
        problems.append(f"python {pylock.python} (versions.lock vendors.{vendor}.python: {pins.python})")
    platform = platform_of(pins)
    if pylock.platform != platform:
        problems.append(f"platform {pylock.platform} (versions.lock vendors.{vendor}.platforms and glibc: {platform})")
    for name, (version, where) in expected_pins(lock, vendor).items():
        entry = pylock.entries.get(name)
        if entry is None:
            problems.append(f"{name} missing (versions.lock {where}: {version})")
        elif entry.version != version:
            problems.append(f"{name} {entry.version} (versions.lock {where}: {version})")
    for name, digest in expected_hashes(lock, vendor).items():
        entry = pylock.entries.get(name)
        if entry and digest not in entry.hashes:
            problems.append(f"{name} lacks the sha256 versions.lock pins ({digest[:12]})")
    if vendor == "cpu":
        problems += [f"{n} is locked but never belongs in a cpu image" for n in CPU_EXCLUDED if n in pylock.entries]
    return problems


def check(loaded: LoadedLock, vendors: tuple[str, ...]) -> dict[str, PyLock | None]:
    """Each vendor's lock, or None where it has none; one UserError naming every disagreement."""
    found = {v: load(v) for v in vendors}
    problems = [f"locks/{v}.txt: {p}" for v, pl in found.items() if pl for p in disagreements(pl, loaded.lock)]
    if problems:
        raise UserError("Python locks disagree with versions.lock:\n  " + "\n  ".join(problems),
                        where="locks/ vs versions.lock", fix="nox -s lock-deps (after changing a pin)")
    return found


# --- against the index ---------------------------------------------------------------------------------------

def index_problems(pylock: PyLock, pins: VendorPins, index_url: str, *, workers: int = 8) -> list[str]:
    """Every locked package the index cannot serve as locked: no file of that version carries a sha256 the
    lock holds, or none of those files installs on the vendor's Python, arch and glibc (an sdist counts: it
    is built at install). Wheels from the local wheel folder (versions.lock wheelhouse) are left out. This
    proves a lock whose image cannot be built here (no CUDA base, no GPU) against what its build will ask."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from tools.mech import pyindex

    local = {normalize(w.name) for w in pins.wheelhouse}
    supported = _supported(pins)
    sessions = threading.local()

    def check(entry: Locked) -> str | None:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        files = pyindex.of_version(pyindex.project_files(sessions.session, index_url, normalize(entry.name)),
                                   entry.version)
        locked = [f for f in files if f.sha256 in entry.hashes]
        if not locked:
            return (f"{entry.name}=={entry.version}: none of the {len(files)} files of that version on the index "
                    "has a sha256 the lock holds")
        if not any(pyindex.installs(f, supported) for f in locked):
            return (f"{entry.name}=={entry.version}: no locked file installs on Python {pins.python} "
                    f"{platform_of(pins)} ({', '.join(f.filename for f in locked[:3])}, ...)")
        return None

    wanted = [e for e in pylock.entries.values() if normalize(e.name) not in local]
    with ThreadPoolExecutor(workers) as pool:
        return [problem for problem in pool.map(check, wanted) if problem]


def _supported(pins: VendorPins) -> frozenset:
    from tools.mech import pyindex

    return pyindex.supported_tags(pins.python, ARCHES[pins.platforms[0]], pins.glibc)


def unlocked_pin_problems(pins: VendorPins, index_url: str) -> list[str]:
    """For a vendor without a lock: each exact pin its template installs from the index (torch and the
    vendor's own pins, e.g. torch-npu, vllm-ascend) that the index has no installable file of."""
    import requests
    from packaging.version import Version

    from tools.mech import pyindex

    supported = _supported(pins)
    session = requests.Session()
    problems = []
    for name, version in {"torch": pins.torch, **pins.pins}.items():
        files = pyindex.project_files(session, index_url, normalize(name))
        same = pyindex.of_version(files, version)
        if not any(pyindex.installs(f, supported) for f in same):
            newest = max((Version(f.version) for f in files if f.version), default=None)
            problems.append(f"{normalize(name)}=={version}: " + (
                f"{len(same)} files of that version, none installs on Python {pins.python} {platform_of(pins)}"
                if same else f"not on the index (newest there: {newest})"))
    return problems


# --- making a lock -------------------------------------------------------------------------------------------

def uv_binary() -> Path:
    """uv's binary, from the uv wheel (a project dependency)."""
    try:
        from uv import find_uv_bin
    except ImportError as exc:
        raise UserError("uv is not installed", where="the tools' Python environment",
                        fix="pip install -e . (uv is a project dependency)") from exc
    return Path(find_uv_bin())


def _uv_cache() -> Path:
    """uv's cache for locking, ours to trim: a wheel from a find-links folder is unpacked into it whole (torch:
    700 MB), and a day of test runs on one machine left 15 such copies (10 GB) in uv's default cache."""
    return paths.cache_dir() / "uv"


def _compile(args: list[str], where: str, cwd: Path, keep: PyLock | None, out: str) -> str:
    """One `uv pip compile` run. With keep, uv starts from its versions (written to the output file it
    reads its preferences from) and changes only what the pins force; relative input names keep temp
    paths out of uv's "# via -r ..." comments."""
    output = cwd / out
    output.write_text(keep.requirements(multinode=True) if keep else "", encoding="utf-8")
    proc = subprocess.run([str(uv_binary()), "pip", "compile", "--quiet", "--no-header", "--cache-dir",
                           str(_uv_cache()), *args, "-o", out], capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise UserError(f"uv pip compile failed: {proc.stderr.strip()[-1500:]}", where=where,
                        fix="check that the index (and any torch index the lock names) is reachable")
    return output.read_text(encoding="utf-8")


def compile_lock(lock: Lock, vendor: str, find_links: list[Path], *, upgrade: bool = False) -> str:
    """The text of locks/<vendor>.txt, resolved now by uv: from the versions of the lock there is (a
    re-lock changes only what a changed pin forces), or from the newest the index has when upgrade."""
    pins = lock.vendors[vendor]
    platform = platform_of(pins)
    common = ["--python-version", pins.python, "--python-platform", platform, "--generate-hashes"]
    for folder in find_links:
        common += ["--find-links", str(folder)]
    if pins.torch_index_url:
        common += ["--extra-index-url", pins.torch_index_url, "--index-strategy", "unsafe-best-match"]
    engine = f"{pins.engine_wheel.name}=={pins.engine_wheel.version}" if pins.engine_wheel else None
    if engine is None:
        raise UserError(f"{vendor} has no engine wheel: its engine is built from source in the image",
                        where=f"versions.lock vendors.{vendor}", fix="lock a vendor with engine_wheel")
    roots = [engine, f"torch=={pins.torch}", *lock.flaggems.runtime_deps, *lock.flagscale.runtime_deps]
    where = f"uv pip compile for {vendor}"
    keep = None if upgrade else load(vendor)
    with tempfile.TemporaryDirectory(prefix="flagrel-lock-") as tmp:
        work = Path(tmp)
        (work / "roots.in").write_text("\n".join(roots) + "\n")
        (work / "nodeps.in").write_text(f"flag-gems=={lock.flaggems.version}\nflag-scale=={lock.flagscale.version}\n")
        (work / "ray.in").write_text("\n".join([*roots, f"ray=={lock.ray.version}", *lock.ray.runtime_deps]) + "\n")
        excludes: list[str] = []
        if vendor == "cpu":
            (work / "excludes.txt").write_text("\n".join(CPU_EXCLUDED) + "\n")
            excludes = ["--excludes", "excludes.txt"]
        resolved = _compile(["roots.in", *common, *excludes], where, work, keep, "resolved.txt")
        base = parse("# python=x\n# platform=x\n" + resolved, vendor, where)
        (work / "base.txt").write_text("".join(f"{e.name}=={e.version}\n" for e in base.entries.values()))
        nodeps = _compile(["nodeps.in", "--no-deps", *common], where, work, keep, "nodeps.txt")
        with_ray = _compile(["ray.in", "-c", "base.txt", *common, *excludes], where, work, keep, "ray.txt")
    # what no later lock can reach (the unpacked copies of earlier checkouts) goes
    subprocess.run([str(uv_binary()), "cache", "prune", "--quiet", "--cache-dir", str(_uv_cache())],
                   capture_output=True, check=False)
    extra = _only_new(with_ray, set(base.entries))
    header = [
        f"# Every Python package of the {vendor} image. Made by `nox -s lock-deps -- --vendor {vendor}`",
        "# (uv pip compile from versions.lock's pins); checked against versions.lock by `nox -s check-locks`.",
        f"# python={pins.python}",
        f"# platform={platform}",
    ]
    return "\n".join([
        *header, f"{SECTION}resolved (engine, torch, runtime deps; {', '.join(CPU_EXCLUDED)} excluded for cpu)",
        resolved.rstrip(), f"{SECTION}no-deps (flag-gems, flag-scale: their metadata pins clash with the engine)",
        nodeps.rstrip(), f"{SECTION}multi-node (Ray and what it adds; only for recipes with serve.nnodes > 1)",
        extra.rstrip(),
    ]) + "\n"


def _only_new(text: str, known: set[str]) -> str:
    """The entries of a uv output (with their hash/comment lines) whose names are not in known."""
    keep: list[str] = []
    take = False
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match:
            take = normalize(match.group(1)) not in known
        if take:
            keep.append(line)
    return "\n".join(keep) + "\n"
