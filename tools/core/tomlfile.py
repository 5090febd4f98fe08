"""TOML inputs (versions.lock, vendors.toml) parsed once per content.

Importing tomllib and parsing costs about 7 ms of a quick command's ~40 ms (patch, unpatch): its regexes
are compiled on import. The parse of a file is therefore kept as JSON beside the other caches, together
with the exact text it came from; it is used only when the file's text is still exactly that text, so an
edit (or another checkout's file) is always parsed afresh. The memo is an optimisation: when it cannot be
read or written, the file is parsed as before.
"""

from __future__ import annotations

import contextlib
import json
import os
from binascii import crc32
from pathlib import Path

from tools.core import paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any


def _memo_file(path: Path) -> Path:
    where = os.path.abspath(path)
    return paths.cache_dir() / "parsed" / f"{path.name}-{crc32(where.encode()):08x}.json"


def loads(text: str, path: Path) -> dict[str, Any]:
    """tomllib.loads(text) for the file at `path` (the memo's key); a malformed text raises
    tomllib.TOMLDecodeError, a ValueError, exactly as tomllib does."""
    memo = _memo_file(path)
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if known["text"] == text:
            return known["data"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import tomllib

    data = tomllib.loads(text)
    try:
        encoded = json.dumps({"text": text, "data": data})
    except (TypeError, ValueError):  # dates and times have no JSON form: such a file is parsed each time
        return data
    partial = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(encoded, encoding="utf-8")
        os.replace(partial, memo)  # readers see the old memo or the new one, never half of one
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return data
