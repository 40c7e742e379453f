"""The in-memory dataset type, its statistics, subsets, and ``load_dataset`` (dispatch by name)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DebaError, option

DATASET_NAMES = ("cifar10", "cifar100", "synthetic")


@dataclass
class ArrayDataset:
    """A whole image-classification dataset in memory (CPU tensors).

    ``train_x``/``test_x``: uint8 [N,C,H,W]; ``train_y``/``test_y``: int64 [N]. ``mean``/``std``: per
    channel on the 0-1 scale, computed from the full training split as loaded (population std), before
    any ``subset`` is drawn, so a subset run normalises exactly like a full run.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: tuple[str, ...] | None = None
    source: str = ""

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DebaError(
                    f"{self.name}: {split} images must be uint8 [N,C,H,W], got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DebaError(
                    f"{self.name}: {split} labels must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DebaError(f"{self.name}: {split} labels outside [0, {self.num_classes})")


def channel_stats(x: np.ndarray | torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images [N,C,H,W] on the 0-1 scale.

    Exact: integer sums of pixel values and of their squares (int64, chunked to bound memory), combined
    in Python integers, with one float division at the end.
    """
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] == 0:
        raise DebaError(
            f"channel statistics need non-empty uint8 images [N,C,H,W], got {arr.dtype} {arr.shape}"
        )
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    s1 = np.zeros(arr.shape[1], dtype=np.int64)
    s2 = np.zeros(arr.shape[1], dtype=np.int64)
    for i in range(0, flat.shape[0], 1024):
        chunk = flat[i : i + 1024].astype(np.int32)
        s1 += chunk.sum(axis=(0, 2), dtype=np.int64)
        s2 += (chunk * chunk).sum(axis=(0, 2), dtype=np.int64)
    count = flat.shape[0] * flat.shape[2]
    means, stds = [], []
    for a, b in zip(s1.tolist(), s2.tolist()):
        means.append(a / (255 * count))
        stds.append(((b * count - a * a) / (255 * 255 * count * count)) ** 0.5)
    return tuple(means), tuple(stds)


def subset_indices(n: int, subset: int, subset_seed: int = 0) -> torch.Tensor:
    """``subset`` distinct indices of [0, n), drawn by a generator seeded with ``subset_seed`` only, sorted."""
    if isinstance(subset, bool) or int(subset) != subset or subset < 1:
        raise DebaError(f"{option('subset')} must be a positive integer, got {subset!r}")
    if subset > n:
        raise DebaError(f"{option('subset')} {subset} is larger than the {n} training images")
    g = torch.Generator()
    g.manual_seed(int(subset_seed))
    return torch.randperm(n, generator=g)[: int(subset)].sort().values


def take_subset(ds: ArrayDataset, subset: int | None, subset_seed: int = 0) -> ArrayDataset:
    """The dataset with a random ``subset`` of its training images (test split and statistics untouched).

    The draw depends on ``subset_seed`` alone (not on the run's seed), so every seed of a study trains on
    the same images; it is random rather than the first N because stored files may be ordered by class.
    """
    if subset is None:
        return ds
    idx = subset_indices(int(ds.train_x.shape[0]), subset, subset_seed)
    return ArrayDataset(
        ds.train_x[idx].contiguous(),
        ds.train_y[idx].contiguous(),
        ds.test_x,
        ds.test_y,
        ds.num_classes,
        ds.mean,
        ds.std,
        ds.name,
        ds.classes,
        f"{ds.source} (subset {int(subset)}, subset seed {subset_seed})",
    )


def default_cache_dir() -> Path:
    """$DEBA_CACHE, else $XDG_CACHE_HOME/deba, else ~/.cache/deba."""
    if os.environ.get("DEBA_CACHE"):
        return Path(os.environ["DEBA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "deba"


def canonical_dataset_name(name: str) -> str:
    """``cifar10``, ``cifar100`` or ``synthetic`` (case, dashes and underscores ignored); else one error line."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise DebaError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return key
