"""Turn pydantic validation errors into one UserError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tools.core.errors import UserError


def key_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def to_user_error(exc: ValidationError, file: Path, what: str, fix: str) -> UserError:
    problems = []
    for err in exc.errors():
        key = key_path(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing"
        problems.append(f"{key}: {msg}")
    first = problems[0]
    more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
    return UserError(f"{what}: {first}{more}", where=f"{file} -> {first.split(':')[0]}", fix=fix)
