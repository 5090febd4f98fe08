"""Patch-stack policy: which patches, in which order, where they live, and what a workspace may hold.

Layout: patches/vllm/common/ then patches/vllm/<vendor>/, each with a `series` file naming its patches
(git format-patch mails) in order. A vendor's stack is common + vendor. A vendor workspace
(workspaces/vllm-<vendor>) is a git repository: the pristine upstream tree as base commit
(refs/flagrelease/base), then one commit per patch. Its state (which commit came from which patch file)
lives in .git/flagrelease/state.json. The mechanism (git calls) is tools/git.py; nothing here runs git
directly.
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
    stray_patches,
    touched_paths,
)
from tools.stages.patches.verify import (  # noqa: F401
    VendorCheck,
    check,
    patched_tree,
)
from tools.stages.patches.workspace import (  # noqa: F401
    ApplyFailure,
    Edits,
    WorkspaceState,
    apply_stack,
    find_edits,
    open_workspace,
    workspace_dir,
)
