"""Files fetched by URL and kept only when their sha256 matches the pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tools.core.errors import UserError
from tools.mech.console import info


def download_verified(url: str, dest: Path, sha256: str, *, timeout: float = 60,
                      where: str = "versions.lock -> upstream.sdist_url") -> Path:
    """`dest` holding `url`'s bytes, checked against `sha256`; a bad download is deleted, never kept."""
    import requests  # only when downloading: keeps the warm commands (patch, unpatch) quick to start

    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    info(f"  downloading {url}")
    try:
        with requests.get(url, stream=True, timeout=(15, timeout)) as resp:
            resp.raise_for_status()
            with part.open("wb") as out:
                for chunk in resp.iter_content(chunk_size=1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise UserError(
            f"cannot download {url}: {exc}",
            where=where,
            fix="check the network, HTTPS_PROXY and REQUESTS_CA_BUNDLE (TLS-intercepting proxies), "
                f"or put the verified file at {dest}",
        ) from exc
    got = digest.hexdigest()
    if got != sha256:
        part.unlink(missing_ok=True)  # `dest`, if any, is left as it was: it is never trusted without this check
        raise UserError(
            f"sha256 mismatch for {url}: expected {sha256}, got {got}; nothing was unpacked",
            where=where,
            fix="the file changed or the download was tampered with: check the URL and the pin "
                "(pins change only on purpose, in a reviewed commit)",
        )
    part.replace(dest)
    return dest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
