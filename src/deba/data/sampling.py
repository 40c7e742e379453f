"""Seeded per-epoch sample orders and per-sample augmentation draws, shared by both loaders.

Everything random in the data path is a pure function of (seed, epoch, sample index): the order of an
epoch does not depend on what ran before it, and a sample's crop and flip do not depend on the batch
size, on the number of ranks or on where a run was resumed.
"""

from __future__ import annotations

import torch

from ..errors import DebaError

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_M63 = 0x7FFFFFFFFFFFFFFF


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser on Python ints (exact 64-bit arithmetic, no overflow)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mix32(x):
    """A 32-bit integer hash that works unchanged on Python ints and on int64 tensors (any device).

    Inputs must lie in [0, 2**32). Both multipliers are below 2**31, so every product stays below 2**63
    and int64 tensor arithmetic never overflows; the result is masked back to 32 bits after each product.
    It is a bijection on 32-bit values.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def epoch_key(seed: int, epoch: int) -> int:
    """A 64-bit key for (seed, epoch): different for every pair in practice, independent of history."""
    return splitmix64(splitmix64(int(seed) & _M64) ^ (int(epoch) & _M64))


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The order of the n samples in epoch ``epoch``: torch.randperm from a CPU generator seeded by
    (seed, epoch) only, so it is the same on every device, rank and torch backend, then moved once."""
    g = torch.Generator()
    g.manual_seed(splitmix64(epoch_key(seed, epoch)) & _M63)
    return torch.randperm(n, generator=g).to(device)


def augmentation_codes(
    n: int, seed: int, epoch: int, device: torch.device | str, choices: int
) -> torch.Tensor:
    """One integer in [0, choices) per sample index 0..n-1 for this (seed, epoch), hashed on ``device``.

    Two hash rounds keyed by two halves of the epoch key, so that the draws of one epoch are not a
    relabelling of another epoch's draws. The modulo bias (choices / 2**32) is negligible.
    """
    key = epoch_key(seed, epoch) ^ 0x5851F42D4C957F2D  # a different stream from the permutation's
    k1, k2 = key & _M32, (key >> 32) & _M32
    ids = torch.arange(n, dtype=torch.int64, device=device) & _M32
    h = mix32(mix32(ids ^ k1) ^ k2)
    return h % choices


def rank_slice(batch_start: int, per_rank: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s share of the global batch that starts at ``batch_start``: ``per_rank``
    consecutive positions, rank r taking [r * per_rank, (r + 1) * per_rank)."""
    a = batch_start + rank * per_rank
    return a, a + per_rank


def check_batch_size(batch_size: int, n: int, world_size: int) -> int:
    """Validate a requested global batch size; returns it as an int."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size:
        raise BatchSizeError(f"batch size must be an integer, got {batch_size!r}")
    b = int(batch_size)
    if b < 1:
        raise BatchSizeError(f"batch size must be at least 1, got {b}")
    if b > n:
        raise BatchSizeError(f"batch size {b} is larger than the {n} training samples")
    if b < world_size:
        raise BatchSizeError(f"batch size {b} is smaller than the number of ranks {world_size}")
    return b


class BatchSizeError(DebaError, ValueError):
    """An impossible batch size: a DebaError (one line for the CLI) and a ValueError (for library users)."""


class BatchGeometry:
    """How a global batch size maps onto steps and ranks; shared by the device loader and the DataLoader
    path. Needs ``n`` (training samples), ``world_size``, ``_batch_size`` and ``_epoch``."""

    n: int
    world_size: int
    _batch_size: int
    _epoch: int

    @property
    def batch_size(self) -> int:
        """The requested global batch size B."""
        return self._batch_size

    @property
    def per_rank_batch_size(self) -> int:
        return self._batch_size // self.world_size

    @property
    def global_batch_size(self) -> int:
        """Samples consumed per step over all ranks: world_size * (B // world_size) (B when w divides B)."""
        return self.per_rank_batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch; the last partial batch is dropped."""
        return self.n // self.global_batch_size

    @property
    def num_samples(self) -> int:
        return self.n

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.steps_per_epoch
