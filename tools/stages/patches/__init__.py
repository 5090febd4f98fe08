"""Patch-stack policy: which patches, in which order, where they live, and what a workspace may hold.

Layout: patches/vllm/common/ then patches/vllm/<vendor>/, each with a `series` file naming its patches
(git format-patch mails) in order. A vendor's stack is common + vendor. A vendor workspace
(workspaces/vllm-<vendor>) is a git repository: the pristine upstream tree as base commit
(refs/flagrelease/base), then one commit per patch, whose message carries the patch's file name
(`Patch-Filename:`, taken out again on export). Its state (which commit came from which patch file)
lives in .git/flagrelease/state.json. Patches named NAME.patch.age are age-encrypted (keys.py). The
mechanism (git calls, mail handling) is tools/mech/git.py and gitmail.py; nothing here runs git directly.

Modules: stack (series, patch files, identity), keys (encrypted patches), workspace (applying),
edit (patch, unpatch, export-patches), canonical (what export writes), verify (check-patches, build
trees), vendor_import (import-patches).

Names are loaded on first use (PEP 562): `patch` and `unpatch` import only what they run.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the quick commands load no typing)
if TYPE_CHECKING:
    from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "keys": (),
    "canonical": (),
    "edit": ("ExportResult", "PatchResult", "UnpatchResult", "export", "patch", "unpatch",),
    "stack": (
        "APPLIER", "BACKUP_PREFIX", "BASE_REF", "BRANCH", "COMMON", "PATCH_NAME", "PROJECT", "STAMP_MODULE",
        "PatchFile", "Series", "StackInfo", "check_vendor", "patch_subject", "read_series", "stack_info",
        "stack_root", "stamp_module_text", "stray_message", "stray_patches", "touched_paths",
    ),
    "verify": ("VendorCheck", "check", "patched_source", "patched_tree",),
    "workspace": (
        "ApplyFailure", "Edits", "WorkspaceState", "apply_stack", "find_edits", "open_workspace",
        "pristine_for", "workspace_dir",
    ),
    "vendor_import": ("ImportResult", "import_series",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        if name in _EXPORTS:  # a submodule: patches.workspace, patches.keys, ...
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
