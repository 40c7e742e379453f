"""DEBA in training code you already have: thin faces over :class:`deba.period.PeriodLoop`, the one
place where a period is closed, decided and applied.

* :mod:`deba.integrations.loop`: :class:`DebaController` for a plain PyTorch loop, and
  :func:`set_loader_batch_size` to resize a ``DataLoader`` in place.
* :mod:`deba.integrations.lightning`: :class:`DebaCallback` for PyTorch Lightning (an optional
  extra: ``pip install 'deba[lightning]'``). It is imported only when asked for, so this package
  works without Lightning.
"""
from __future__ import annotations

from typing import Any

from .loop import DebaController, loader_batch_size, set_loader_batch_size

__all__ = ["DebaCallback", "DebaController", "loader_batch_size", "set_loader_batch_size"]


def __getattr__(name: str) -> Any:
    if name == "DebaCallback":  # lazy: Lightning is optional
        from .lightning import DebaCallback

        return DebaCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
