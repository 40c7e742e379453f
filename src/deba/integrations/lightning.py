"""DEBA as a PyTorch Lightning callback (Lightning is an optional extra: ``pip install 'deba[lightning]'``).

Usage::

    class Data(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 64                      # DebaCallback sets this attribute
        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6)
    trainer = L.Trainer(max_epochs=50, callbacks=[DebaCallback(policy)])
    trainer.fit(model, datamodule=Data())

What the callback does, hook by hook:

* ``setup``: finds the ``batch_size`` attribute (on the datamodule, the LightningModule or its
  ``hparams``, as Lightning's own batch-size finder does) and sets it to the policy's batch size, so
  the first epoch's loader is built at that size. Without such an attribute, pass
  ``on_batch_size_change=fn``; ``fn(trainer, pl_module, batch_size)`` is then called instead (once at
  setup, then at every change) and must make the next ``train_dataloader()`` use that size.
* ``on_train_start``: creates :class:`deba.signals.GradientSignals` over the module's trainable
  parameters, on their device.
* ``on_before_optimizer_step`` (``signals_mode="epoch-avg"``): observes the gradients. This hook runs
  after backward and, with 16-bit mixed precision, after Lightning has unscaled them; with gradient
  accumulation it runs once per optimiser step, not once per batch.
* ``on_train_batch_end``: adds the step's loss (``outputs["loss"]``, or ``outputs`` itself when it
  is a tensor) to the device accumulators; no value is read back to the host.
* ``on_train_epoch_end``: the one host read of the epoch, ``policy.step``, ``pl_module.log`` of the
  record (``deba/batch_size``, ``deba/next_batch_size``, ``deba/grad_var``, ``deba/grad_norm``,
  ``deba/loss``, ``deba/dnorm``, ``deba/dloss``, ``deba/conf`` when defined, ``deba/decision`` as
  +1 increase / 0 hold / -1 rollback, ``deba/samples_seen``). When the batch size changed the new size
  is set and Lightning is asked to rebuild the train dataloader at the start of the next epoch: the
  callback sets ``trainer.reload_dataloaders_every_n_epochs = 1`` for that one reload and puts the
  user's value back in ``on_train_epoch_start``, so loaders are rebuilt only when the size changes and
  the user need not configure the Trainer. At the start of every epoch after a change the callback
  checks that the rebuilt loader has the new size, and raises :class:`deba.errors.DebaError` when
  ``train_dataloader()`` ignores it (for instance a loader passed to ``trainer.fit`` directly).
* ``state_dict`` / ``load_state_dict``: the policy, the sample counters and the signal accumulators go
  into Lightning checkpoints, and a resumed fit trains at the restored batch size.

In ``signals_mode="last"`` (the paper) the statistics are of the gradients held in ``.grad`` at the end
of the epoch, i.e. of its last optimisation step (after any gradient clipping Lightning applied); a
manual-optimisation ``training_step`` must not set them to None after its last step. Progress is
counted in samples (:attr:`DebaCallback.samples_seen`, :meth:`DebaCallback.progress`) so an LR schedule
can follow samples rather than steps, whose number per epoch changes with the batch size.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.data import extract_batch_size
    from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
except ImportError as exc:  # Lightning is an optional extra
    raise ImportError(
        "deba.integrations.lightning needs PyTorch Lightning (the 'lightning' package): "
        "pip install 'deba[lightning]'"
    ) from exc

import torch

from ..errors import DebaError
from ..policy import BatchSizePolicy, DecisionRecord, EpochSignals
from ..signals import SIGNAL_MODES, GradientSignals
from .loop import loader_batch_size

STATE_VERSION = 1
_DECISION_CODES = {"increase": 1.0, "hold": 0.0, "rollback": -1.0}


class DebaCallback(pl.Callback):
    """Adapts the training batch size of a Lightning fit with a deba batch-size policy.

    ``policy``: a :class:`deba.policy.BatchSizePolicy` (``make_deba(...)``, ``FixedPolicy``, ...).
    ``signals_mode``: ``"last"`` or ``"epoch-avg"`` (``every``: observe every k-th optimiser step).
    ``batch_size_attr``: the attribute ``train_dataloader()`` reads its batch size from.
    ``on_batch_size_change``: ``fn(trainer, pl_module, batch_size)`` replacing the attribute.
    ``log``: whether to ``pl_module.log`` each epoch's record (under ``log_prefix``).
    The records of the fit are kept in :attr:`records`.
    """

    def __init__(self, policy: BatchSizePolicy, signals_mode: str = "last", *, every: int = 1,
                 batch_size_attr: str = "batch_size",
                 on_batch_size_change: Callable[[Any, Any, int], Any] | None = None,
                 log: bool = True, log_prefix: str = "deba/"):
        if not isinstance(policy, BatchSizePolicy):
            raise DebaError(f"DebaCallback: policy must be a deba BatchSizePolicy, got {type(policy).__name__}")
        if signals_mode not in SIGNAL_MODES:
            raise DebaError(f"signals mode must be one of {', '.join(SIGNAL_MODES)}, got {signals_mode!r}")
        if on_batch_size_change is not None and not callable(on_batch_size_change):
            raise DebaError("DebaCallback: on_batch_size_change must be callable as fn(trainer, pl_module, batch_size)")
        self.policy = policy
        self.signals_mode = signals_mode
        self.every = every
        self.batch_size_attr = batch_size_attr
        self.on_batch_size_change = on_batch_size_change
        self.log_records = log
        self.log_prefix = log_prefix
        self.signals: GradientSignals | None = None
        self.records: list[DecisionRecord] = []
        self.samples_seen = 0
        self.epoch_samples = 0
        self.epoch_steps = 0          # training batches this epoch
        self.epoch_opt_steps = 0      # optimiser steps this epoch (the epoch-avg gating index)
        self._pending_signals_state: Mapping[str, Any] | None = None
        self._saved_reload: int | None = None
        self._expect_batch_size: int | None = None  # checked on the loader at the next epoch start
        self._trainer = None
        self._module = None

    @property
    def batch_size(self) -> int:
        return self.policy.batch_size

    def progress(self, total_samples: int) -> float:
        """``samples_seen / total_samples`` clipped to [0, 1]: training progress that batch-size changes do not distort."""
        if isinstance(total_samples, bool) or not isinstance(total_samples, (int, float)) or not total_samples > 0:
            raise DebaError(f"progress: total_samples must be a positive number, got {total_samples!r}")
        return min(1.0, max(0.0, self.samples_seen / total_samples))

    # --- batch size -> the user's data ---------------------------------------------------------
    def _set_batch_size(self, trainer, pl_module, batch_size: int) -> None:
        if self.on_batch_size_change is not None:
            self.on_batch_size_change(trainer, pl_module, batch_size)
        else:
            lightning_setattr(pl_module, self.batch_size_attr, batch_size)

    def _request_reload(self, trainer) -> None:
        # Lightning rebuilds the train loader at an epoch start when reload_dataloaders_every_n_epochs
        # says so; set it for this one reload and restore the user's value in on_train_epoch_start.
        if trainer.reload_dataloaders_every_n_epochs != 1:
            if self._saved_reload is None:
                self._saved_reload = trainer.reload_dataloaders_every_n_epochs
            trainer.reload_dataloaders_every_n_epochs = 1

    def _restore_reload(self, trainer) -> None:
        if self._saved_reload is not None:
            trainer.reload_dataloaders_every_n_epochs = self._saved_reload
            self._saved_reload = None

    def _check_loader(self, trainer) -> None:
        expected, self._expect_batch_size = self._expect_batch_size, None
        loader = trainer.train_dataloader
        if expected is None or not isinstance(loader, torch.utils.data.DataLoader):
            return  # several loaders or a custom iterable: nothing we can read reliably
        actual = loader_batch_size(loader)
        if actual is not None and actual != expected:
            raise DebaError(
                f"DebaCallback: the train dataloader has batch size {actual} but the policy set {expected}; "
                f"train_dataloader() must build the loader from self.{self.batch_size_attr} (a loader passed to "
                "trainer.fit() directly cannot be resized), or pass on_batch_size_change=")

    # --- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        if self.on_batch_size_change is None and not lightning_hasattr(pl_module, self.batch_size_attr):
            raise DebaError(
                f"DebaCallback: neither the datamodule nor the LightningModule (nor its hparams) has a "
                f"'{self.batch_size_attr}' attribute for train_dataloader() to read; add one, or pass "
                "on_batch_size_change=fn(trainer, pl_module, batch_size)")
        self._set_batch_size(trainer, pl_module, self.policy.batch_size)
        self._expect_batch_size = self.policy.batch_size

    def on_train_start(self, trainer, pl_module) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            raise DebaError("DebaCallback: the LightningModule has no trainable parameters")
        self.signals = GradientSignals(params, mode=self.signals_mode, every=self.every)
        if self._pending_signals_state is not None:
            self.signals.load_state_dict(self._pending_signals_state)
            self._pending_signals_state = None
        self._check_loader(trainer)  # the first loader was built after setup() set the size

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._restore_reload(trainer)
        self._check_loader(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.signals is not None and self.signals_mode == "epoch-avg":
            self.signals.observe_gradients(self.epoch_opt_steps)
        self.epoch_opt_steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or self.signals is None:
            return  # a skipped step (training_step returned None) trains nothing
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divides the reported loss for accumulation
        self.signals.observe_loss(loss)
        n = extract_batch_size(batch)  # shape metadata only: no host sync
        self.epoch_steps += 1
        self.epoch_samples += n
        self.samples_seen += n

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.signals is None or self.epoch_steps == 0:
            return
        stats = self.signals.end_epoch()  # the one host read of the epoch
        record = self.policy.step(EpochSignals(epoch=trainer.current_epoch, grad_var=stats["grad_var"],
                                               grad_norm=stats["grad_norm"], loss=stats["loss"]))
        record.extra.update(steps=self.epoch_steps, samples=self.epoch_samples, samples_seen=self.samples_seen,
                            nonfinite_steps=stats["nonfinite_steps"])
        self.records.append(record)
        self.epoch_steps = self.epoch_samples = self.epoch_opt_steps = 0
        if self.log_records:
            self._log(pl_module, record)
        if record.next_batch_size != record.batch_size:
            self._set_batch_size(trainer, pl_module, record.next_batch_size)
            self._request_reload(trainer)
            self._expect_batch_size = record.next_batch_size

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_reload(trainer)

    def _log(self, pl_module, record: DecisionRecord) -> None:
        values = {
            "batch_size": record.batch_size, "next_batch_size": record.next_batch_size,
            "grad_var": record.grad_var, "grad_norm": record.grad_norm, "loss": record.loss,
            "dnorm": record.dnorm, "dloss": record.dloss, "conf": record.conf,
            "decision": _DECISION_CODES[record.decision], "samples_seen": record.extra["samples_seen"],
        }
        for name, value in values.items():
            if value is not None:  # dnorm, dloss and conf are undefined on the first epoch
                # identical on every rank (DDP gradients and reduced losses), so no sync_dist
                pl_module.log(self.log_prefix + name, float(value), on_step=False, on_epoch=True)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "state_version": STATE_VERSION,
            "policy": self.policy.state_dict(),
            "samples_seen": self.samples_seen,
            "epoch_samples": self.epoch_samples,
            "epoch_steps": self.epoch_steps,
            "epoch_opt_steps": self.epoch_opt_steps,
            "signals": None if self.signals is None else self.signals.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("state_version") != STATE_VERSION:
            raise DebaError(f"DebaCallback state has version {state_dict.get('state_version')!r}, "
                            f"expected {STATE_VERSION}")
        self.policy.load_state_dict(state_dict["policy"])
        self.samples_seen = int(state_dict["samples_seen"])
        self.epoch_samples = int(state_dict["epoch_samples"])
        self.epoch_steps = int(state_dict["epoch_steps"])
        self.epoch_opt_steps = int(state_dict["epoch_opt_steps"])
        signals_state = state_dict.get("signals")
        if signals_state is not None:
            if self.signals is not None:
                self.signals.load_state_dict(signals_state)
            else:
                self._pending_signals_state = signals_state  # applied in on_train_start
        if self._module is not None:
            # Trainer.fit restores callbacks after setup() and before building the train loader:
            # the resumed fit's first loader must have the restored size.
            self._set_batch_size(self._trainer, self._module, self.policy.batch_size)
            self._expect_batch_size = self.policy.batch_size
