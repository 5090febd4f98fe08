"""Reading the project's text inputs (recipes, series files) with one clear message for each fault.
(YAML parsing lives in yamlfile.py: the quick patch commands read text but never import PyYAML.)"""

from __future__ import annotations

from pathlib import Path

from tools.core.errors import UserError


def read_utf8(path: Path, *, what: str, fix: str | None = None) -> str:
    """The file's text; a file that is not UTF-8 is refused naming the line and the byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start:exc.start + 1].hex()
        raise UserError(f"{what} is not UTF-8 text: byte 0x{byte} at line {line}, column {column} ({exc.reason})",
                        where=f"{path}:{line}",
                        fix=fix or "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or remove the byte") \
            from exc
