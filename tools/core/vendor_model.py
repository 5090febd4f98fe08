"""The vendor table's row schema (pydantic), kept apart so that reading vendor names costs no pydantic import."""

from __future__ import annotations

import glob
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

VendorName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{1,15}$")]
_FLAG = Annotated[str, Field(pattern=r"^[^\n\r\x00]+$")]
_ABS = Annotated[str, Field(pattern=r"^/[^\n\r\x00:]*$")]
_MOUNT = Annotated[str, Field(pattern=r"^/[^\n\r\x00:]*:/[^\n\r\x00:]*(:ro|:rw)?$")]
_ENV_KEY = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class VendorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VendorName
    display_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}$")]
    # the accelerator the engine runs on: none means no device exists for FlagGems
    device: Literal["none", "gpu", "npu"]
    runner: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], ...]
    required_pins: tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ...] = ()
    run_flags: tuple[_FLAG, ...] = ()
    # shell glob patterns only (they are expanded by the user's shell in the card's docker run)
    device_globs: tuple[Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./*?\[\]-]+$")], ...] = ()
    devices: tuple[_ABS, ...] = ()
    mounts: tuple[_MOUNT, ...] = ()
    env: dict[_ENV_KEY, str] = {}
    entrypoint_sources: tuple[_ABS, ...] = ()
    # free disk a build asks for where the engine keeps images (base, layers, build cache); it stops before
    # starting, not minutes in, when the machine has less
    build_disk_gb: Annotated[float, Field(gt=0, le=100_000)] = 40.0

    @property
    def has_device(self) -> bool:
        return self.device != "none"

    def host_devices(self) -> list[str]:
        """Devices for `docker run`: those the globs find on this host, then the fixed ones."""
        found = sorted({path for pattern in self.device_globs for path in glob.glob(pattern)})
        return found + list(self.devices)
