"""deba.lr_coupling: torch's schedulers keep their shape when the batch size changes (issue 11, item 2),
in an own loop (DebaController) and under Lightning, and the lr x (B / B0)^p coupling.

The reference for "the schedule at position k" is torch itself: a fresh optimiser and scheduler of the same
construction stepped k times, the ordinary call-driven way. The batch sizes follow a script that grows and
rolls back (so an OneCycleLR stepped by calls would overrun), and the position of each optimiser step is
worked out here from the samples the loop trained on: samples before the step // the starting batch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched
from torch.utils.data import DataLoader, TensorDataset

from deba.errors import DebaError
from deba.integrations import DebaController
from deba.lr_coupling import LRCoupling
from deba.policy import BatchSizePolicy, DecisionRecord, EpochSignals

N, B0, EPOCHS = 96, 8, 6
TOTAL = EPOCHS * (N // B0)  # 72 steps planned at the starting batch
SIZES = [8, 16, 4, 4, 6, 32]  # by calls: 12 + 6 + 24 + 24 + 16 + 3 = 85 steps, more than planned


class Script(BatchSizePolicy):
    """Epoch i trains at sizes[i], whatever the signals say."""

    name = "script"

    def __init__(self, sizes):
        super().__init__(sizes[0], 1, 1 << 20)
        self.sizes = sizes

    def step(self, signals):
        s = signals if isinstance(signals, EpochSignals) else EpochSignals.from_mapping(signals)
        b = self._batch_size
        nxt = self.sizes[s.epoch + 1] if s.epoch + 1 < len(self.sizes) else b
        decision = "increase" if nxt > b else "rollback" if nxt < b else "hold"
        self.last_epoch, self._batch_size = s.epoch, nxt
        return DecisionRecord(s.epoch, b, s.grad_var, s.grad_norm, s.loss, None, None, None, decision, False, False,
                              "script", nxt)


def dataset(n=N):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 2))


SCHEDULERS = {
    "OneCycleLR": lambda opt: sched.OneCycleLR(opt, max_lr=0.5, total_steps=TOTAL),
    "CosineAnnealingLR": lambda opt: sched.CosineAnnealingLR(opt, T_max=TOTAL, eta_min=0.001),
    "LambdaLR": lambda opt: sched.LambdaLR(opt, lambda k: 1.0 / (1.0 + 0.1 * k)),
    "StepLR": lambda opt: sched.StepLR(opt, step_size=10, gamma=0.5),
    "MultiStepLR": lambda opt: sched.MultiStepLR(opt, milestones=[20, 50], gamma=0.1),
    "LinearLR": lambda opt: sched.LinearLR(opt, start_factor=0.1, total_iters=30),
    "SequentialLR": lambda opt: sched.SequentialLR(
        opt, [sched.LinearLR(opt, start_factor=0.1, total_iters=10), sched.CosineAnnealingLR(opt, T_max=TOTAL - 10)],
        milestones=[10]),
}


def reference_lrs(make, upto):
    """lr of the schedule at positions 0..upto, by stepping a fresh scheduler once per position."""
    opt = torch.optim.SGD(model().parameters(), lr=0.1, momentum=0.9)
    s = make(opt)
    out = []
    for k in range(upto + 1):
        out.append(opt.param_groups[0]["lr"])
        if k < upto:
            opt.step()
            s.step()
    return out


def own_loop(make, sizes=SIZES, lr_scaling="none", with_scheduler=True):
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = make(opt) if with_scheduler else None
    loader = DataLoader(dataset(), batch_size=sizes[0])
    c = DebaController(Script(sizes), net.parameters(), loader=loader, scheduler=scheduler, optimizer=opt,
                       lr_scaling=lr_scaling)
    used = []  # (samples before the step, batch size, lr the optimiser applied)
    seen = 0
    for epoch in range(len(sizes)):
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            c.after_backward(loss, samples=len(x))
            used.append((seen, c.batch_size, opt.param_groups[0]["lr"]))
            opt.step()
            if scheduler is not None:
                scheduler.step()  # the user's call, as always; deba moves the position at the next step
            seen += len(x)
        c.end_epoch(epoch)
    return used


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_own_loop_schedules_follow_samples_seen_through_growth_and_rollback(name):
    used = own_loop(SCHEDULERS[name])
    assert len(used) == 85 and {b for _, b, _ in used} == set(SIZES)
    ref = reference_lrs(SCHEDULERS[name], TOTAL)
    for seen, _, lr in used:
        assert lr == pytest.approx(ref[seen // B0], rel=1e-9, abs=1e-12), (name, seen)
    assert used[-1][0] // B0 == TOTAL - 4  # the last step sits where 72 planned steps put it: 544 samples in


def test_cosine_reaches_its_end_after_growth():
    # growth: 12 + 6 + 3 + 3 + 3 + 3 calls. Counted by calls the cosine would stop at 30 of its 72 steps
    sizes = [8, 16, 32, 32, 32, 32]
    used = own_loop(SCHEDULERS["CosineAnnealingLR"], sizes=sizes)
    by_calls = reference_lrs(SCHEDULERS["CosineAnnealingLR"], TOTAL)[len(used) - 1]
    last = used[-1][2]
    expected = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * ((N * EPOCHS - 32) // B0) / TOTAL)) / 2
    assert last == pytest.approx(expected) and last < 0.01 < by_calls


@pytest.mark.parametrize("scaling,power", [("linear", 1.0), ("sqrt", 0.5)])
def test_coupling_multiplies_by_batch_over_start_to_the_power(scaling, power):
    used = own_loop(None, lr_scaling=scaling, with_scheduler=False)
    for _, b, lr in used:
        assert lr == pytest.approx(0.1 * (b / B0) ** power, rel=1e-12)
    step = own_loop(SCHEDULERS["StepLR"], lr_scaling=scaling)
    ref = reference_lrs(SCHEDULERS["StepLR"], TOTAL)
    for seen, b, lr in step:
        assert lr == pytest.approx(ref[seen // B0] * (b / B0) ** power, rel=1e-9)


def test_without_scheduler_or_scaling_the_learning_rate_is_not_touched():
    used = own_loop(None, with_scheduler=False)
    assert {lr for _, _, lr in used} == {0.1}


def test_unsupported_schedulers_and_scalings_are_refused_with_one_line():
    opt = torch.optim.SGD(model().parameters(), lr=0.1)
    with pytest.raises(DebaError, match="MultiplicativeLR cannot be driven by samples seen"):
        LRCoupling(opt, [sched.MultiplicativeLR(opt, lambda k: 0.9)])
    with pytest.raises(DebaError, match="lr_scaling must be one of none, sqrt, linear"):
        LRCoupling(opt, scaling="square")
    with pytest.raises(DebaError, match="needs the optimizer"):
        DebaController(Script([8]), model().parameters(), lr_scaling="sqrt")


def test_plateau_left_alone_gets_the_coupling_as_a_factor_at_each_change():
    opt = torch.optim.SGD(model().parameters(), lr=0.1)
    plateau = sched.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    lr = LRCoupling(opt, scaling="linear", left_alone=[plateau])
    lr.apply(0, 8, 8)
    assert opt.param_groups[0]["lr"] == 0.1  # a scheduler deba does not drive keeps its value
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement: halved
    lr.on_change(8, 16)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 2)


def test_lightning_steps_a_one_cycle_schedule_by_samples(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from deba.integrations.lightning import DebaCallback

    class Data(pl.LightningDataModule):
        batch_size = 8

        def train_dataloader(self):
            return DataLoader(dataset(), batch_size=self.batch_size)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()
            self.used, self.seen = [], 0

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def on_before_optimizer_step(self, optimizer):  # after the callback's hook set the lr
            self.used.append((self.seen, optimizer.param_groups[0]["lr"]))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.seen += len(batch[0])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": SCHEDULERS["OneCycleLR"](opt), "interval": "step"}}

    module, callback = Module(), DebaCallback(Script(SIZES))
    pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[callback]).fit(module, datamodule=Data())
    ref = reference_lrs(SCHEDULERS["OneCycleLR"], TOTAL)
    assert len(module.used) == 85
    np.testing.assert_allclose([lr for _, lr in module.used], [ref[seen // B0] for seen, _ in module.used],
                               rtol=1e-9)


def test_lightning_couples_the_learning_rate_to_the_batch_size(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from deba.integrations.lightning import DebaCallback

    class Data(pl.LightningDataModule):
        batch_size = 8

        def train_dataloader(self):
            return DataLoader(dataset(), batch_size=self.batch_size)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()
            self.used = []

        def training_step(self, batch, batch_idx):
            self.size = len(batch[0])
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def on_before_optimizer_step(self, optimizer):
            self.used.append((self.size, optimizer.param_groups[0]["lr"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[DebaCallback(Script([8, 16, 4]), lr_scaling="sqrt")]).fit(module, datamodule=Data())
    assert {b for b, _ in module.used} == {8, 16, 4}
    for b, lr in module.used:
        assert lr == pytest.approx(0.1 * math.sqrt(b / 8), rel=1e-12)
