"""What a Python package index (PEP 691 JSON simple API) offers for a project: file names and sha256s.
Project agnostic: it knows indexes and wheel tags, nothing of locks or vendors."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from tools.core.errors import UserError
from tools.mech.console import redact

JSON_SIMPLE = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class IndexFile:
    filename: str
    sha256: str | None
    version: str | None  # from the file name; None when the name parses as neither wheel nor sdist
    tags: frozenset[Tag] | None  # None: an sdist


def project_files(session: object, index_url: str, name: str, *, timeout: float = 30) -> list[IndexFile]:
    """Every file the index lists for a project."""
    import requests

    url = f"{index_url.rstrip('/')}/{name}/"
    try:
        resp = session.get(url, headers={"Accept": JSON_SIMPLE}, timeout=timeout)  # type: ignore[attr-defined]
        resp.raise_for_status()
        data = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise UserError(f"the index did not answer for {name}: {redact(str(exc))}", where=redact(url),
                        fix="check the index URL, HTTPS_PROXY and REQUESTS_CA_BUNDLE") from exc
    files = []
    for entry in data.get("files", []):
        filename = entry.get("filename", "")
        version, tags = None, None
        try:
            if filename.endswith(".whl"):
                _, parsed, _, wheel_tags = parse_wheel_filename(filename)
                version, tags = str(parsed), frozenset(wheel_tags)
            else:
                version = str(parse_sdist_filename(filename)[1])
        except (InvalidWheelFilename, InvalidSdistFilename):
            pass
        files.append(IndexFile(filename, (entry.get("hashes") or {}).get("sha256"), version, tags))
    return files


def of_version(files: list[IndexFile], version: str) -> list[IndexFile]:
    """The files of one version (compared as PEP 440 versions: "2.13.0" is "2.13")."""
    from packaging.version import Version

    wanted = Version(version)
    return [f for f in files if f.version and Version(f.version) == wanted]


def installs(file: IndexFile, supported: frozenset[Tag]) -> bool:
    """A wheel with a supported tag, or an sdist (built at install)."""
    return file.tags is None or bool(file.tags & supported)


def supported_tags(python: str, arch: str, glibc: str) -> frozenset[Tag]:
    """The wheel tags CPython `python` (e.g. "3.12") installs on Linux `arch` with glibc `glibc` ("2.39")."""
    major, minor = (int(p) for p in python.split("."))
    glibc_minor = int(glibc.split(".")[1])
    platforms = [f"manylinux_2_{k}_{arch}" for k in range(glibc_minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    platforms += [f"{alias}_{arch}" for k, alias in legacy.items() if k <= glibc_minor]
    platforms.append(f"linux_{arch}")
    version = (major, minor)
    return frozenset([*cpython_tags(version, platforms=platforms), *compatible_tags(version, platforms=platforms)])
