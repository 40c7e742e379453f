"""One writer per run folder: an flock on ``OUT/.lock``.

The lock file holds the holder's pid and host (for people, and for the line a refused writer prints);
what excludes is the flock, which the kernel drops when the holding process dies, so a lock left by a
dead process is free without guessing from pids.

``deba study`` locks each run folder itself and starts its ``deba train`` child with the locked
descriptor inherited and named in the environment (``DEBA_RUN_LOCK_FD``): the child adopts that lock
instead of taking a second one that would refuse it, and writes its own pid into the file, since it is
then the process doing the writing.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from .errors import DebaError, storage_error
from .runfolder import LOCK_FILE

LOCK_NAME = LOCK_FILE  # deba.runfolder knows the run folder's files
LOCK_FD_ENV = "DEBA_RUN_LOCK_FD"  # a descriptor holding the flock on OUT/.lock, passed by deba study


class RunFolderBusy(DebaError):
    """Another live process writes this run folder."""


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.adopted = False  # the descriptor came from the parent (deba study), which removes the file

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise storage_error(f"cannot create the run lock {self.path}: {e.strerror}", e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise DebaError(
                    f"{self.path}: cannot lock ({e.strerror}); does this filesystem support flock?"
                ) from None
            # the previous owner may have unlinked the file between our open and our flock: then we hold a
            # lock on a file nobody else sees, and must try again on the current one
            if self._is_current(fd):
                break
            os.close(fd)
        self.fd = fd
        self._write_holder()
        return True

    def adopt_inherited(self) -> bool:
        """Take over the locked descriptor a parent passed in ``DEBA_RUN_LOCK_FD`` if it is this folder's lock."""
        raw = os.environ.get(LOCK_FD_ENV)
        if not raw or not raw.isdigit():
            return False
        fd = int(raw)
        try:
            if not self._is_current(fd):
                return False
        except OSError:
            return False
        self.fd = os.dup(fd)  # ours to close; the flock lasts while any copy of the descriptor is open
        self.adopted = True
        self._write_holder()
        return True

    def _is_current(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)

    def _write_holder(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # the text is for people; the flock is what excludes

    def release(self) -> None:
        if self.fd is None:
            return
        if not self.adopted:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None

    def is_held_elsewhere(self) -> bool:
        if not self.path.exists():
            return False
        if self.fd is not None:
            return False
        if self.acquire():
            self.release()
            return False
        return True

    def holder(self) -> str:
        """The holder as its lock file says: ``pid host``."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "?"
        parts = text.split()
        if len(parts) == 2 and parts[0].isdigit():
            return f"pid {parts[0]} on {parts[1]}"
        return text or "?"


def lock_run_folder(out: str | os.PathLike) -> RunLock:
    """Lock ``out`` for this process (adopting a lock deba study passed down), or say who holds it."""
    lock = RunLock(out)
    if lock.adopt_inherited() or lock.acquire():
        return lock
    raise RunFolderBusy(f"{out} is being written by another run ({lock.holder()}); wait for it to end or "
                        "use another --out")


__all__ = ["LOCK_NAME", "LOCK_FD_ENV", "RunLock", "RunFolderBusy", "lock_run_folder"]
