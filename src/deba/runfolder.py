"""The run folder: the one module that knows a run's file names, reads runs from a folder or a `deba study --pack`
archive, and says a run's summary status.

A run folder (what `deba train --out` fills) holds ``config.json`` (the whole config), ``epochs.jsonl`` (one
record per epoch), ``summary.json`` (written at the end, with ``status``: ``complete``, ``stopped...`` or
absent while running), ``decisions.jsonl`` (with a decision interval) and ``checkpoint.pt``; a study adds
``run.log``. Pure standard library: training, the study, the report and the commands all import it.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from .errors import DebaError

CONFIG_FILE = "config.json"
EPOCHS_FILE = "epochs.jsonl"
SUMMARY_FILE = "summary.json"
DECISIONS_FILE = "decisions.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"  # the previous good checkpoint (deba.training.checkpoint)
LOCK_FILE = ".lock"  # the one writer's lock (deba.runlock)
RUN_LOG_FILE = "run.log"  # the study's log of the `deba train` child
VOCAB_FILE = "vocab.json"  # a language model's token mapping (deba.data.text)
SAMPLE_FILE = "sample.txt"  # text a language model generated after training

# what a report reads from each run
RUN_FILES = (SUMMARY_FILE, CONFIG_FILE, EPOCHS_FILE)
# the logs a run writes (no checkpoint): what a study copies and packs
RUN_OUTPUTS = (CONFIG_FILE, EPOCHS_FILE, SUMMARY_FILE, DECISIONS_FILE)
PACKED_FILES = RUN_OUTPUTS + (RUN_LOG_FILE,)
# everything a run writes into its folder: any of them there means a run's results would be overwritten
TRAIN_OUTPUTS = (CONFIG_FILE, EPOCHS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, DECISIONS_FILE, VOCAB_FILE)

COMPLETE = "complete"


# --- a run's summary status --------------------------------------------------------------------------
def summary_status(summary: Mapping[str, Any], default: str = "") -> str:
    """The summary's ``status`` as a string (``complete``, ``stopped (...)``; ``default`` where absent)."""
    return str(summary.get("status", default))


def is_complete(summary: Mapping[str, Any]) -> bool:
    """The run finished every epoch."""
    return summary_status(summary) == COMPLETE


def is_finished(summary: Mapping[str, Any]) -> bool:
    """The run will not run again: complete, stopped by the trainer (e.g. non-finite) or diverged."""
    status = summary_status(summary)
    return status == COMPLETE or status.startswith(("stopped", "diverged"))


# --- reading runs: a folder or an archive --------------------------------------------------------------
def _safe_member_path(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def read_archive_runs(archive: str | os.PathLike) -> dict[str, dict[str, str]]:
    """{run directory (posix, relative): {file name: text}} for the log files inside a .tar.gz."""
    archive = Path(archive)
    if not archive.is_file():
        raise DebaError(f"{archive}: no such archive")
    runs: dict[str, dict[str, str]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                p = _safe_member_path(m.name)
                if p is None or p.name not in PACKED_FILES or len(p.parts) < 2:
                    continue
                f = tar.extractfile(m)
                if f is None:
                    continue
                runs.setdefault(str(p.parent), {})[p.name] = f.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        # tarfile's "could not be opened" lists every method it tried, one per line: keep the first line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")
        raise DebaError(f"{archive}: not a readable .tar.gz archive ({reason})") from None
    return runs


def iter_folder_runs(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(run id, {file name: text}) for every run folder (one holding summary.json) under ``root``; the run id
    is the folder relative to ``root`` (posix), or ``root``'s name for ``root`` itself."""
    for summary in sorted(root.rglob(SUMMARY_FILE)):
        d = summary.parent
        rel = d.relative_to(root).as_posix()
        run_id = rel if rel != "." else root.name
        files = {}
        for name in RUN_FILES:
            if (d / name).is_file():
                files[name] = (d / name).read_text(encoding="utf-8", errors="replace")
        yield run_id, files


def iter_runs(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(run id, {file name: text}, only RUN_FILES) for every run with a summary in a folder or an archive."""
    if path.is_dir():
        yield from iter_folder_runs(path)
    elif path.is_file():
        for run_id, files in sorted(read_archive_runs(path).items()):
            if SUMMARY_FILE in files:
                yield run_id, {k: v for k, v in files.items() if k in RUN_FILES}
    else:
        raise DebaError(f"{path}: no such folder or archive")


__all__ = [
    "CONFIG_FILE",
    "EPOCHS_FILE",
    "SUMMARY_FILE",
    "DECISIONS_FILE",
    "CHECKPOINT_FILE",
    "VOCAB_FILE",
    "SAMPLE_FILE",
    "PREVIOUS_CHECKPOINT_FILE",
    "LOCK_FILE",
    "RUN_LOG_FILE",
    "RUN_FILES",
    "RUN_OUTPUTS",
    "PACKED_FILES",
    "TRAIN_OUTPUTS",
    "summary_status",
    "is_complete",
    "is_finished",
    "read_archive_runs",
    "iter_folder_runs",
    "iter_runs",
]
