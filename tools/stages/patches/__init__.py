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
"""

from __future__ import annotations

from tools.stages.patches.edit import (  # noqa: F401
    ExportResult,
    PatchResult,
    UnpatchResult,
    export,
    patch,
    unpatch,
)
from tools.stages.patches.stack import (  # noqa: F401
    APPLIER,
    BACKUP_PREFIX,
    BASE_REF,
    BRANCH,
    COMMON,
    PATCH_NAME,
    PROJECT,
    STAMP_MODULE,
    PatchFile,
    Series,
    StackInfo,
    check_vendor,
    patch_subject,
    read_series,
    stack_info,
    stack_root,
    stamp_module_text,
    stray_message,
    stray_patches,
    touched_paths,
)
from tools.stages.patches.vendor_import import (  # noqa: F401
    ImportResult,
    import_series,
)
from tools.stages.patches.verify import (  # noqa: F401
    VendorCheck,
    check,
    patched_source,
    patched_tree,
)
from tools.stages.patches.workspace import (  # noqa: F401
    ApplyFailure,
    Edits,
    WorkspaceState,
    apply_stack,
    find_edits,
    open_workspace,
    pristine_for,
    workspace_dir,
)
