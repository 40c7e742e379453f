"""Checkpoints: everything a killed run needs to continue as if it had never stopped.

Written atomically (temporary file in the same folder, fsync, rename), so a crash mid-write leaves the
previous checkpoint intact. Loading checks the file and says plainly what is wrong with it.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DebaError
from ..logio import atomic_open
from ..runfolder import CHECKPOINT_FILE

CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = CHECKPOINT_FILE


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


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DebaError(f"{path}: no checkpoint to resume from")
    try:
        # weights_only=False: the checkpoint holds RNG states (numpy arrays, tuples) written by this project
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise DebaError(f"{path}: checkpoint is corrupt or unreadable ({type(e).__name__}); "
                        "delete it to start the run afresh") from None
    if not isinstance(payload, dict) or payload.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise DebaError(f"{path}: not a deba checkpoint (or of another version)")
    return payload


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
