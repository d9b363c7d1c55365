"""The exceptions that the command line turns into a clear message instead of a traceback,
and the exit statuses that tell a caller (Modal, a script) whether trying again can help."""


class TinyCatsError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do.

    Trying again without a change fails the same way, so on Modal it is refused, not retried.
    """


class TransientError(TinyCatsError):
    """A problem that may go away by itself (the network, a server): worth another try."""


EXIT_USAGE = 2  # a config, usage or user-file error: it fails the same way every time
EXIT_CONTINUE = 75  # the attempt used its time budget at a checkpoint: run it again to go on
EXIT_INTERRUPTED = 143  # stopped by a signal at a checkpoint: a retry continues the run
