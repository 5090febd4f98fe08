"""The release record: everything a release was made of, as JSON beside its model card.

Written to build/releases/<registry>/<repository>/<immutable tag>/record.json after a verified push; the card
is rendered from it (tools/stages/card.py), so the two can never disagree.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tools.core import labels as L
from tools.core import paths
from tools.core.errors import UserError
from tools.core.lock import load_lock
from tools.mech import docker
from tools.mech.console import warn
from tools.stages.results import StoredResult

TagKind = Literal["immutable", "moving"]
# pushed: the tag did not exist; moved: it pointed elsewhere (moving tags only); unchanged: already right
TagAction = Literal["pushed", "moved", "unchanged", "would-push"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TagRecord(Model):
    tag: str
    ref: str
    kind: TagKind
    action: TagAction
    digest: str | None = None
    previous_digest: str | None = None
    verified: bool = False
    push_s: float = 0.0  # 0 when nothing was pushed for this tag


class Versions(Model):
    vllm: str
    vllm_commit: str
    flaggems: str
    torch: str
    python: str
    base_image: str
    install_mode: str
    lock_sha256: str
    # False when the image was built from another versions.lock than the checkout's: torch/python/base
    # above then come from the checkout's lock and may not describe the image
    lock_matches_image: bool
    # the FlagScale every image carries (versions.lock [flagscale]); None in records made before it did
    flagscale: str | None = None


class PatchFile(Model):
    path: str
    sha256: str


class PatchStack(Model):
    stack_id: str
    stack_hash: str
    files: list[PatchFile]
    files_source: str


class ResultRecord(Model):
    kind: str
    # what the result was bound to (tools/stages/results.py): the publish gate checked each against the release
    recipe: str | None = None
    config_hash: str | None = None
    config: dict[str, Any] = {}
    checks_version: int | None = None
    passed: bool
    skipped_reason: str | None = None
    report: str | None = None
    summary: dict[str, Any] = {}
    recorded_at: str


class Waiver(Model):
    """A check that did not pass, published anyway on an explicit, recorded opt-in."""
    kind: str  # "op-tests"
    flag: str  # the option that accepted it
    reason: str  # the publisher's words
    status: str  # what was accepted: the verdict, the skip, or that no result was stored


class HostFacts(Model):
    hostname: str
    os: str
    kernel: str
    arch: str
    cpu_count: int
    docker_client: str
    docker_server: str
    python: str


class Times(Model):
    started_at: str
    finished_at: str
    push_s: float
    verify_s: float
    total_s: float


class ImageContents(Model):
    """Read from the image after its build (tools/stages/facts.py), not from the lock."""

    python: str
    os: str
    torch: str | None
    engine: str | None
    distributions: dict[str, str]
    lock_matches: bool | None  # None: not installed from a lock
    sbom: str | None  # file name of the CycloneDX JSON beside record.json
    audit: dict[str, Any] = {}


def contents_from(image_id: str) -> ImageContents | None:
    from tools.stages import facts

    found = facts.load(image_id)
    if found is None:
        return None
    return ImageContents(python=found.python, os=found.os, torch=found.torch, engine=found.engine,
                         distributions=found.distributions, lock_matches=found.lock_matches,
                         sbom=Path(found.sbom).name if found.sbom else None, audit=found.audit)


class ReleaseRecord(Model):
    schema_version: Literal[1] = 1
    recipe: str
    vendor: str
    model_id: str
    served_model_name: str
    image_id: str
    content_key: str
    source_revision: str
    registry: str
    repository: str
    immutable_tag: str
    digest: str | None
    tags: list[TagRecord]
    versions: Versions
    patch_stack: PatchStack
    tests: dict[str, ResultRecord]
    waivers: list[Waiver] = []
    host: HostFacts
    times: Times
    dry_run: bool = False
    contents: ImageContents | None = None

    @property
    def immutable_ref(self) -> str:
        return f"{self.registry}/{self.repository}:{self.immutable_tag}"

    @property
    def digest_ref(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def pull_ref(self) -> str:
        """What a card tells users to pull: the first moving tag (the release name), else the build tag."""
        moving = [t.ref for t in self.tags if t.kind == "moving"]
        return moving[0] if moving else self.immutable_ref

    def __str__(self) -> str:
        # the build pipeline prints records in its summary: one line, the content address first
        moving = ", ".join(t.tag for t in self.tags if t.kind == "moving") or "no moving tags"
        return f"{self.immutable_ref} @ {self.digest or '(dry run)'} ({moving})"


def release_dir(registry: str, repository: str, immutable_tag: str) -> Path:
    """build/releases/<registry>/<repository>/<immutable tag>: one folder per build per registry target, so
    publishing a build to a second registry or namespace never touches the first release's record."""
    return paths.build_dir() / "releases" / registry / repository / immutable_tag


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def host_facts() -> HostFacts:
    data = docker.version_info()
    return HostFacts(
        hostname=socket.gethostname(),
        os=_os_name(),
        kernel=platform.release(),
        arch=platform.machine(),
        cpu_count=os.cpu_count() or 0,
        docker_client=(data.get("Client") or {}).get("Version", "unknown"),
        docker_server=(data.get("Server") or {}).get("Version", "unknown"),
        python=platform.python_version(),
    )


