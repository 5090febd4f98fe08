"""Vendor run profiles: the docker run flags the release notes use, read from the vendor table.

Smoke tests, operator tests and model cards all take them from here.
"""

from __future__ import annotations

from tools.core import vendors


def docker_run_flags(vendor: str, *, shm_size: str | None = None, enumerate_devices: bool = True) -> list[str]:
    """Flags for `docker run`: the vendor's flags, its devices, mounts and env. Devices matched by the
    vendor's globs are those present on this host; without enumerate_devices only the fixed ones."""
    info = vendors.get(vendor)
    flags = list(info.run_flags)
    if shm_size:
        flags = [f for f in flags if not f.startswith("--shm-size")] + [f"--shm-size={shm_size}"]
    for dev in info.host_devices() if enumerate_devices else info.devices:
        flags += ["--device", dev]
    for mount in info.mounts:
        flags += ["-v", mount]
    for key, value in info.env.items():
        flags += ["-e", f"{key}={value}"]
    return flags
