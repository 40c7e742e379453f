"""Packing a study: its runs' logs and spec into one .tar.gz, and restoring finished runs from such
archives."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..logio import atomic_write_text, check_output_file, make_dir
from ..runfolder import PACKED_FILES, SUMMARY_FILE, is_complete, read_archive_runs
from .plan import _read_json_quiet, expand, thresholds_path
from .spec import SPEC_COPY, StudySpec


# --- packing --------------------------------------------------------------------------------------
def pack_study(spec: StudySpec, out: str | os.PathLike, archive: str | os.PathLike) -> int:
    """Write the logs of every run of the grid found under ``out`` (all shards; no checkpoints) and the spec
    into one .tar.gz, paths relative to ``out`` (so `--restore` or `tar -C OUT -x` puts them back). Returns
    the number of runs packed."""
    out, archive = Path(out), Path(archive)
    check_output_file(archive, "--pack archive")
    make_dir(archive.parent, "folder for the --pack archive")
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            spec_text = (
                (out / SPEC_COPY).read_text(encoding="utf-8") if (out / SPEC_COPY).is_file() else spec.text
            )
            if spec_text:
                _add_bytes(tar, SPEC_COPY, spec_text.encode("utf-8"))
            thresholds_done: set[Path] = set()
            for p in expand(spec):
                d = p.dir(out)
                files = [d / f for f in PACKED_FILES if (d / f).is_file()]
                if not any(f.name == SUMMARY_FILE for f in files):
                    continue
                n += 1
                for f in files:
                    tar.add(f, arcname=f"{p.run_id}/{f.name}", recursive=False)
                th = thresholds_path(p, out)
                if "thresholds" in p.deps and th not in thresholds_done and th.is_file():
                    # what the calibrated arm's runs were given (restore recomputes it from the packed logs)
                    thresholds_done.add(th)
                    tar.add(th, arcname=th.relative_to(out).as_posix(), recursive=False)
        os.replace(tmp, archive)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def restore_archives(archives: Iterable[str | os.PathLike], out: str | os.PathLike) -> int:
    """Put the finished runs of earlier packs back under ``out`` so this study skips them (results from
    earlier sessions accumulate). Runs already complete here are left alone. Returns runs restored."""
    out = Path(out)
    restored = 0
    for archive in archives:
        runs = read_archive_runs(archive)
        for run_id, files in runs.items():
            summary = json.loads(files[SUMMARY_FILE]) if SUMMARY_FILE in files else {}
            if not is_complete(summary):
                continue
            d = Path(out, *PurePosixPath(run_id).parts)
            local = _read_json_quiet(d / SUMMARY_FILE) or {}
            if is_complete(local):
                continue
            d.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                if name in PACKED_FILES:
                    atomic_write_text(d / name, text)
            restored += 1
    return restored
