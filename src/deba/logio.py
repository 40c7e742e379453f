"""Reading and writing the project's JSON/JSONL files: atomic writes, schema versions, and
line-numbered errors for bad input."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import DebaError, OutputError, storage_error

SCHEMA_VERSION = 1


def _default(o: Any):
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(obj: Any) -> Any:
    """Replace non-finite floats with None: JSON has no NaN (spec: undefined values are null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    return json.dumps(clean_json(obj), default=_default, allow_nan=False, **kw)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside ``path``; on success it is fsynced and renamed over ``path``, so a crash
    leaves either the old file or the new one, never a mix. On error the temporary file is removed.

    The file gets the permissions of an ordinary new file (0666 less the umask; mkstemp alone makes 0600).
    A write the file system refuses (no space, read-only, permission) raises StorageError (exit code 74)
    naming the file and the operation."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise storage_error(f"cannot write {path} (creating a temporary file beside it): "
                            f"{why_not_writable(path, e)}", e) from None
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            raise storage_error(f"cannot write {path}: {e.strerror or e}", e) from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise storage_error(f"cannot write {path} (renaming the temporary file over it): "
                                f"{why_not_writable(path, e)}", e) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def why_not_writable(path: str | os.PathLike, err: OSError) -> str:
    """A short reason a write to ``path`` failed, naming an ancestor that is a file rather than a folder
    (mkdir's own message, "File exists", does not say which)."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    if path.is_dir():
        return "it is a folder"
    return err.strerror or str(err)


def make_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``mkdir -p`` that says in one line why a folder cannot be made (a file in the way, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(f"cannot create {what} {path}: {why_not_writable(path, e)}", e) from None
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> None:
    """Before long work whose result goes to ``path``: refuse a path that is a folder or lies under a file, so
    the work is not lost at the end. (Permissions and odd filesystems are still found only by the write.)"""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder, not a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
            break


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (so writing one would overwrite the other)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole text file atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    obj = {"schema_version": SCHEMA_VERSION, **obj}
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    lines = [dumps({"schema_version": SCHEMA_VERSION, **r}) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_text_input(path: str | os.PathLike, what: str, expected: str) -> str:
    """The text of an input file, or one DebaError line: missing (``no such WHAT``) or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DebaError(f"{path}: no such {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DebaError(f"{path}: not a UTF-8 text file ({expected})") from None


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    _check_readable_file(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DebaError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DebaError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise DebaError(f"{path}: expected a JSON object")
    return obj


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; bad lines raise DebaError naming file and line."""
    path = Path(path)
    _check_readable_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DebaError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DebaError(f"{path}: cannot read ({e.strerror or e})") from None
    for lineno, line in enumerate(text.split("\n"), 1):  # newlines only, as reading line by line
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DebaError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DebaError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _check_readable_file(path: Path) -> None:
    if path.is_dir():
        raise DebaError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise DebaError(f"{path}: no such file")


def read_signal_log(path: str | os.PathLike, required: Sequence[str] = ("epoch", "grad_var", "grad_norm", "loss")) -> list[dict]:
    """Read a per-epoch log for replay or calibration.

    Every required field must be present; numbers may be null or non-finite (the policy treats those
    as non-finite epochs), but a string, list or object is bad input. Epochs must be consecutive.
    """
    rows: list[dict] = []
    prev_epoch = None
    for lineno, obj in iter_jsonl(path):
        missing = [k for k in required if k not in obj]
        if missing:
            raise DebaError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        for k in required:
            v = obj[k]
            if v is None and k != "epoch":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DebaError(f"{path}:{lineno}: field {k!r} must be a number, got {json.dumps(v)}")
            if k != "epoch" and isinstance(v, int):
                try:
                    float(v)
                except OverflowError:  # JSON integers have no bound; the signals are floats
                    raise DebaError(f"{path}:{lineno}: field {k!r} is an integer too large for a float "
                                    f"({len(str(abs(v)))} digits)") from None
        ep = obj["epoch"]
        if isinstance(ep, float):
            if not ep.is_integer():
                raise DebaError(f"{path}:{lineno}: epoch must be an integer, got {ep}")
            obj["epoch"] = ep = int(ep)
        if prev_epoch is not None and ep != prev_epoch + 1:
            raise DebaError(f"{path}:{lineno}: epochs must be consecutive, got epoch {ep} after {prev_epoch}")
        prev_epoch = ep
        rows.append(obj)
    if not rows:
        raise DebaError(f"{path}: no records")
    return rows
