"""The one exception type the CLI turns into a single error line and exit code 2."""


class DebaError(Exception):
    """Bad input or an impossible request, described in one line for the user."""

    exit_code = 2