def versions_from(image_labels: dict[str, str], vendor: str) -> Versions:
    """Versions the image labels state win (torch and Python as read from the image); the rest come from the
    lock (and say whether it is the same)."""
    loaded = load_lock()
    lock = loaded.lock
    pins = lock.vendors[vendor]  # type: ignore[index]
    label_lock = image_labels.get(L.LOCK_HASH, "")
    matches = label_lock == loaded.sha256
    if not matches:
        warn(f"the image was built from versions.lock {label_lock[:12] or '(unknown)'}, the checkout has "
             f"{loaded.sha256[:12]}: torch/python/base in the record come from the checkout's lock")
    return Versions(
        vllm=image_labels.get(L.VLLM_VERSION) or lock.upstream.version,
        vllm_commit=image_labels.get(L.VLLM_COMMIT) or lock.upstream.git_commit,
        flaggems=image_labels.get(L.FLAGGEMS_VERSION) or lock.flaggems.version,
        # read from the image itself when it carries its facts (every build since they are labelled)
        torch=image_labels.get(L.FACTS_TORCH) or pins.torch,
        python=image_labels.get(L.FACTS_PYTHON) or pins.python,
        base_image=pins.base.ref,
        install_mode=image_labels.get(L.INSTALL_MODE, "unknown"),
        lock_sha256=label_lock or loaded.sha256,
        lock_matches_image=matches,
        flagscale=lock.flagscale.version,
    )


def patch_stack_from(image_labels: dict[str, str], vendor: str) -> PatchStack:
    """The stack's files with hashes, from patches/ when its hash equals the one the image carries."""
    stack_hash = image_labels.get(L.STACK_HASH, "")
    stack_id = image_labels.get(L.STACK_ID, "")
    files: list[PatchFile] = []
    try:
        from tools.stages import patches

        info = patches.stack_info(vendor)
    except (ImportError, UserError, OSError) as exc:
        return PatchStack(stack_id=stack_id, stack_hash=stack_hash, files=[],
                          files_source=f"unavailable: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}")
    if info.stack_hash != stack_hash:
        # never list files the image was not built from
        return PatchStack(stack_id=stack_id, stack_hash=stack_hash, files=[],
                          files_source=f"unavailable: patches/ now hashes to {info.stack_hash[:12]}, "
                                       f"the image was built from {stack_hash[:12] or '(no label)'}")
    files = [PatchFile(path=p.relpath, sha256=p.sha256) for p in info.patches]
    return PatchStack(stack_id=stack_id, stack_hash=stack_hash, files=files,
                      files_source="patches/ (its stack hash equals the image's label)")


def result_records(stored: dict[str, StoredResult]) -> dict[str, ResultRecord]:
    return {kind: ResultRecord(**{k: v for k, v in asdict(r).items() if k != "image_id"}) for kind, r in stored.items()}


def write_release(record: ReleaseRecord, card_text: str) -> tuple[Path, Path]:
    """record.json and README.md of the release; an earlier publish of the same build to the same target
    (a republish) keeps its record and card under history/<its start time>/."""
    out = release_dir(record.registry, record.repository, record.immutable_tag)
    out.mkdir(parents=True, exist_ok=True)
    record_path, card_path = out / "record.json", out / "README.md"
    if record_path.is_file():
        try:
            stamp = load_record(record_path).times.started_at
        except (ValueError, OSError):
            stamp = "unreadable"
        keep = out / "history" / stamp.replace(":", "")
        keep.mkdir(parents=True, exist_ok=True)
        for path in (record_path, card_path):
            if path.is_file():
                path.replace(keep / path.name)
    for path, text in ((record_path, record.model_dump_json(indent=2) + "\n"), (card_path, card_text)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return record_path, card_path


def load_record(path: Path) -> ReleaseRecord:
    return ReleaseRecord.model_validate_json(path.read_text(encoding="utf-8"))
