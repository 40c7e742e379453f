"""Datasets in memory and the loaders that feed them to the training loop.

* ``load_dataset(name, data, download, cache_dir, subset, subset_seed)`` -> :class:`ArrayDataset`:
  CIFAR-10/100 from the standard python-format folders (or a torchvision download), CIFAR-10 from the
  offline JPEG archive (decoded once, cached), or the generated ``synthetic`` set.
* :class:`DeviceLoader`: the whole dataset as one uint8 tensor on the training device; augmentation and
  normalisation on the device; seeded per-epoch order; batch size settable before every epoch.
* :class:`DataLoaderSource`: the same interface over a user's own ``torch.utils.data.Dataset``.
"""

from .cifar import NPZ_NAME, load_jpeg_npz, npz_cache_path, read_cifar_folder, write_cifar_fixture
from .dataset import (
    DATASET_NAMES,
    ArrayDataset,
    channel_stats,
    default_cache_dir,
    subset_indices,
    take_subset,
)
from .load import load_dataset
from .loader import DeviceLoader, eval_batches
from .sampling import BatchSizeError, epoch_permutation
from .synthetic import make_synthetic
from .userdata import DataLoaderSource

__all__ = [
    "DATASET_NAMES",
    "NPZ_NAME",
    "ArrayDataset",
    "BatchSizeError",
    "DataLoaderSource",
    "DeviceLoader",
    "channel_stats",
    "default_cache_dir",
    "epoch_permutation",
    "eval_batches",
    "load_dataset",
    "load_jpeg_npz",
    "make_synthetic",
    "npz_cache_path",
    "read_cifar_folder",
    "subset_indices",
    "take_subset",
    "write_cifar_fixture",
]
