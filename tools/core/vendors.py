"""The vendor table (vendors.toml): every fact about a chip vendor that is not a pin, validated once.

The lock schema, run profiles, card names, op-test device handling, CLI commands, nox sessions and the
release matrix are all derived from it, so a new vendor is data, not code.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from tools import PROJECT_ROOT
from tools.core import tomlfile
from tools.core.errors import UserError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any

    from tools.core.vendor_model import VendorInfo

_NAME = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_FIX = "edit vendors.toml (see the comments at its top)"


def __getattr__(name: str) -> Any:
    if name == "VendorInfo":  # the schema lives in vendor_model (pydantic is imported only when rows are read)
        from tools.core.vendor_model import VendorInfo

        return VendorInfo
    raise AttributeError(name)

def table_file() -> Path:
    return Path(os.environ.get("FLAGREL_VENDORS", PROJECT_ROOT / "vendors.toml"))


@functools.cache
def _rows(path: Path) -> dict[str, dict[str, Any]]:
    """The table's rows as TOML gives them (names checked, rows not yet validated)."""
    fix = _FIX
    try:
        data = tomlfile.loads(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError as exc:
        raise UserError("vendor table not found", where=str(path), fix="restore vendors.toml from git") from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError, UnicodeDecodeError
        raise UserError(f"vendor table is not valid TOML: {exc}", where=str(path), fix=fix) from exc
    for name, row in data.items():
        if not isinstance(row, dict):
            raise UserError(f"vendor {name!r} must be a table", where=f"{path} -> {name}", fix=fix)
        if not _NAME.match(name):
            raise UserError(f"invalid vendor name {name!r}", where=f"{path} -> {name}",
                            fix="a vendor name is 2-16 lower-case letters and digits, starting with a letter")
    if not data:
        raise UserError("the vendor table lists no vendor", where=str(path), fix=fix)
    return data


@functools.cache
def _load(path: Path) -> dict[str, VendorInfo]:
    from pydantic import ValidationError

    from tools.core.validation import to_user_error
    from tools.core.vendor_model import VendorInfo

    fix = _FIX
    table: dict[str, VendorInfo] = {}
    for name, row in _rows(path).items():
        try:
            table[name] = VendorInfo.model_validate({"name": name, **row})
        except ValidationError as exc:
            raise to_user_error(exc, path, f"invalid vendor {name!r}", fix) from exc
    return table


def table() -> dict[str, VendorInfo]:
    return _load(table_file())


def names() -> tuple[str, ...]:
    """The vendors in table order; their rows are validated when a command reads them (table(), get())."""
    return tuple(_rows(table_file()))


def get(name: str) -> VendorInfo:
    vendors = table()
    if name not in vendors:
        raise UserError(f"unknown vendor {name!r}", where=str(table_file()),
                        fix=f"use one of {', '.join(vendors)}, or add a table for it to vendors.toml")
    return vendors[name]
