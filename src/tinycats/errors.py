"""The one exception type that the command line turns into a clear message instead of a traceback."""


class TinyCatsError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""
