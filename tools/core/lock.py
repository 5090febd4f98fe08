"""versions.lock: the one place for pins. Loading validates every field; nothing floats."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tools.core import paths, vendors
from tools.core.errors import UserError
from tools.core.refs import check_image_ref
from tools.core.validation import to_user_error

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# A full SHA where it is known; at least the 9 hex digits the sdist records (vllm/_version.py commit_id)
# otherwise. Both the git and the sdist fetch check the tree against it.
GitSha = Annotated[str, Field(pattern=r"^[0-9a-f]{9}([0-9a-f]{31})?$")]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
ExactVersion = Annotated[
    str, Field(pattern=r"^[0-9]+(\.[0-9]+)*([a-z]+[0-9]+)?(\.post[0-9]+)?(\+[A-Za-z0-9.]+)?$")
]
HttpsUrl = Annotated[str, Field(pattern=r"^https://\S+$")]
Platform = Literal["linux/amd64", "linux/arm64"]
# an image reference by the strict grammar of tools/core/refs.py (it lands on a Dockerfile's FROM line)
ImageName = Annotated[str, AfterValidator(check_image_ref)]
# a vendor named in vendors.toml (tools/core/vendors.py checks the name against the table)
Vendor = str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Upstream(Strict):
    name: str
    version: ExactVersion
    git_url: HttpsUrl
    git_tag: str
    git_commit: GitSha
    sdist_url: HttpsUrl
    sdist_sha256: Sha256

    @model_validator(mode="after")
    def _sdist_matches_version(self) -> Upstream:
        if not self.sdist_url.endswith(f"-{self.version}.tar.gz"):
            raise ValueError(f"sdist_url does not name version {self.version}")
        return self


class File(Strict):
    """A downloadable artifact, pinned by content."""

    url: HttpsUrl
    sha256: Sha256

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("#", 1)[0]


class Wheel(File):
    name: str
    version: ExactVersion


class LocalWheel(Strict):
    """A wheel found in a local wheel folder (pip's find-links), not on any index; pinned by content."""

    name: str
    version: ExactVersion
    filename: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]+\.whl$")]
    sha256: Sha256


class RegistryBase(Strict):
    """A base image pulled from a registry, pinned by tag and digest."""

    kind: Literal["registry"] = "registry"
    image: ImageName
    digest: Digest | None = None
    # Where no digest could be read yet: why. A build then refuses unless --base-image names one.
    unresolved: str | None = None

    @model_validator(mode="after")
    def _digest_or_reason(self) -> RegistryBase:
        if (self.digest is None) == (self.unresolved is None):
            raise ValueError("give exactly one of digest (sha256:...) or unresolved (why there is none yet)")
        return self

    @property
    def ref(self) -> str:
        return f"{self.image}@{self.digest}" if self.digest else self.image


class DebootstrapBase(Strict):
    """A base image made locally (no registry is reachable): debootstrap + docker import."""

    kind: Literal["debootstrap"]
    image: ImageName
    suite: str
    variant: str
    mirror: HttpsUrl | Annotated[str, Field(pattern=r"^http://\S+$")]
    include: tuple[str, ...]

    @property
    def ref(self) -> str:
        return self.image


PinnedRequirement = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*$")]


class FlagGems(Strict):
    version: ExactVersion
    wheel: File
    # flag-gems hard-pins numpy/packaging/sqlalchemy/PyYAML; beside vLLM those pins would downgrade the
    # engine's own. We install it --no-deps plus the runtime deps it imports, each pinned here.
    runtime_deps: tuple[PinnedRequirement, ...]


class FlagScale(Strict):
    """FlagScale, installed --no-deps (its metadata pins torch 2.7.1 and dev tools) plus what `serve` imports."""

    version: ExactVersion
    wheel: File
    runtime_deps: tuple[PinnedRequirement, ...]


class Ray(Strict):
    """Ray, for images whose recipe spans machines; installed --no-deps plus what the engine image lacks."""

    version: ExactVersion
    runtime_deps: tuple[PinnedRequirement, ...]


class VendorPins(Strict):
    platforms: tuple[Platform, ...]
    base: RegistryBase | DebootstrapBase = Field(discriminator="kind")
    python: Annotated[str, Field(pattern=r"^3\.[0-9]+$")]
    torch: ExactVersion
    torch_index_url: HttpsUrl | None = None
    # the base image's glibc: the manylinux level the vendor's Python lock is resolved for
    glibc: Annotated[str, Field(pattern=r"^2\.[0-9]{1,2}$")] = "2.28"
    # Wheels that are not on the index the build uses (the CPU torch lies in a local wheel folder).
    wheelhouse: tuple[LocalWheel, ...] = ()
    # The upstream binary wheel of exactly the pinned version (fast path). None: the patched tree is
    # always installed from source (Ascend: VLLM_TARGET_DEVICE=empty, pure Python, then vllm-ascend).
    engine_wheel: Wheel | None = None
    extra_packages: tuple[str, ...] = ()
    # further exact versions a vendor's template needs (vendors.toml required_pins), e.g. torch_npu
    pins: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ExactVersion] = {}


class Lock(Strict):
    schema_version: Literal[1]
    upstream: Upstream
    flaggems: FlagGems
    flagscale: FlagScale
    ray: Ray
    vendors: dict[Vendor, VendorPins]

    @model_validator(mode="after")
    def _all_vendors(self) -> Lock:
        table = vendors.table()
        missing = [v for v in table if v not in self.vendors]
        if missing:
            raise ValueError(f"missing vendor section(s): {', '.join(missing)}")
        unknown = [v for v in self.vendors if v not in table]
        if unknown:
            raise ValueError(f"vendor section(s) {', '.join(unknown)} not in vendors.toml")
        for name, info in table.items():
            lacking = [p for p in info.required_pins if p not in self.vendors[name].pins]
            if lacking:
                raise ValueError(f"vendors.{name}.pins needs {', '.join(lacking)} (vendors.toml required_pins)")
        for vendor, pins in self.vendors.items():
            if pins.engine_wheel and pins.engine_wheel.version != self.upstream.version:
                raise ValueError(
                    f"vendors.{vendor}.engine_wheel.version {pins.engine_wheel.version} is not the "
                    f"upstream version {self.upstream.version}"
                )
        return self


class LoadedLock(BaseModel):
    """The lock plus where it came from and the hash of its bytes."""

    model_config = ConfigDict(frozen=True)

    lock: Lock
    path: Path
    sha256: str


def load_lock(path: Path | None = None) -> LoadedLock:
    path = path or paths.lock_file()
    fix = "edit versions.lock; every pin is exact (version, sha256, 40-hex commit, sha256: digest)"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise UserError("lock file not found", where=str(path), fix="restore versions.lock from git") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"lock file is not valid TOML: {exc}", where=str(path), fix=fix) from exc
    try:
        lock = Lock.model_validate(data)
    except ValidationError as exc:
        raise to_user_error(exc, path, "invalid lock", fix) from exc
    return LoadedLock(lock=lock, path=path, sha256=hashlib.sha256(raw).hexdigest())
