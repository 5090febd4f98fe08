"""Validation results, bound to what was tested: build sessions, smoke and op-tests write them; publish reads them.

A result names the image id, the recipe, the checks' version and the recipe configuration the check ran
with (and its sha256). It lives under build/results/<image id>/<recipe>/<kind>.json, so a run of another
recipe on the same image never overwrites or satisfies this recipe's. Publishing compares every part with
the image and the recipe as they are now, and names what differs (see `mismatch`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tools.core import paths
from tools.core.errors import UserError
from tools.core.recipe import Recipe

Kind = Literal["smoke", "op-tests"]
KINDS: tuple[Kind, ...] = ("smoke", "op-tests")
# The checks' own version: bump one when what its check proves changes (tools/stages/smoke_checks.py,
# tools/optests cases and tolerances). Results of another version no longer let an image be published.
CHECKS_VERSION: dict[str, int] = {"smoke": 2, "op-tests": 2}
SESSION: dict[str, str] = {"smoke": "smoke", "op-tests": "op-tests"}


def tested_config(recipe: Recipe, kind: Kind, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the recipe a check's verdict depends on, plus any command-line overrides."""
    if kind == "smoke":
        config: dict[str, Any] = {
            "vendor": recipe.vendor,
            "model": recipe.model.model_dump(mode="json", include={"id", "source", "path", "host_path"}),
            "serve": recipe.serve.model_dump(mode="json"),
            "run": recipe.run.model_dump(mode="json"),
            "tests": {"smoke": recipe.tests.smoke.model_dump(mode="json")},
        }
    else:
        config = {
            "vendor": recipe.vendor,
            "run": recipe.run.model_dump(mode="json", include={"shm_size"}),
            "tests": {"op_tests": recipe.tests.op_tests.model_dump(mode="json")},
        }
    if overrides:
        config["overrides"] = dict(sorted(overrides.items()))
    return config


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class StoredResult:
    kind: Kind
    image_id: str
    recipe: str
    passed: bool
    config: dict[str, Any]
    config_hash: str
    checks_version: int
    # why a check was skipped on purpose (--skip-smoke / --skip-op-tests); then passed is False
    skipped_reason: str | None = None
    report: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def result_for(recipe: Recipe, kind: Kind, image_id: str, *, passed: bool, overrides: dict[str, Any] | None = None,
               skipped_reason: str | None = None, report: str | None = None,
               summary: dict[str, Any] | None = None) -> StoredResult:
    """A result of `kind` for this recipe as it is now (and the overrides the run used)."""
    config = tested_config(recipe, kind, overrides)
    return StoredResult(kind=kind, image_id=image_id, recipe=recipe.name, passed=passed, config=config,
                        config_hash=config_hash(config), checks_version=CHECKS_VERSION[kind],
                        skipped_reason=skipped_reason, report=report, summary=summary or {})


def _image_dir(image_id: str) -> Path:
    return paths.build_dir() / "results" / image_id.replace(":", "-")


def result_path(image_id: str, recipe: str, kind: Kind) -> Path:
    return _image_dir(image_id) / recipe / f"{kind}.json"


def store(result: StoredResult) -> Path:
    path = result_path(result.image_id, result.recipe, result.kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


_FIELDS = {f for f in StoredResult.__dataclass_fields__}
_REQUIRED = {"kind", "image_id", "recipe", "passed", "config", "config_hash", "checks_version"}


def load(image_id: str, recipe: str, kind: Kind) -> StoredResult | None:
    """This recipe's result of `kind` for the image, or None; a damaged file is one clear error."""
    path = result_path(image_id, recipe, kind)
    if not path.is_file():
        return None
    fix = (f"delete it (rm '{path}') and validate again: nox -s {SESSION[kind]} -- {recipe} --image IMAGE "
           f"(or rebuild with the build session)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"stored {kind} result is not readable JSON ({exc.__class__.__name__}: {exc})",
                        where=str(path), fix=fix) from exc
    problem = None
    if not isinstance(data, dict):
        problem = f"is a JSON {type(data).__name__}, not an object"
    elif missing := sorted(_REQUIRED - data.keys()):
        problem = f"lacks {', '.join(missing)} (written by an older FlagRelease, or damaged)"
    elif unknown := sorted(data.keys() - _FIELDS):
        problem = f"has unknown keys {', '.join(unknown)}"
    elif not (isinstance(data["passed"], bool) and isinstance(data["config"], dict)
              and isinstance(data["config_hash"], str) and isinstance(data["checks_version"], int)
              and isinstance(data.get("summary", {}), dict)):
        problem = "has values of the wrong type"
    elif data["kind"] != kind:
        problem = f"holds a {data['kind']!r} result, not {kind!r}"
    if problem:
        raise UserError(f"stored {kind} result {problem}", where=str(path), fix=fix)
    return StoredResult(**data)


def recipes_with_results(image_id: str, kind: Kind) -> list[str]:
    folder = _image_dir(image_id)
    return sorted(p.parent.name for p in folder.glob(f"*/{kind}.json")) if folder.is_dir() else []


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))]
    return [] if old == new else [prefix or "(whole configuration)"]


def mismatch(result: StoredResult, recipe: Recipe, image_id: str) -> str | None:
    """Why a stored result does not speak for this image and recipe as they are now; None when it does."""
    if result.image_id != image_id:
        return f"it was recorded for image {result.image_id[:19]}, not {image_id[:19]}"
    if result.recipe != recipe.name:
        return f"it was recorded for recipe {result.recipe!r}, not {recipe.name!r}"
    if result.checks_version != CHECKS_VERSION[result.kind]:
        return (f"it ran version {result.checks_version} of the {result.kind} checks; this checkout's are "
                f"version {CHECKS_VERSION[result.kind]}")
    current = tested_config(recipe, result.kind)
    if result.config_hash != config_hash(current):
        overrides = result.config.get("overrides")
        if overrides:
            shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            return f"it ran with command-line overrides ({shown}), not the recipe's configuration"
        changed = _diff(result.config, current)
        if not changed:  # the stored config was edited by hand: the hash is what was tested
            return "its configuration hash does not match the configuration it stores"
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        return f"the recipe changed since it ran: {', '.join(changed[:6])}{more}"
    return None
