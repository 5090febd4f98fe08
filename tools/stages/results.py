"""Validation results stored by image id: build sessions write them, publishing reads them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tools.core import paths

Kind = Literal["smoke", "op-tests"]


@dataclass(frozen=True)
class StoredResult:
    kind: Kind
    image_id: str
    passed: bool
    # why a check was skipped on purpose (--skip-smoke / --skip-op-tests); then passed is False
    skipped_reason: str | None = None
    report: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def _dir(image_id: str) -> Path:
    safe = image_id.replace(":", "-")
    return paths.build_dir() / "results" / safe


def store(result: StoredResult) -> Path:
    target = _dir(result.image_id)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{result.kind}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load(image_id: str, kind: Kind) -> StoredResult | None:
    path = _dir(image_id) / f"{kind}.json"
    if not path.is_file():
        return None
    return StoredResult(**json.loads(path.read_text(encoding="utf-8")))
