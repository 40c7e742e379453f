"""The one exception type the CLI turns into a single error line and exit code 2."""
import contextlib
import errno
import contextvars


class DebaError(Exception):
    """Bad input or an impossible request, described in one line for the user."""

    exit_code = 2


class OutputError(DebaError, OSError):
    """An output path that cannot be written (a folder in the way, a parent that is a file, no permission).
    Also an OSError, so code that already handles a failed write as OSError keeps doing so."""


class StorageError(OutputError):
    """The file system refused a write or read it should take (no space, read-only, permission, I/O error).
    Not bad input: exit code 74 (sysexits' EX_IOERR). Whatever was being written is left out whole, so the
    run resumes once there is room (``--resume``)."""

    exit_code = 74


# errno values that mean "the storage refused", not "the path is wrong"
STORAGE_ERRNOS = frozenset(
    n for n in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO",
                                                         "EFBIG", "ENOMEM"))
    if n is not None
)


def storage_error(message: str, err: OSError) -> OutputError:
    """The error to raise for a failed file operation: StorageError (74) for a refusing file system,
    OutputError (2) for a path that cannot be right (a file where a folder should be)."""
    cls = StorageError if err.errno in STORAGE_ERRNOS else OutputError
    return cls(message)


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
