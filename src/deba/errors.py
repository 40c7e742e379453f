"""The one exception type the CLI turns into a single error line and exit code 2."""


class DebaError(Exception):
    """Bad input or an impossible request, described in one line for the user."""

    exit_code = 2


class OutputError(DebaError, OSError):
    """An output path that cannot be written (a folder in the way, a parent that is a file, no permission).
    Also an OSError, so code that already handles a failed write as OSError keeps doing so."""
