"""Reading the project's text inputs (recipes, series files, YAML) with one clear message for each fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming the same key twice (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            earlier = seen.get(key)
        except TypeError:  # an unhashable key: the base constructor reports it
            continue
        if earlier is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {earlier.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path, *, what: str, fix: str) -> Any:
    """Parse a UTF-8 YAML file with unique keys; every fault is one UserError naming the file and line."""
    text = read_utf8(path, what=what)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or exc
        raise UserError(f"{what} is not valid YAML: {problem}", where=where, fix=fix) from exc
