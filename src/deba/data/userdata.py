"""A user's own ``torch.utils.data.Dataset`` behind the DeviceLoader interface.

The dataset does its own transforms; this class only decides which indices form each batch and moves the
batches to the device. The order is the same seeded per-epoch permutation as DeviceLoader's
(``epoch_permutation(N, seed, epoch)``), batches are cut the same way (drop_last, rank shares), and
``set_batch_size`` rebuilds the ``DataLoader`` (its workers too) with the new size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import DebaError
from .sampling import BatchGeometry, check_batch_size, epoch_permutation


class _EpochBatches:
    """The batch sampler: this rank's index lists for the owner's current epoch, size and start sample."""

    def __init__(self, owner: DataLoaderSource):
        self.owner = owner

    def _lists(self) -> list[list[int]]:
        o = self.owner
        order = o.permutation().tolist()
        per_rank, global_b = o.per_rank_batch_size, o.global_batch_size
        out = []
        pos = o._start
        while pos + global_b <= o.n:
            a = pos + o.rank * per_rank
            out.append(order[a : a + per_rank])
            pos += global_b
        return out

    def __iter__(self):
        return iter(self._lists())

    def __len__(self) -> int:
        o = self.owner
        return (o.n - o._start) // o.global_batch_size


class DataLoaderSource(BatchGeometry):
    """Batches ``(x, y)`` on ``device`` from a map-style ``Dataset`` through an ordinary ``DataLoader``.

    Same interface as :class:`deba.data.DeviceLoader`: ``set_batch_size``, ``set_epoch``,
    ``steps_per_epoch`` (N // global batch, last partial batch dropped), iteration, ``batches(start_sample)``,
    ``global_batch_size``, ``state_dict``. Items must be ``(input, label)`` pairs. ``shuffle=False`` keeps
    the stored order. Extra keyword arguments go to ``DataLoader`` (``collate_fn``, ``persistent_workers``,
    ...); ``pin_memory`` defaults to True on CUDA.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        **dataloader_kwargs,
    ):
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise DebaError(
                "DataLoaderSource needs a map-style Dataset with __len__ (an IterableDataset has no "
                "indices to shuffle or resume from)"
            )
        for forbidden in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if forbidden in dataloader_kwargs:
                raise DebaError(f"DataLoaderSource sets {forbidden} itself; do not pass it")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DebaError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset = dataset
        self.n = len(dataset)
        if self.n == 0:
            raise DebaError("DataLoaderSource got an empty dataset")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.device = device if isinstance(device, torch.device) else torch.device(device)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.dataloader_kwargs = dict(dataloader_kwargs)
        self.dataloader_kwargs.setdefault("pin_memory", self.device.type == "cuda")
        self._epoch = 0
        self._start = 0
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None
        self._sampler = _EpochBatches(self)
        self._batch_size = 0
        self.loader: DataLoader | None = None
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        """Rebuild the DataLoader for global batch size B (only when B changes)."""
        b = check_batch_size(batch_size, self.n, self.world_size)
        if b == self._batch_size and self.loader is not None:
            return
        self._batch_size = b
        self.loader = DataLoader(
            self.dataset, batch_sampler=self._sampler, num_workers=self.num_workers, **self.dataloader_kwargs
        )

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise DebaError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of ``epoch`` (default: the current one), on the CPU."""
        e = self._epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return torch.arange(self.n)
        if self._perm_epoch != e:
            self._perm, self._perm_epoch = epoch_permutation(self.n, self.seed, e), e
        return self._perm

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(0)

    def batches(self, start_sample: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the current epoch from position ``start_sample`` of the epoch's order."""
        if int(start_sample) != start_sample or not 0 <= start_sample <= self.n:
            raise DebaError(f"start_sample must be in [0, {self.n}], got {start_sample!r}")
        self._start = int(start_sample)
        return self._moved(iter(self.loader))

    def _moved(self, it) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for batch in it:
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise DebaError("DataLoaderSource needs dataset items that are (input, label) pairs")
            x, y = batch
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch, "batch_size": self._batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._perm_epoch = None
        self.set_epoch(int(state["epoch"]))
        self.set_batch_size(int(state["batch_size"]))
