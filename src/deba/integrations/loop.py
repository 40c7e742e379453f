"""DEBA in a training loop you wrote yourself.

:class:`DebaController` joins the three pieces a custom loop needs: the gradient signals on the
device (:class:`deba.signals.GradientSignals`), a batch-size policy (:mod:`deba.policy`) and the
user's data loader. Where the calls go::

    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6, start_batch=32)
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    deba = DebaController(policy, model.parameters(), loader=loader)
    for epoch in range(epochs):
        for x, y in loader:                      # iter(loader) picks up the current batch size
            for group in optimizer.param_groups:  # schedules keyed to samples seen survive B changes
                group["lr"] = base_lr * 0.5 * (1 + math.cos(math.pi * deba.progress(total_samples)))
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            deba.after_backward(loss, samples=len(x))
            optimizer.step()
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
  a step-based LR schedule) after the change, or better count in samples (:meth:`DebaController.progress`);
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
from ..policy import BatchSizePolicy, DecisionRecord, EpochSignals
from ..signals import GradientSignals

STATE_VERSION = 1


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
    """Runs a batch-size policy inside a custom PyTorch training loop.

    ``policy``: any :class:`deba.policy.BatchSizePolicy` (``make_deba(...)``, ``FixedPolicy``, ...).
    ``parameters``: the model's parameters (their gradients feed the signals).
    ``signals_mode``: ``"last"`` (the paper: statistics of the epoch's last step, read from ``.grad``
    in :meth:`end_epoch`, so do not set gradients to None between the last step and it) or
    ``"epoch-avg"`` (averaged over the steps, every ``every``-th step observed in :meth:`after_backward`).
    ``loader``: a loader resized in place whenever the policy changes the batch size (and once
    here, to the policy's starting size). ``on_batch_size_change``: called with the new batch size
    whenever it changes, after the loader (if any) has been resized.
    """

    def __init__(self, policy: BatchSizePolicy, parameters: Iterable[torch.Tensor], *, signals_mode: str = "last",
                 every: int = 1, loader: Any = None, on_batch_size_change: Callable[[int], Any] | None = None):
        if not isinstance(policy, BatchSizePolicy):
            raise DebaError(f"DebaController: policy must be a deba BatchSizePolicy, got {type(policy).__name__}")
        if on_batch_size_change is not None and not callable(on_batch_size_change):
            raise DebaError("DebaController: on_batch_size_change must be callable with the new batch size")
        self.policy = policy
        self.signals = GradientSignals(parameters, mode=signals_mode, every=every)
        self.loader = loader
        self.on_batch_size_change = on_batch_size_change
        self.samples_seen = 0          # over the whole run, the unit of progress
        self.epoch_samples = 0         # in the epoch under way
        self.epoch_steps = 0
        self.last_record: DecisionRecord | None = None
        if loader is not None:
            set_loader_batch_size(loader, policy.batch_size)

    @property
    def batch_size(self) -> int:
        """The batch size to train the current (next) epoch at."""
        return self.policy.batch_size

    def progress(self, total_samples: int) -> float:
        """Fraction of training done, ``samples_seen / total_samples`` clipped to [0, 1].

        ``total_samples`` is the planned amount of training in samples (epochs x dataset size), so an
        LR schedule driven by it ends where it should whatever batch sizes the policy chose.
        """
        if isinstance(total_samples, bool) or not isinstance(total_samples, (int, float)) or not total_samples > 0:
            raise DebaError(f"progress: total_samples must be a positive number, got {total_samples!r}")
        return min(1.0, max(0.0, self.samples_seen / total_samples))

    def after_backward(self, loss: torch.Tensor, samples: int | None = None) -> None:
        """Record one optimisation step: call after ``backward()`` (after ``unscale_`` with a GradScaler).

        ``loss``: the step's loss tensor (its mean is taken; it stays on the device).
        ``samples``: how many samples the step trained on (``len(x)``); defaults to the current batch
        size, which over-counts a final partial batch when the loader does not drop it.
        """
        self.signals.observe_loss(loss)
        self.signals.observe_gradients(self.epoch_steps)  # no-op in "last" mode; gated by `every`
        n = self.batch_size if samples is None else samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DebaError(f"after_backward: samples must be a non-negative integer, got {samples!r}")
        self.epoch_steps += 1
        self.epoch_samples += n
        self.samples_seen += n

    def end_epoch(self, epoch: int | None = None) -> DecisionRecord:
        """Close the epoch: read the signals (one host read), step the policy, resize the loader.

        ``epoch`` defaults to the one after the policy's last (0 for the first). The record's
        ``extra`` carries ``steps``, ``samples`` (this epoch), ``samples_seen`` (cumulative, the
        x-axis for loss curves that stay comparable across batch-size changes) and ``nonfinite_steps``.
        """
        if self.epoch_steps == 0:
            raise DebaError("end_epoch: no step was recorded this epoch (call after_backward(loss) after each backward)")
        last = self.policy.last_epoch
        if epoch is None:
            epoch = 0 if last is None else last + 1
        elif isinstance(epoch, bool) or not isinstance(epoch, int) or (last is not None and epoch != last + 1):
            # checked before the signals are read, so a wrong call loses nothing
            raise DebaError(f"end_epoch: epochs must be consecutive integers, got {epoch!r} after {last!r}")
        stats = self.signals.end_epoch()
        record = self.policy.step(EpochSignals(epoch=epoch, grad_var=stats["grad_var"],
                                               grad_norm=stats["grad_norm"], loss=stats["loss"]))
        record.extra.update(steps=self.epoch_steps, samples=self.epoch_samples, samples_seen=self.samples_seen,
                            nonfinite_steps=stats["nonfinite_steps"])
        self.epoch_steps = 0
        self.epoch_samples = 0
        self.last_record = record
        if record.next_batch_size != record.batch_size:
            self._propagate(record.next_batch_size)
        return record

    def apply(self, loader: Any) -> int:
        """Set ``loader``'s batch size to the policy's current one, in place; returns it.

        For loaders not given to the constructor; idempotent, so calling it before every epoch is fine.
        """
        set_loader_batch_size(loader, self.batch_size)
        return self.batch_size

    def _propagate(self, batch_size: int) -> None:
        if self.loader is not None:
            set_loader_batch_size(self.loader, batch_size)
        if self.on_batch_size_change is not None:
            self.on_batch_size_change(batch_size)

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy state, counters and the signal accumulators (one host read; for checkpoints)."""
        return {
            "state_version": STATE_VERSION,
            "policy": self.policy.state_dict(),
            "samples_seen": self.samples_seen,
            "epoch_samples": self.epoch_samples,
            "epoch_steps": self.epoch_steps,
            "signals": self.signals.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the loader and hook then get the restored batch size."""
        if state.get("state_version") != STATE_VERSION:
            raise DebaError(f"DebaController state has version {state.get('state_version')!r}, "
                            f"expected {STATE_VERSION}")
        before = self.batch_size
        if state["policy"].get("policy") != self.policy.name:
            raise DebaError(f"DebaController state is of policy {state['policy'].get('policy')!r}, "
                            f"this controller runs {self.policy.name!r}")
        self.signals.load_state_dict(state["signals"])
        self.policy.load_state_dict(state["policy"])
        self.samples_seen = int(state["samples_seen"])
        self.epoch_samples = int(state["epoch_samples"])
        self.epoch_steps = int(state["epoch_steps"])
        if self.loader is not None:
            set_loader_batch_size(self.loader, self.batch_size)
        if self.on_batch_size_change is not None and self.batch_size != before:
            self.on_batch_size_change(self.batch_size)
