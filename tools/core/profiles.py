"""Vendor run profiles: the docker run flags the release notes use, as data.

Smoke tests, operator tests and model cards all read them from here.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field

from tools.core.lock import Vendor


@dataclass(frozen=True)
class RunProfile:
    vendor: Vendor
    flags: tuple[str, ...]
    # host paths that must exist for the flag to make sense (devices, driver mounts)
    devices: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


_COMMON_GPU = (
    "--ipc=host",
    "--security-opt=seccomp=unconfined",
    "--ulimit", "stack=67108864",
    "--ulimit", "memlock=-1",
    "--ulimit", "nofile=1048576:1048576",
    "--shm-size=32G",
)

PROFILES: dict[Vendor, RunProfile] = {
    # robobrain2-7b / ernie / kimi release notes
    "nvidia": RunProfile("nvidia", ("--gpus", "all", *_COMMON_GPU)),
    # robobrain2-32b-ascend release note
    "ascend": RunProfile(
        "ascend",
        ("--shm-size=32G", "--privileged=true"),
        devices=("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
        mounts=(
            "/usr/local/Ascend/driver:/usr/local/Ascend/driver:ro",
            "/usr/local/bin/npu-smi:/usr/local/bin/npu-smi:ro",
            "/usr/local/dcmi:/usr/local/dcmi:ro",
            "/etc/ascend_install.info:/etc/ascend_install.info:ro",
        ),
        env={"PYTORCH_NPU_ALLOC_CONF": "max_split_size_mb:256", "CPU_AFFINITY_CONF": "2"},
    ),
    "cpu": RunProfile("cpu", ()),
}


def docker_run_flags(vendor: Vendor, *, shm_size: str | None = None) -> list[str]:
    """Flags for `docker run`; Ascend devices are enumerated on this host (davinci0..N)."""
    profile = PROFILES[vendor]
    flags = list(profile.flags)
    if shm_size:
        flags = [f for f in flags if not f.startswith("--shm-size")] + [f"--shm-size={shm_size}"]
    devices = list(profile.devices)
    if vendor == "ascend":
        devices = sorted(glob.glob("/dev/davinci[0-9]*")) + devices
    for dev in devices:
        flags += ["--device", dev]
    for mount in profile.mounts:
        flags += ["-v", mount]
    for key, value in profile.env.items():
        flags += ["-e", f"{key}={value}"]
    return flags
