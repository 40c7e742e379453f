"""DEBA in a training loop you wrote yourself.

:class:`DebaController` joins the three pieces a custom loop needs: the gradient signals on the
device (:class:`deba.signals.GradientSignals`), a batch-size policy (:mod:`deba.policy`) and the
user's data loader. Where the calls go::

    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6, epochs=epochs)
    loader = DataLoader(dataset, batch_size=32, shuffle=True)  # 32 is the start (the policy's default yields)
    scheduler = OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * len(loader))
    deba = DebaController(policy, model.parameters(), loader=loader, scheduler=scheduler)
    for epoch in range(epochs):
        for x, y in loader:                      # iter(loader) picks up the current batch size
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            deba.after_backward(loss, samples=len(x))  # also sets the scheduler's lr from samples seen
            optimizer.step()
            scheduler.step()
        record = deba.end_epoch(epoch)           # the one host read; resizes `loader` for the next epoch

How a decision reaches the loader. A ``DataLoader`` built with ``batch_size=B`` draws its batches
from a ``BatchSampler`` (``loader.batch_sampler``) that reads its ``batch_size`` attribute each time
the loader is iterated, so :func:`set_loader_batch_size` changes that attribute in place and the next
``for x, y in loader`` yields batches of the new size. This holds with ``num_workers > 0`` and with
``persistent_workers=True`` too (the index batches are drawn in the main process, and a persistent
iterator re-iterates the batch sampler at the start of every epoch). Caveats:

* call it between epochs: a change made while an epoch's iterator is running takes effect in the
  middle of that epoch (for the batches not yet prefetched);
* ``loader.batch_size`` keeps the value the loader was built with (``DataLoader`` forbids setting
  it); read ``loader.batch_sampler.batch_size`` or :attr:`DebaController.batch_size` instead;
* ``len(loader)`` follows the new size, so compute anything derived from it (steps per epoch,
  a step-based LR schedule) before the first change, or count in samples (:meth:`DebaController.progress`);
  a scheduler given as ``scheduler=`` is driven by samples seen (:mod:`deba.lr_coupling`);
* a loader built with ``batch_size=None`` or with its own ``batch_sampler`` that has no
  ``batch_size`` attribute cannot be resized in place: :func:`set_loader_batch_size` raises
  :class:`deba.errors.DebaError`. Pass ``on_batch_size_change=`` to the controller instead (a
  callable receiving the new batch size, which may rebuild the loader, or resize a sampler of your
  own), or rebuild the loader yourself from :attr:`DebaController.batch_size` after each epoch.

Nothing on the per-step path reads a value back to the host: :meth:`DebaController.after_backward`
only launches device operations, and the sample counter adds a Python int you pass in.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import DebaError
from ..lr_coupling import LRCoupling
from ..period import PeriodLoop
from ..policy import BatchSizePolicy, DecisionRecord


def _check_batch_size(batch_size: Any, where: str) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DebaError(f"{where}: batch size must be a positive integer, got {batch_size!r}")
    return batch_size


def loader_batch_size(loader: Any) -> int | None:
    """The batch size ``loader`` will use on its next iteration, or None when it has none to report."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    size = getattr(batch_sampler, "batch_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    size = getattr(loader, "batch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def set_loader_batch_size(loader: Any, batch_size: int) -> None:
    """Make ``loader`` yield batches of ``batch_size`` from its next iteration on, in place.

    Works for a ``torch.utils.data.DataLoader`` built with ``batch_size=B`` (its ``BatchSampler``'s
    ``batch_size`` is set; see the module notes for the caveats), for any loader whose
    ``batch_sampler`` has an integer ``batch_size`` attribute, and for loaders with a
    ``set_batch_size(B)`` method (deba's own device loader). Anything else raises
    :class:`deba.errors.DebaError`.
    """
    batch_size = _check_batch_size(batch_size, "set_loader_batch_size")
    setter = getattr(loader, "set_batch_size", None)
    if callable(setter):
        setter(batch_size)
        return
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is None:
        what = "was built with batch_size=None" if isinstance(loader, torch.utils.data.DataLoader) else "has no batch_sampler"
        raise DebaError(f"set_loader_batch_size: the loader {what}, so its batch size cannot be changed in place; "
                        "build it with batch_size=B, or give DebaController an on_batch_size_change hook")
    current = getattr(batch_sampler, "batch_size", None)
    if isinstance(current, bool) or not isinstance(current, int):
        raise DebaError(f"set_loader_batch_size: the loader's batch sampler ({type(batch_sampler).__name__}) has no "
                        "integer batch_size attribute to change; give DebaController an on_batch_size_change hook "
                        "that resizes or rebuilds it")
    batch_sampler.batch_size = batch_size


class DebaController:
    """Runs a batch-size policy inside a custom PyTorch training loop: a thin face over
    :class:`deba.period.PeriodLoop`, which closes each epoch and applies the decision.

    ``policy``: any :class:`deba.policy.BatchSizePolicy` (``make_deba(...)``, ``FixedPolicy``, ...).
    ``parameters``: the model's parameters (their gradients feed the signals).
    ``signals_mode``: ``"last"`` (the paper: statistics of the epoch's last step; captured at that
    step's :meth:`after_backward` when ``loader`` has a length, else read from ``.grad`` in
    :meth:`end_epoch`, so do not zero the gradients between the last step and it) or ``"epoch-avg"``
    (averaged over the steps, every ``every``-th step observed in :meth:`after_backward`).
    ``loader``: a loader resized in place whenever the policy changes the batch size. Its own batch size
    is the start unless the policy was given ``start_batch`` (then the policy's wins, with a warning).
    ``on_batch_size_change``: called with the new batch size whenever it changes, after the loader.
    ``scheduler``: a learning-rate scheduler you step once per optimiser step, driven by samples seen so
    its shape survives batch-size changes (types in :data:`deba.lr_coupling.SUPPORTED`).
    ``optimizer`` and ``lr_scaling`` (none, sqrt, linear): the learning rate times (B / B0)^p.
    """

    def __init__(self, policy: BatchSizePolicy, parameters: Iterable[torch.Tensor], *, signals_mode: str = "last",
                 every: int = 1, loader: Any = None, on_batch_size_change: Callable[[int], Any] | None = None,
                 scheduler: Any = None, optimizer: torch.optim.Optimizer | None = None, lr_scaling: str = "none",
                 gns: bool = False):
        if on_batch_size_change is not None and not callable(on_batch_size_change):
            raise DebaError("DebaController: on_batch_size_change must be callable with the new batch size")
        self.loader = loader
        self.on_batch_size_change = on_batch_size_change
        schedulers = [] if scheduler is None else [scheduler]
        lr = LRCoupling(optimizer, schedulers, scaling=lr_scaling, where="DebaController")
        self.core = PeriodLoop(policy, signals_mode=signals_mode, every=every, resize=self._resize,
                               lr=lr if lr.active else None, where="DebaController", gns=gns)
        self.core.attach(parameters)
        self._applied: int | None = None
        if loader is not None:
            self.core.start(loader_batch_size(loader), "the loader")
            self._resize(policy.batch_size)
        self._applied = policy.batch_size

    # the core's state, read where users read it
    policy = property(lambda self: self.core.policy)
    signals = property(lambda self: self.core.signals)
    samples_seen = property(lambda self: self.core.samples_seen)
    epoch_samples = property(lambda self: self.core.epoch_samples)
    epoch_steps = property(lambda self: self.core.epoch_steps)
    last_record = property(lambda self: self.core.last_record)

    @property
    def batch_size(self) -> int:
        """The batch size to train the current (next) epoch at."""
        return self.core.batch_size

    def progress(self, total_samples: int) -> float:
        """Fraction of training done, ``samples_seen / total_samples`` clipped to [0, 1].

        ``total_samples`` is the planned amount of training in samples (epochs x dataset size), so an
        LR schedule driven by it ends where it should whatever batch sizes the policy chose.
        """
        return self.core.progress(total_samples)

    def after_backward(self, loss: torch.Tensor, samples: int | None = None) -> None:
        """Record one optimisation step: call after ``backward()`` (after ``unscale_`` with a GradScaler),
        before any gradient clipping and ``optimizer.step()``.

        ``loss``: the step's loss tensor (its mean is taken; it stays on the device).
        ``samples``: how many samples the step trained on (``len(x)``); defaults to the current batch
        size, which over-counts a final partial batch when the loader does not drop it.
        """
        n = self.batch_size if samples is None else samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DebaError(f"after_backward: samples must be a non-negative integer, got {samples!r}")
        self.core.before_step()
        self.core.observe_step(loss, n)
        self.core.observe_gradients(last_of_period=self._is_last_step())

    def _is_last_step(self) -> bool:
        try:
            return self.loader is not None and self.core.epoch_steps >= len(self.loader)
        except TypeError:  # an iterable without a length: the gradient is read at end_epoch
            return False

    def end_epoch(self, epoch: int | None = None) -> DecisionRecord:
        """Close the epoch: read the signals (one host read), step the policy, resize the loader.

        ``epoch`` defaults to the one after the policy's last (0 for the first). The record's
        ``extra`` carries ``steps``, ``samples`` (this epoch), ``samples_seen`` (cumulative, the
        x-axis for loss curves that stay comparable across batch-size changes) and ``nonfinite_steps``.
        An epoch with a non-finite loss or gradient holds and is flagged ``non_finite``.
        """
        return self.core.close(epoch)

    def observe_small_gradient(self, b_small: int, batch: int) -> None:
        """Gradient noise scale (``gns=True``): call after the backward of a batch's first micro-batch of
        ``b_small`` examples, its loss scaled by b_small / batch (see docs/noise.md)."""
        self.core.observe_small_gradient(b_small, batch)

    def observe_big_gradient(self, b_small: int, b_big: int) -> None:
        """Gradient noise scale: call after the batch's last backward (``b_big`` = the batch, or the global
        batch under DDP); the period's record then carries gns_g2, gns_trace and b_simple."""
        self.core.observe_big_gradient(b_small, b_big)

    def cap_batch_size(self, largest_working: int) -> int:
        """After an out-of-memory error at the current size: B_max becomes ``largest_working`` for the rest
        of the run and the loader shrinks to it at once. Returns the batch size to continue at."""
        return self.core.cap_batch_size(largest_working)

    def apply(self, loader: Any) -> int:
        """Set ``loader``'s batch size to the policy's current one, in place; returns it.

        For loaders not given to the constructor; idempotent, so calling it before every epoch is fine.
        """
        set_loader_batch_size(loader, self.batch_size)
        return self.batch_size

    def _resize(self, batch_size: int) -> None:
        if self.loader is not None:
            set_loader_batch_size(self.loader, batch_size)
        if self.on_batch_size_change is not None and self._applied is not None and batch_size != self._applied:
            self.on_batch_size_change(batch_size)
        self._applied = batch_size

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy state, counters and the signal accumulators (one host read; for checkpoints)."""
        return self.core.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the loader and hook then get the restored batch size."""
        self.core.load_state_dict(state)
