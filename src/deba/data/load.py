"""Loading a dataset by name: the one module that knows every image dataset's loader (dataset.py holds the
container and the helpers the loaders share, so the loaders import it and it imports none of them)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DebaError, option
from .cifar import load_cifar
from .dataset import ArrayDataset, canonical_dataset_name, default_cache_dir, take_subset
from .synthetic import make_synthetic


def load_dataset(
    name: str,
    data: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    synthetic_size: tuple[int, int] | None = None,
) -> ArrayDataset:
    """Load a dataset by name into memory.

    ``cifar10`` / ``cifar100``: ``data`` is a folder holding ``cifar-10-batches-py`` / ``cifar-100-python``
    (or that folder itself), or for CIFAR-10 the offline JPEG ``.npz`` (decoded once, cached under
    ``cache_dir``). Without ``data``, ``./data`` and ``cache_dir`` are searched. ``download=True`` fetches
    the python-format archive with torchvision into ``data`` (a folder) or ``cache_dir``.
    ``synthetic``: generated, learnable 10-class 32x32 images; ``synthetic_size=(n_train, n_test)``
    (default 2000 / 500).
    ``subset``: a random ``subset`` of the training images drawn with ``subset_seed`` (see take_subset).
    """
    key = canonical_dataset_name(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if key == "synthetic":
        if data is not None:
            raise DebaError(f"the synthetic dataset is generated: do not pass {option('data')} with it")
        n_train, n_test = synthetic_size if synthetic_size is not None else (2000, 500)
        ds = make_synthetic(n_train=n_train, n_test=n_test)
    elif key in ("cifar10", "cifar100"):
        ds = load_cifar(key, data=data, download=download, cache_dir=cache)
    return take_subset(ds, subset, subset_seed)
