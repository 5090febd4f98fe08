"""YAML inputs (recipes): UTF-8, unique keys, every fault one UserError naming the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tools.core.errors import UserError
from tools.core.textfile import read_utf8


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
