"""Facts read from a built image (not from the lock): its Python distributions, Python, torch, engine and OS,
checked against locks/<vendor>.txt; at release, a CycloneDX SBOM of those packages and a pip-audit of the lock.

Stored by image id beside the validation results (build/results/<image id>/), so a rebuilt or re-run
session reads them instead of starting a container again; publishing copies them into the release.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tools.core import labels as L
from tools.core import paths
from tools.core.errors import UserError
from tools.mech import docker
from tools.stages.pylock import PyLock, normalize
from tools.stages.pylock import load as load_pylock

# runs inside the image with its own Python (stdlib only)
_PROBE = r"""
import importlib.metadata as m, json, platform, sys
dists = {}
for d in m.distributions():
    dists[d.metadata["Name"]] = d.version
os = dict(l.rstrip().split("=", 1) for l in open("/etc/os-release") if "=" in l)
print(json.dumps({"python": platform.python_version(), "os": os.get("PRETTY_NAME", "").strip('"'),
                  "distributions": dists, "executable": sys.executable}))
"""


@dataclass
class ImageFacts:
    image_id: str
    python: str
    os: str
    distributions: dict[str, str]
    torch: str | None = None
    engine: str | None = None
    lock_matches: bool | None = None  # None: the image was not installed from a lock
    audit: dict[str, object] = field(default_factory=dict)
    sbom: str | None = None  # path of the CycloneDX JSON


def _dir(image_id: str) -> Path:
    return paths.build_dir() / "results" / image_id.replace(":", "-")


def read_facts(image_ref: str, image_id: str, engine_name: str | None) -> ImageFacts:
    """Start the image once (no network, entrypoint replaced) and read what is installed."""
    with docker.running_container(image_ref, ["600"], name_prefix="flagrel-facts", entrypoint="sleep",
                                  network="none") as box:
        proc = box.exec(["python", "-c", _PROBE], timeout=120)
    if proc.returncode != 0:
        raise UserError(f"could not read the image's Python facts: {proc.stderr.strip()[-500:]}", where=image_ref)
    raw = json.loads(proc.stdout)
    dists = {normalize(k): v for k, v in raw["distributions"].items()}
    return ImageFacts(image_id=image_id, python=raw["python"], os=raw["os"], distributions=dists,
                      torch=dists.get("torch"), engine=dists.get(normalize(engine_name)) if engine_name else None)


def compare(installed: dict[str, str], locked: dict[str, str]) -> list[str]:
    """Every difference between the installed set and the lock's, by name (empty: equal)."""
    out = [f"{n} {installed[n]} installed, not in the lock" for n in sorted(set(installed) - set(locked))]
    out += [f"{n} {locked[n]} locked, not installed" for n in sorted(set(locked) - set(installed))]
    out += [f"{n} {installed[n]} installed, {locked[n]} locked" for n in sorted(set(installed) & set(locked))
            if installed[n] != locked[n]]
    return out


def check_against_lock(facts: ImageFacts, pylock: PyLock, *, multinode: bool) -> None:
    problems = compare(facts.distributions, pylock.names(multinode=multinode))
    if problems:
        raise UserError(f"the image's Python packages differ from locks/{pylock.vendor}.txt:\n  "
                        + "\n  ".join(problems), where=f"image {facts.image_id[:19]}",
                        fix="rebuild with --no-cache; if it persists the lock and the Dockerfile disagree")
    facts.lock_matches = True


def _tool(module: str, args: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False,
                          timeout=900)
    if proc.returncode not in (0, 1):  # pip-audit exits 1 when it found vulnerabilities
        raise UserError(f"{what} failed: {proc.stderr.strip()[-800:]}", where=f"python -m {module}")
    return proc


