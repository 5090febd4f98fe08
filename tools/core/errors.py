"""The exceptions a user sees: what went wrong, where, and how to fix it; and the exit codes they map to.

Exit codes (README "Exit codes"; kept through nox by noxfile._tool):
  0    success
  1    the work ran and a check failed: build, smoke, op tests, patches that do not apply, a publish refused
       because the image's validation is missing, failed or does not match
  2    bad input, usage or environment: nothing was attempted (recipe, lock, arguments, registry, engine)
  130  interrupted (Ctrl-C, SIGINT or SIGTERM); temporary files were cleaned up first
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error caused by input or environment; printed as one message, never as a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class CheckFailed(UserError):
    """The work ran and did not pass (a build step, a smoke serve, the op tests, the publish gate)."""

    exit_code = EXIT_FAILED


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and context manager cleans up on the way out."""
