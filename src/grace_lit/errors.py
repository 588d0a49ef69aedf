"""One exception type for user-facing problems, so entry points can print a message instead of a traceback."""


class GraceError(RuntimeError):
    """A problem the user can fix; the message names it and the fix."""


class Refused(GraceError):
    """A command refused before it read data or trained (a bad setting): it leaves no run directory behind."""
