"""Checkpoints: everything a killed run needs to continue as if it had never stopped.

Written atomically (temporary file in the same folder, fsync, rename), so a crash mid-write leaves the
previous checkpoint intact. Loading checks the file and says plainly what is wrong with it.

Format (version 2): the bytes of ``torch.save(payload)`` followed by a trailer of 8 magic bytes
(``DEBASUM2``) and the SHA-256 digest of those bytes. ``torch.load`` still reads the file (a zip archive
ignores what follows it); :func:`load_checkpoint` checks the digest first, so a flipped bit anywhere is
reported instead of loaded. Before a checkpoint replaces the previous one, that one is kept as
``checkpoint.prev.pt`` (a hard link, so at every moment ``checkpoint.pt`` exists whole).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DebaError, storage_error
from ..logio import atomic_open
from ..runfolder import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

CHECKPOINT_VERSION = 2
CHECKPOINT_NAME = CHECKPOINT_FILE
PREVIOUS_NAME = PREVIOUS_CHECKPOINT_FILE
TRAILER_MAGIC = b"DEBASUM2"
TRAILER_SIZE = len(TRAILER_MAGIC) + 32


class CheckpointDamaged(DebaError):
    """A checkpoint whose bytes are not those written (checksum), or that cannot be read."""


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], keep_previous: bool = True) -> None:
    """Write ``payload`` with its checksum; the checkpoint it replaces is kept as checkpoint.prev.pt."""
    path = Path(path)
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)  # in memory: a full disk then fails in one plain write, not inside torch's zip writer
    data = buf.getbuffer()
    if keep_previous and path.is_file():
        _keep_previous(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
        f.write(TRAILER_MAGIC + hashlib.sha256(data).digest())


def _keep_previous(path: Path) -> None:
    prev = path.with_name(PREVIOUS_NAME)
    tmp = path.with_name(f".{PREVIOUS_NAME}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise storage_error(f"cannot keep the previous checkpoint as {prev}: {e.strerror or e}", e) from None


def verify_checkpoint(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The checkpoint's contents after checking their digest, and whether it had one (version 1 did not);
    CheckpointDamaged naming what is wrong."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise storage_error(f"cannot read {path}: {e.strerror or e}", e) from None
    if len(raw) < TRAILER_SIZE or raw[-TRAILER_SIZE:-32] != TRAILER_MAGIC:
        return raw, False  # a version-1 checkpoint, or a damaged end (the version check in load tells)
    data, digest = raw[:-TRAILER_SIZE], raw[-32:]
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointDamaged(f"{path}: checkpoint is damaged (its SHA-256 checksum does not match its "
                                f"contents: bytes changed after writing)")
    return data, True


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DebaError(f"{path}: no checkpoint to resume from")
    data, checked = verify_checkpoint(path)
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) written by this project
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointDamaged(f"{path}: checkpoint is corrupt or unreadable ({type(e).__name__})") from None
    version = payload.get("checkpoint_version") if isinstance(payload, dict) else None
    if version == CHECKPOINT_VERSION and not checked:
        raise CheckpointDamaged(f"{path}: checkpoint is damaged (its checksum trailer is missing or changed)")
    if version not in (1, CHECKPOINT_VERSION):
        raise DebaError(f"{path}: not a deba checkpoint (or of another version)")
    return payload


def load_for_resume(path: Path, fallback: bool, map_location: Any = "cpu") -> tuple[dict, str | None]:
    """The checkpoint to resume from, and a note when it is the previous one (``fallback`` and a damaged
    ``path``). Without ``fallback`` a damaged checkpoint is one line that says the option exists."""
    prev = path.with_name(PREVIOUS_NAME)
    try:
        return load_checkpoint(path, map_location), None
    except CheckpointDamaged as e:
        if not fallback:
            hint = (f"; --resume-fallback resumes from the previous one ({prev.name}), or delete it to start "
                    "the run afresh" if prev.is_file() else "; delete it to start the run afresh")
            raise CheckpointDamaged(f"{e}{hint}") from None
        if not prev.is_file():
            raise CheckpointDamaged(f"{e}; no previous checkpoint ({prev.name}) to fall back to") from None
        payload = load_checkpoint(prev, map_location)
        return payload, f"{path.name} is damaged ({str(e).split(': ', 1)[-1]}): resumed from {prev.name}"


# what a checkpoint must hold for a resume
REQUIRED_KEYS = ("config", "model", "step", "policy", "rng", "run")


def fit_problem(payload: dict, model: torch.nn.Module, run_fields: set[str]) -> str | None:
    """What keeps a loadable checkpoint from fitting this model and run, in a few words; None when it fits."""
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        return f"it lacks {', '.join(repr(k) for k in missing)}"
    saved, mine = payload["model"], model.state_dict()
    if not isinstance(saved, dict):
        return "its 'model' is not a state dict"
    only_saved = sorted(set(saved) - set(mine))
    only_mine = sorted(set(mine) - set(saved))
    if only_saved or only_mine:
        parts = []
        if only_mine:
            parts.append(f"the model has {_names(only_mine)} that the checkpoint lacks")
        if only_saved:
            parts.append(f"the checkpoint has {_names(only_saved)} that the model lacks")
        return "; ".join(parts)
    for k, v in mine.items():
        s = saved[k]
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(v.shape):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            return f"model tensor {k} has shape {got} in the checkpoint, {tuple(v.shape)} in the model"
    run = payload["run"]
    if not isinstance(run, dict):
        return "its 'run' is not a mapping"
    unknown = sorted(set(run) - run_fields)
    if unknown:
        return f"its run state has unknown key(s) {', '.join(unknown)} (written by another deba version?)"
    return None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} tensor(s) ({shown})"


def snapshot_state(model: torch.nn.Module, optimizer_state: dict) -> dict:
    """An in-memory copy of model and optimizer state on their devices (for discarding a non-finite epoch)."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": _clone_tree(optimizer_state),
    }


def _clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return obj
