"""Turn pydantic validation errors into one UserError naming the file and the key; named grammars for fields."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

from tools.core.errors import UserError

# loc entries pydantic adds for the branches of a union (str | int | ...), not keys of the input
_BRANCH = re.compile(r"^(str|int|float|bool|constrained-str|none|is-instance\[.*|(list|tuple|dict|function-\w+)\[.*)$")


def grammar(pattern: str, describe: str, *, max_length: int = 4096) -> Any:
    """A str type checked against `pattern` (full match) whose error says `describe`, not the regex."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_length:
            raise ValueError(f"longer than {max_length} characters")
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {describe}")
        return value

    return Annotated[str, AfterValidator(check)]


def key_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]":
            parts.append(" (the key)")
        elif isinstance(item, str) and _BRANCH.match(item):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "missing"
    return str(err["msg"]).removeprefix("Value error, ")


def to_user_error(exc: ValidationError, file: Path, what: str, fix: str) -> UserError:
    # one problem per key: of a union's failed branches, the text branch's grammar message says most
    by_key: dict[str, tuple[str, bool]] = {}
    for err in exc.errors():
        key = key_path(tuple(err["loc"]))
        preferred = err["type"] in {"value_error", "string_pattern_mismatch", "literal_error", "extra_forbidden"}
        if key not in by_key or (preferred and not by_key[key][1]):
            by_key[key] = (_message(err), preferred)
    problems = [f"{key}: {msg}" for key, (msg, _) in by_key.items()]
    first = problems[0]
    more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
    return UserError(f"{what}: {first}{more}", where=f"{file} -> {first.split(':')[0]}", fix=fix)
