"""The vendor table (vendors.toml): every fact about a chip vendor that is not a pin, validated once.

The lock schema, run profiles, card names, op-test device handling, CLI commands, nox sessions and the
release matrix are all derived from it, so a new vendor is data, not code.
"""

from __future__ import annotations

import functools
import glob
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools import PROJECT_ROOT
from tools.core.errors import UserError
from tools.core.validation import to_user_error

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

    @property
    def has_device(self) -> bool:
        return self.device != "none"

    def host_devices(self) -> list[str]:
        """Devices for `docker run`: those the globs find on this host, then the fixed ones."""
        found = sorted({path for pattern in self.device_globs for path in glob.glob(pattern)})
        return found + list(self.devices)


def table_file() -> Path:
    return Path(os.environ.get("FLAGREL_VENDORS", PROJECT_ROOT / "vendors.toml"))


@functools.cache
def _load(path: Path) -> dict[str, VendorInfo]:
    fix = "edit vendors.toml (see the comments at its top)"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("vendor table not found", where=str(path), fix="restore vendors.toml from git") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"vendor table is not valid TOML: {exc}", where=str(path), fix=fix) from exc
    table: dict[str, VendorInfo] = {}
    for name, row in data.items():
        if not isinstance(row, dict):
            raise UserError(f"vendor {name!r} must be a table", where=f"{path} -> {name}", fix=fix)
        try:
            table[name] = VendorInfo.model_validate({"name": name, **row})
        except ValidationError as exc:
            raise to_user_error(exc, path, f"invalid vendor {name!r}", fix) from exc
    if not table:
        raise UserError("the vendor table lists no vendor", where=str(path), fix=fix)
    return table


def table() -> dict[str, VendorInfo]:
    return _load(table_file())


def names() -> tuple[str, ...]:
    return tuple(table())


def get(name: str) -> VendorInfo:
    vendors = table()
    if name not in vendors:
        raise UserError(f"unknown vendor {name!r}", where=str(table_file()),
                        fix=f"use one of {', '.join(vendors)}, or add a table for it to vendors.toml")
    return vendors[name]
