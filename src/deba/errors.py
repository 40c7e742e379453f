"""The one exception type the CLI turns into a single error line and exit code 2."""
import contextlib
import contextvars


class DebaError(Exception):
    """Bad input or an impossible request, described in one line for the user."""

    exit_code = 2


class OutputError(DebaError, OSError):
    """An output path that cannot be written (a folder in the way, a parent that is a file, no permission).
    Also an OSError, so code that already handles a failed write as OSError keeps doing so."""


# Whether the user is on the command line (set by deba.cli for the command's run). Library messages name an
# option through option(), so the same check speaks "--b-min" to a shell user and "b_min" to Python.
_ON_CLI = contextvars.ContextVar("deba_on_cli", default=False)


def option(name: str) -> str:
    """An option as the user spells it: ``--name-with-dashes`` under the ``deba`` command, else ``name``."""
    return "--" + name.replace("_", "-") if _ON_CLI.get() else name


@contextlib.contextmanager
def on_cli():
    token = _ON_CLI.set(True)
    try:
        yield
    finally:
        _ON_CLI.reset(token)
