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
  The attribute's own value is the start unless the policy was given ``start_batch`` (then the policy's
  wins, with a warning).
* ``on_train_start``: creates :class:`deba.signals.GradientSignals` over the module's trainable
  parameters, on their device, and takes over the per-step learning-rate schedulers
  (``interval="step"``) so they follow samples seen (:mod:`deba.lr_coupling`); per-epoch ones and
  ``ReduceLROnPlateau`` are left alone.
* ``on_before_optimizer_step``: sets the learning rate of the step about to run, then observes the
  gradients: added to the average (``signals_mode="epoch-avg"``), or kept as the epoch's gradient on the
  epoch's last step (``"last"``). This hook runs after backward and, with 16-bit mixed precision, after
  Lightning has unscaled them, and before gradient clipping, so both modes see the same gradient and
  Lightning zeroing the gradients before validation does not matter; with gradient accumulation it runs
  once per optimiser step, not once per batch.
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
* ``gns=True`` (the gradient noise scale, docs/noise.md): with ``Trainer(accumulate_grad_batches=k)``,
  k >= 2, every ``gns_every``-th optimiser step is a sample. ``on_after_backward`` of the step's first
  micro-batch reads its gradient (b_small = the micro-batch; under DDP Lightning runs it without sync, so
  it is the rank's own) and ``on_before_optimizer_step`` the whole step's (b_big = k micro-batches, times
  the world size under DDP): the two sizes cost nothing extra. A step whose micro-batches differ in size
  (the epoch's last, short one) is not sampled. Without accumulation, report the sizes yourself from a
  manual-optimisation ``training_step`` (:meth:`DebaCallback.observe_small_gradient` and
  :meth:`DebaCallback.observe_big_gradient`), or the records carry ``b_simple`` null with the reason.
  The records' ``extra`` and the logged metrics carry ``gns_g2``, ``gns_trace`` and ``b_simple``. With
  16-bit precision the gradients are still scaled in ``on_after_backward``, so ``gns=True`` is refused there.
  Under DDP this path is written but not tested.
* ``state_dict`` / ``load_state_dict``: the policy, the sample counters and the signal accumulators go
  into Lightning checkpoints, and a resumed fit trains at the restored batch size.

In ``signals_mode="last"`` (the paper) the statistics are of the epoch's last optimisation step, before
clipping; with manual optimisation (no ``on_before_optimizer_step`` from Lightning's loop) they are read
from ``.grad`` at the epoch end, so such a ``training_step`` must not clear them after its last step. Progress is
counted in samples (:attr:`DebaCallback.samples_seen`, :meth:`DebaCallback.progress`) so an LR schedule
can follow samples rather than steps, whose number per epoch changes with the batch size.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.data import extract_batch_size
    from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr
except ImportError as exc:  # Lightning is an optional extra
    raise ImportError(
        "deba.integrations.lightning needs PyTorch Lightning (the 'lightning' package): "
        "pip install 'deba[lightning]'"
    ) from exc

import torch

from ..errors import DebaError
from ..lr_coupling import LRCoupling, check_scaling, is_supported, warn_not_driven
from ..period import PeriodLoop
from ..policy import BatchSizePolicy, DecisionRecord
from .loop import loader_batch_size

_DECISION_CODES = {"increase": 1.0, "hold": 0.0, "rollback": -1.0}


class DebaCallback(pl.Callback):
    """Adapts the training batch size of a Lightning fit with a deba batch-size policy: a thin face over
    :class:`deba.period.PeriodLoop`, which closes each epoch and applies the decision.

    ``policy``: a :class:`deba.policy.BatchSizePolicy` (``make_deba(...)``, ``FixedPolicy``, ...).
    ``signals_mode``: ``"last"`` or ``"epoch-avg"`` (``every``: observe every k-th optimiser step).
    ``batch_size_attr``: the attribute ``train_dataloader()`` reads its batch size from.
    ``on_batch_size_change``: ``fn(trainer, pl_module, batch_size)`` replacing the attribute.
    ``lr_scaling``: none, sqrt or linear: the learning rate times (B / B0)^p.
    ``log``: whether to ``pl_module.log`` each epoch's record (under ``log_prefix``).
    The records of the fit are kept in :attr:`records`.
    """

    def __init__(self, policy: BatchSizePolicy, signals_mode: str = "last", *, every: int = 1,
                 batch_size_attr: str = "batch_size",
                 on_batch_size_change: Callable[[Any, Any, int], Any] | None = None,
                 lr_scaling: str = "none", log: bool = True, log_prefix: str = "deba/", gns: bool = False,
                 gns_every: int = 1):
        if on_batch_size_change is not None and not callable(on_batch_size_change):
            raise DebaError("DebaCallback: on_batch_size_change must be callable as fn(trainer, pl_module, batch_size)")
        check_scaling(lr_scaling, "DebaCallback")  # now, not at fit start
        if isinstance(gns_every, bool) or not isinstance(gns_every, int) or gns_every < 1:
            raise DebaError(f"DebaCallback: gns_every must be an integer >= 1, got {gns_every!r}")
        self.core = PeriodLoop(policy, signals_mode=signals_mode, every=every, resize=self._resize,
                               where="DebaCallback", gns=gns)
        self.gns_every = gns_every
        self._window: list[int] | None = None  # micro-batch sizes of a sampled optimiser step so far
        self.signals_mode = signals_mode
        self.lr_scaling = lr_scaling
        self.batch_size_attr = batch_size_attr
        self.on_batch_size_change = on_batch_size_change
        self.log_records = log
        self.log_prefix = log_prefix
        self.records: list[DecisionRecord] = []
        self._saved_reload: int | None = None
        self._expect_batch_size: int | None = None  # checked on the loader at the next epoch start
        self._batch_idx = -1
        self._fitting = False
        self._trainer = None
        self._module = None

    policy = property(lambda self: self.core.policy)
    signals = property(lambda self: self.core.signals)
    samples_seen = property(lambda self: self.core.samples_seen)
    epoch_samples = property(lambda self: self.core.epoch_samples)
    epoch_steps = property(lambda self: self.core.epoch_steps)

    @property
    def batch_size(self) -> int:
        return self.core.batch_size

    def progress(self, total_samples: int) -> float:
        """``samples_seen / total_samples`` clipped to [0, 1]: training progress that batch-size changes do not distort."""
        return self.core.progress(total_samples)

    # --- batch size -> the user's data ---------------------------------------------------------
    def _set_batch_size(self, trainer, pl_module, batch_size: int) -> None:
        if self.on_batch_size_change is not None:
            self.on_batch_size_change(trainer, pl_module, batch_size)
        else:
            lightning_setattr(pl_module, self.batch_size_attr, batch_size)

    def _resize(self, batch_size: int) -> None:
        if self._module is None:
            return  # before setup(): setup sets the size
        self._set_batch_size(self._trainer, self._module, batch_size)
        self._expect_batch_size = batch_size
        if self._fitting:
            self._request_reload(self._trainer)

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

    def _couple_lr(self, trainer) -> None:
        driven, left_alone = [], []
        for config in trainer.lr_scheduler_configs:
            s = config.scheduler
            if config.interval == "step" and not config.reduce_on_plateau and is_supported(s):
                driven.append(s)
            else:
                if config.interval == "step" and not config.reduce_on_plateau:
                    warn_not_driven(s, "DebaCallback")
                left_alone.append(s)
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        if (driven or self.lr_scaling != "none") and optimizer is None:
            raise DebaError("DebaCallback: learning-rate coupling needs exactly one optimizer, "
                            f"this module has {len(trainer.optimizers)}")
        lr = LRCoupling(optimizer, driven, scaling=self.lr_scaling, left_alone=left_alone,
                        accumulation=trainer.accumulate_grad_batches, where="DebaCallback")
        self.core.lr = lr if lr.active or left_alone else None

    # --- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        user_size = None
        if self.on_batch_size_change is None:
            if not lightning_hasattr(pl_module, self.batch_size_attr):
                raise DebaError(
                    f"DebaCallback: neither the datamodule nor the LightningModule (nor its hparams) has a "
                    f"'{self.batch_size_attr}' attribute for train_dataloader() to read; add one, or pass "
                    "on_batch_size_change=fn(trainer, pl_module, batch_size)")
            value = lightning_getattr(pl_module, self.batch_size_attr)
            user_size = value if isinstance(value, int) and not isinstance(value, bool) else None
        self.core.start(user_size, f"the {self.batch_size_attr} attribute")
        self._set_batch_size(trainer, pl_module, self.core.batch_size)
        self._expect_batch_size = self.core.batch_size

    def on_train_start(self, trainer, pl_module) -> None:
        if self.core.gns and getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise DebaError("DebaCallback(gns=True): 16-bit precision scales the gradients until the optimiser "
                            "step, so the first micro-batch's cannot be read; use bf16 or 32-bit precision")
        if self.core.gns and pl_module.automatic_optimization and trainer.accumulate_grad_batches < 2:
            warnings.warn("DebaCallback(gns=True) reads the noise scale across gradient accumulation: with "
                          "accumulate_grad_batches=1 nothing is sampled and b_simple stays null (set it to 2 or "
                          "more, or report the two sizes with observe_small_gradient / observe_big_gradient)",
                          stacklevel=2)
        if self.core.signals is None:
            self.core.attach(pl_module.parameters())
        self._couple_lr(trainer)
        self._fitting = True
        self._check_loader(trainer)  # the first loader was built after setup() set the size

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._restore_reload(trainer)
        self._check_loader(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_idx = batch_idx
        if self.core.gns and pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            k = trainer.accumulate_grad_batches
            size = extract_batch_size(batch)  # shape metadata: no host sync
            if batch_idx % k == 0:  # the first micro-batch of an optimiser step (Lightning's windows)
                sampled = (batch_idx // k) % self.gns_every == 0
                self._window = [size] if sampled else None
            elif self._window is not None:
                self._window.append(size)

    def on_after_backward(self, trainer, pl_module) -> None:
        window = self._window
        if window is not None and len(window) == 1 and self.core.signals is not None:
            k = trainer.accumulate_grad_batches  # Lightning divided this micro-batch's loss by k
            self.core.observe_small_gradient(window[0], window[0] * k)

    def _observe_noise(self, trainer) -> None:
        window, self._window = self._window, None
        k = trainer.accumulate_grad_batches
        if window is None or len(window) != k or len(set(window)) != 1:
            return  # not sampled, or a short / uneven step: its gradient is not a plain mean over b_big
        self.core.observe_big_gradient(window[0], window[0] * k * trainer.world_size)

    def observe_small_gradient(self, b_small: int, batch: int) -> None:
        """Noise scale by hand (manual optimisation): after the backward of a step's first micro-batch of
        ``b_small`` examples, its loss scaled by b_small / batch (docs/noise.md)."""
        self.core.observe_small_gradient(b_small, batch)

    def observe_big_gradient(self, b_small: int, b_big: int) -> None:
        """Noise scale by hand: after the step's last backward (``b_big``: the step's examples, all ranks)."""
        self.core.observe_big_gradient(b_small, b_big)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.core.signals is None:
            return
        self.core.before_step()
        if self._window is not None:
            self._observe_noise(trainer)
        n = trainer.num_training_batches
        last = not isinstance(n, int) or not math.isfinite(n) or self._batch_idx + 1 >= n
        self.core.observe_gradients(last_of_period=last)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or self.core.signals is None:
            return  # a skipped step (training_step returned None) trains nothing
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divides the reported loss for accumulation
        self.core.observe_step(loss, extract_batch_size(batch))  # shape metadata only: no host sync

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.core.signals is None or self.core.epoch_steps == 0:
            return
        record = self.core.close(trainer.current_epoch)  # the one host read of the epoch
        self.records.append(record)
        if self.log_records:
            self._log(pl_module, record)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_reload(trainer)
        self._fitting = False

    def _log(self, pl_module, record: DecisionRecord) -> None:
        values = {
            "batch_size": record.batch_size, "next_batch_size": record.next_batch_size,
            "grad_var": record.grad_var, "grad_norm": record.grad_norm, "loss": record.loss,
            "dnorm": record.dnorm, "dloss": record.dloss, "conf": record.conf,
            "decision": _DECISION_CODES[record.decision], "samples_seen": record.extra["samples_seen"],
            **{k: record.extra.get(k) for k in ("gns_g2", "gns_trace", "b_simple")},
        }
        for name, value in values.items():
            if value is not None:  # dnorm, dloss and conf are undefined on the first epoch
                # identical on every rank (DDP gradients and reduced losses), so no sync_dist
                pl_module.log(self.log_prefix + name, float(value), on_step=False, on_epoch=True)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Trainer.fit restores callbacks after setup() and before building the train loader: the
        # resumed fit's first loader gets the restored size (through _resize).
        self.core.load_state_dict(state_dict)
