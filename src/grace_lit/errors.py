"""One exception type for user-facing problems, so entry points can print a message instead of a traceback."""


class GraceError(RuntimeError):
    """A problem the user can fix; the message names it and the fix."""