def sbom(facts: ImageFacts, pylock: PyLock | None, out: Path) -> Path:
    """CycloneDX JSON of the image's Python packages: the installed list, with the lock's hashes when the
    image was installed from it."""
    with tempfile.TemporaryDirectory(prefix="flagrel-sbom-") as tmp:
        req = Path(tmp) / "installed.txt"
        lines = []
        for name, version in sorted(facts.distributions.items()):
            entry = pylock.entries.get(name) if pylock else None
            hashes = " ".join(f"--hash=sha256:{h}" for h in entry.hashes) if entry else ""
            lines.append(f"{name}=={version} {hashes}".rstrip())
        req.write_text("\n".join(lines) + "\n")
        _tool("cyclonedx_py", ["requirements", str(req), "--of", "JSON", "-o", str(out)], "cyclonedx-py")
    return out


def audit(requirements: str, out: Path) -> dict[str, object]:
    """pip-audit of the hash-checked requirements against PyPI's advisory data. Packages it could not look up
    are counted as not audited: zero findings among them proves nothing."""
    with tempfile.TemporaryDirectory(prefix="flagrel-audit-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements)
        _tool("pip_audit", ["-r", str(req), "--require-hashes", "--disable-pip", "-f", "json", "-o", str(out),
                            "--progress-spinner", "off"], "pip-audit")
    data = json.loads(out.read_text())
    deps = data.get("dependencies", [])
    vulns = [(d["name"], d["version"], v["id"]) for d in deps for v in d.get("vulns", [])]
    skipped = [d["name"] for d in deps if d.get("skip_reason")]
    return {"packages": len(deps), "audited": len(deps) - len(skipped), "not_audited": len(skipped),
            "vulnerabilities": len(vulns), "findings": [f"{n} {v}: {i}" for n, v, i in vulns],
            "report": str(out)}


def packages_digest(distributions: dict[str, str]) -> str:
    lines = "".join(f"{name}=={version}\n" for name, version in sorted(distributions.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def labels(facts: ImageFacts, vendor: str) -> dict[str, str]:
    """The image's own facts as labels: what `docker inspect` shows without starting it."""
    return {
        L.FACTS_PYTHON: facts.python,
        L.FACTS_TORCH: facts.torch or "none",
        L.FACTS_ENGINE: facts.engine or "none",
        L.FACTS_OS: facts.os,
        L.FACTS_PACKAGES: str(len(facts.distributions)),
        L.FACTS_PACKAGES_SHA256: packages_digest(facts.distributions),
        L.FACTS_LOCK: f"equal to locks/{vendor}.txt" if facts.lock_matches else "none",
    }


def move(facts: ImageFacts, image_id: str) -> ImageFacts:
    """The same facts stored under the labelled image that replaces the built one."""
    moved = replace(facts, image_id=image_id)
    store(moved)
    return moved


def store(facts: ImageFacts) -> Path:
    target = _dir(facts.image_id)
    target.mkdir(parents=True, exist_ok=True)
    path = target / "facts.json"
    path.write_text(json.dumps(asdict(facts), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load(image_id: str) -> ImageFacts | None:
    path = _dir(image_id) / "facts.json"
    if not path.is_file():
        return None
    return ImageFacts(**json.loads(path.read_text(encoding="utf-8")))


def collect(image_ref: str, image_id: str, pylock: PyLock | None, *, multinode: bool,
            engine_name: str | None) -> ImageFacts:
    """Facts and the lock check for one image; stored, and reused while the image id is the same."""
    known = load(image_id)
    if known is not None:
        return known
    facts = read_facts(image_ref, image_id, engine_name)
    if pylock is not None:
        check_against_lock(facts, pylock, multinode=multinode)
    store(facts)
    return facts


def release_reports(image_id: str, vendor: str, *, multinode: bool) -> None:
    """The SBOM of the image's packages and a pip-audit of its lock (when it was installed from one), made
    when it is released: advisories change after a build, and a build never published need not wait for them."""
    facts = load(image_id)
    if facts is None:
        return
    locked = load_pylock(vendor) if facts.lock_matches else None
    target = _dir(image_id)
    facts.sbom = str(sbom(facts, locked, target / "sbom.cdx.json"))
    if locked is not None:
        facts.audit = audit(locked.requirements(multinode=multinode), target / "pip-audit.json")
    store(facts)
