"""Image label keys, defined once. Builds write them; smoke, publish and cards read them back."""

from __future__ import annotations

LOCAL_REPOSITORY = "flagrelease-local"


def local_image(recipe: str, tag: str = "latest") -> str:
    """The local tag a build writes for a recipe (and the one smoke, op-tests and publish default to)."""
    return f"{LOCAL_REPOSITORY}/{recipe}:{tag}"


OCI = "org.opencontainers.image."
OURS = "io.flagrelease."

SOURCE = OCI + "source"
REVISION = OCI + "revision"
VERSION = OCI + "version"
CREATED = OCI + "created"
TITLE = OCI + "title"

RECIPE = OURS + "recipe"
VENDOR = OURS + "vendor"
VLLM_VERSION = OURS + "vllm.version"
VLLM_COMMIT = OURS + "vllm.commit"
STACK_HASH = OURS + "patches.stack-hash"
STACK_ID = OURS + "patches.stack-id"
FLAGGEMS_VERSION = OURS + "flaggems.version"
LOCK_HASH = OURS + "lock.sha256"
CONTENT_KEY = OURS + "content-key"
INSTALL_MODE = OURS + "install-mode"

# Facts read from the built image itself (tools/stages/facts.py), added once the installed set is checked.
FACTS_PYTHON = OURS + "facts.python"
FACTS_TORCH = OURS + "facts.torch"
FACTS_ENGINE = OURS + "facts.engine"
FACTS_OS = OURS + "facts.os"
FACTS_PACKAGES = OURS + "facts.packages"  # how many Python distributions
FACTS_PACKAGES_SHA256 = OURS + "facts.packages.sha256"  # of the sorted name==version lines
FACTS_LOCK = OURS + "facts.lock"  # "equal to locks/<vendor>.txt" or "none"
