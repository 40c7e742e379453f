"""The fast in-memory loader: the whole dataset as one uint8 tensor on the training device.

Per step it gathers a batch by index, applies random crop (zero padding) and horizontal flip by index
arithmetic on the device, converts to float32 and normalises: no worker processes, no per-sample Python,
and nothing is rebuilt when the batch size changes.

Conventions (the trainer and the tests rely on them):

* Epoch ``e`` visits the samples in ``epoch_permutation(N, seed, e)``: a function of (seed, e) only.
* The global batch of B samples is split over ``world_size`` ranks: each rank takes ``B // world_size``
  consecutive positions of every global batch (rank r the r-th share), so the effective global batch is
  ``world_size * (B // world_size)`` (``global_batch_size``) and the ranks' shares concatenated in rank
  order are exactly the single-process batch of that size.
* ``steps_per_epoch = N // global_batch_size``: the last partial batch is dropped, so every step has the
  same shape (one CUDA graph per batch size) and every sample appears at most once per epoch. The
  dropped remainder is a different random set each epoch.
* Augmentation: sample k in epoch e is cropped from its image zero-padded by ``pad`` pixels (black, as
  torchvision's ``RandomCrop(32, padding=4)`` before ``Normalize``) at offsets (oy, ox) in [0, 2 * pad],
  and mirrored left-right after the crop when its flip bit is set. (oy, ox, flip) is a hash of
  (seed, e, k) computed on the device, so it does not depend on batch size, rank count or resuming.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import DebaError
from .sampling import BatchGeometry, augmentation_codes, check_batch_size, epoch_permutation


def _as_device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


class DeviceLoader(BatchGeometry):
    """Batches ``(x float32 [b,C,H,W] normalised, y int64 [b])`` from uint8 images held on ``device``.

    ``batch_size`` is the global batch; with ``world_size`` > 1 this rank yields its ``B // world_size``
    share of each global batch. ``ordered=True`` visits the samples in stored order (evaluation).
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        augment: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        ordered: bool = False,
        pad: int = 4,
    ):
        x = torch.as_tensor(x_uint8)
        y = torch.as_tensor(y)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DebaError(f"DeviceLoader needs uint8 images [N,C,H,W], got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DebaError(
                f"DeviceLoader needs one label per image: {x.shape[0]} images, labels {tuple(y.shape)}"
            )
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise DebaError(
                f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}"
            )
        if any(float(s) <= 0 for s in std):
            raise DebaError(f"std must be positive, got {tuple(std)}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DebaError(f"rank {rank} is not in [0, world_size={world_size})")
        if pad < 0:
            raise DebaError(f"crop padding must be >= 0, got {pad}")
        self.device = _as_device(device)
        self.n = int(x.shape[0])
        if self.n == 0:
            raise DebaError("DeviceLoader got an empty dataset")
        # One copy on the device for the whole run; every batch is gathered from it.
        self.x = x.to(self.device).contiguous()
        self.y = y.to(device=self.device, dtype=torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.ordered = bool(ordered)
        self.pad = int(pad)
        _, _, h, w = self.x.shape
        self._channels = torch.arange(channels, device=self.device).view(1, channels, 1, 1)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self._epoch = 0
        self._cache_epoch: int | None = None
        self._perm: torch.Tensor | None = None
        self._codes: torch.Tensor | None = None
        self._batch_size = check_batch_size(batch_size, self.n, self.world_size)

    # --- sizes (see BatchGeometry for the derived ones) ------------------------------------------
    def set_batch_size(self, batch_size: int) -> None:
        """Use global batch size B from the next batch on; raises BatchSizeError (a DebaError and a
        ValueError) when B > N or B < world_size. Nothing is re-created."""
        self._batch_size = check_batch_size(batch_size, self.n, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != epoch or epoch < 0:
            raise DebaError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)

    # --- the epoch's randomness ------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._cache_epoch == self._epoch:
            return
        self._perm = None if self.ordered else epoch_permutation(self.n, self.seed, self._epoch, self.device)
        self._codes = None
        if self.augment:
            side = 2 * self.pad + 1
            self._codes = augmentation_codes(
                self.n, self.seed, self._epoch, self.device, choices=2 * side * side
            )
        self._cache_epoch = self._epoch

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of ``epoch`` (default: the current epoch), on the device."""
        if epoch is not None and epoch != self._epoch:
            if self.ordered:
                return torch.arange(self.n, device=self.device)
            return epoch_permutation(self.n, self.seed, epoch, self.device)
        self._refresh()
        return torch.arange(self.n, device=self.device) if self._perm is None else self._perm

    def augment_params(self, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample index: crop offsets (oy, ox) into the padded image, in [0, 2 * pad], and the flip
        flag, for ``epoch`` (default: the current one). Zeros and no flip when augmentation is off."""
        side = 2 * self.pad + 1
        if not self.augment:
            zeros = torch.full((self.n,), self.pad, dtype=torch.int64, device=self.device)
            return zeros, zeros.clone(), torch.zeros(self.n, dtype=torch.bool, device=self.device)
        if epoch is None or epoch == self._epoch:
            self._refresh()
            codes = self._codes
        else:
            codes = augmentation_codes(self.n, self.seed, epoch, self.device, choices=2 * side * side)
        return (codes // side) % side, codes % side, codes >= side * side

    # --- batches ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(0)

    def batches(
        self, start_sample: int = 0, drop_last: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the current epoch, from position ``start_sample`` of the epoch's order.

        The remaining positions [start_sample, N) are cut into global batches of the current size; the
        last partial one is dropped unless ``drop_last=False`` (evaluation), in which case it is shared
        out as evenly as possible (``torch.tensor_split`` sizes) and a rank with nothing left yields
        nothing. Sizes are read now: a later ``set_batch_size`` affects the next call only.
        """
        if int(start_sample) != start_sample or not 0 <= start_sample <= self.n:
            raise DebaError(f"start_sample must be in [0, {self.n}], got {start_sample!r}")
        self._refresh()
        return self._generate(int(start_sample), self.global_batch_size, self.per_rank_batch_size, drop_last)

    def _generate(self, start: int, global_b: int, per_rank: int, drop_last: bool):
        pos = start
        while pos + global_b <= self.n:
            a = pos + self.rank * per_rank
            yield self._batch(a, a + per_rank)
            pos += global_b
        if not drop_last and pos < self.n:
            left = self.n - pos
            base, extra = divmod(left, self.world_size)
            a = pos + self.rank * base + min(self.rank, extra)
            size = base + (1 if self.rank < extra else 0)
            if size > 0:
                yield self._batch(a, a + size)

    def _batch(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None:
            y = self.y[a:b]
            idx = torch.arange(a, b, device=self.device) if self.augment else None
            images = self.x[a:b] if idx is None else self._crop_flip(idx)
        else:
            idx = self._perm[a:b]
            y = self.y[idx]
            images = self._crop_flip(idx) if self.augment else self.x[idx]
        x = images.float()
        x.div_(255.0).sub_(self._mean).div_(self._std)
        return x, y

    def _crop_flip(self, idx: torch.Tensor) -> torch.Tensor:
        """Random crop of the zero-padded images and horizontal flip, for the samples ``idx``, as one gather.

        Output pixel (i, j) of sample k reads source row oy - pad + i and column ox - pad + j (or
        ox - pad + W - 1 - j when flipped); positions outside the image are the zero padding.
        """
        side = 2 * self.pad + 1
        codes = self._codes[idx]
        h, w = self.x.shape[2], self.x.shape[3]
        shift_y = (codes // side) % side - self.pad
        shift_x = codes % side - self.pad
        flip = (codes >= side * side).unsqueeze(1)
        rows = shift_y.unsqueeze(1) + self._rows  # [b, H]
        cols = shift_x.unsqueeze(1) + torch.where(flip, (w - 1) - self._cols, self._cols)  # [b, W]
        inside = ((rows >= 0) & (rows < h)).unsqueeze(1).unsqueeze(3) & ((cols >= 0) & (cols < w)).unsqueeze(
            1
        ).unsqueeze(2)
        out = self.x[
            idx.view(-1, 1, 1, 1),
            self._channels,
            rows.clamp(0, h - 1).unsqueeze(1).unsqueeze(3),
            cols.clamp(0, w - 1).unsqueeze(1).unsqueeze(2),
        ]
        return out.mul_(inside)

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch, "batch_size": self._batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._cache_epoch = None
        self.set_epoch(int(state["epoch"]))
        self.set_batch_size(int(state["batch_size"]))


def eval_batches(
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every sample once, in stored order, normalised, no augmentation; the last batch may be smaller."""
    loader = DeviceLoader(
        x_uint8, y, min(batch_size, int(x_uint8.shape[0])), device, mean, std, augment=False, ordered=True
    )
    return loader.batches(0, drop_last=False)
