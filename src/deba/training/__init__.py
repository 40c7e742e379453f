"""The training harness: ``deba.training.train(config, ...)`` runs one run (``deba train`` in Python).

Callbacks (``train(config, callbacks=[...])``) implement the hooks of :class:`TrainerCallback`
(deba.training.callbacks). These names are loaded on first use, so importing a submodule stays light.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"train": "deba.training.trainer", "Trainer": "deba.training.trainer", "TrainConfig": "deba.training.config",
         "TrainerCallback": "deba.training.callbacks"}

__all__ = ["TrainConfig", "Trainer", "TrainerCallback", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
