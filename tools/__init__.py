"""FlagRelease: lock + recipe -> plan -> patched source -> build context -> image -> report -> release."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
