"""deba.period.PeriodLoop through its two faces (DebaController, DebaCallback): the patterns of ordinary
user loops that broke before (issue 11, items 1, 3 and 5), non-finite periods, the out-of-memory cap.

References are independent of the code under test: gradient statistics computed in NumPy float64 from
the gradients the test reads itself at the moment the optimiser applies them, and hand-worked decisions.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deba.errors import DebaError
from deba.integrations import DebaController
from deba.period import PeriodLoop
from deba.policy import FixedPolicy, make_deba

from test_integrations import dataset, mlp  # the same data and model as the integrations' tests


def growing(**kw):
    # window 1 makes the bounded conf 0.5 <= 0.9 and theta_stab is huge: every epoch after the first grows
    settings = dict(theta_stab=1e9, theta_conf=0.9, window=1, cooldown=0, b_min=2, b_max=64, grow_factor=2.0)
    return make_deba("paper-bounded", **{**settings, **kw})


def flat(model) -> np.ndarray:
    return np.concatenate([p.grad.detach().double().numpy().ravel() for p in model.parameters()])


@torch.no_grad()
def sgd(model, lr=0.1):
    for p in model.parameters():
        p.sub_(lr * p.grad)


def train_epoch(model, loader, controller, zero_at_end=False, clip=None):
    """One epoch of an ordinary loop; returns the (var, norm) of the gradient each step applied."""
    applied = []
    for x, y in loader:
        if not zero_at_end:
            model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        controller.after_backward(loss, samples=len(x))
        g = flat(model)
        applied.append((np.var(g), np.linalg.norm(g)))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        sgd(model)
        if zero_at_end:
            model.zero_grad(set_to_none=False)  # the pattern of item 5
    return applied


# --- item 3: the user's batch size is the start ------------------------------------------------------

def test_the_loaders_batch_size_is_the_start_when_the_policy_was_not_told_one():
    loader = DataLoader(dataset(), batch_size=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conflict, no warning
        c = DebaController(growing(), mlp().parameters(), loader=loader)
    assert c.batch_size == 12 == loader.batch_sampler.batch_size == loader.batch_size
    assert c.policy.config.start_batch == 12 and c.core.reference_batch == 12


def test_an_explicit_start_batch_wins_with_a_warning_that_says_so():
    loader = DataLoader(dataset(), batch_size=12)
    with pytest.warns(UserWarning, match=r"batch size 12 .* start_batch=8; the policy's 8 wins"):
        c = DebaController(growing(start_batch=8), mlp().parameters(), loader=loader)
    assert c.batch_size == 8 == loader.batch_sampler.batch_size
    assert [len(x) for x, _ in loader][:2] == [8, 8]


def test_a_loader_size_outside_the_policy_bounds_is_clamped_with_a_warning():
    loader = DataLoader(dataset(), batch_size=3)
    with pytest.warns(UserWarning, match=r"outside the policy's \[b_min, b_max\] = \[16, 2048\]; training starts at 16"):
        c = DebaController(make_deba("paper-bounded", theta_stab=0.5, theta_conf=0.6), mlp().parameters(),
                           loader=loader)
    assert c.batch_size == 16 == loader.batch_sampler.batch_size


def test_fixed_policy_without_a_size_takes_the_loaders():
    loader = DataLoader(dataset(), batch_size=24)
    c = DebaController(FixedPolicy(), mlp().parameters(), loader=loader)
    assert c.batch_size == 24 and (c.policy.b_min, c.policy.b_max) == (24, 24)


# --- item 5: gradients zeroed in place before the epoch closes ----------------------------------------

def test_gradients_zeroed_in_place_before_end_epoch_are_refused_with_what_to_do():
    model = mlp()
    loader = iter_only(DataLoader(dataset(), batch_size=8))  # no len(): nothing captured at the last step
    c = DebaController(growing(start_batch=8), model.parameters())
    train_epoch(model, loader, c, zero_at_end=True)
    with pytest.raises(DebaError, match=r"all zero.*set_to_none=False.*close the epoch before zeroing"):
        c.end_epoch(0)


class iter_only:
    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def test_with_the_loader_known_the_last_steps_gradient_is_kept_before_zeroing_and_clipping():
    model = mlp()
    loader = DataLoader(dataset(), batch_size=8)
    c = DebaController(growing(), model.parameters(), loader=loader)
    for epoch in range(3):
        applied = train_epoch(model, loader, c, zero_at_end=True, clip=0.05)
        record = c.end_epoch(epoch)
        np.testing.assert_allclose([record.grad_var, record.grad_norm], applied[-1], rtol=1e-5)
    assert c.batch_size == 32  # 8: hold, grow, grow (zeroed gradients would have read as calm, not refused)


# --- spec section 1: a period with a non-finite step holds -------------------------------------------

def test_a_period_with_a_non_finite_step_holds_and_is_flagged():
    model = mlp()
    x, y = dataset().tensors
    c = DebaController(growing(start_batch=8), model.parameters())
    decisions = []
    for epoch in range(3):
        for step in range(4):
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:8]), y[:8])
            loss.backward()
            reported = loss * float("nan") if (epoch, step) == (1, 2) else loss
            c.after_backward(reported, samples=8)
        r = c.end_epoch(epoch)
        decisions.append((r.decision, r.non_finite, r.extra["nonfinite_steps"], r.next_batch_size))
    # hand-worked: epoch 0 holds (first); epoch 1 would grow but one step's loss was NaN: hold, flagged;
    # epoch 2 compares with epoch 0 (the last finite period) and grows
    assert decisions == [("hold", False, 0, 8), ("hold", True, 1, 8), ("increase", False, 0, 16)]


# --- the out-of-memory cap -----------------------------------------------------------------------------

def test_cap_after_out_of_memory_shrinks_the_loader_now_and_bounds_later_growth():
    model = mlp()
    loader = DataLoader(dataset(), batch_size=32)
    calls = []
    c = DebaController(growing(), model.parameters(), loader=loader, on_batch_size_change=calls.append)
    assert c.cap_batch_size(20) == 20
    assert loader.batch_sampler.batch_size == 20 and calls == [20]
    for epoch in range(3):
        train_epoch(model, loader, c)
        c.end_epoch(epoch)
    assert c.batch_size == 20 and c.policy.effective_b_max == 20  # increases stay at the cap
    with pytest.raises(DebaError, match="cap must be >= 1"):
        c.cap_batch_size(0)


def test_core_state_round_trip_keeps_the_reference_batch_and_counters():
    model = mlp()
    loader = DataLoader(dataset(), batch_size=12)
    a = DebaController(growing(), model.parameters(), loader=loader)
    train_epoch(model, loader, a)
    a.end_epoch(0)
    train_epoch(model, loader, a)
    state = a.state_dict()
    core = PeriodLoop(growing(start_batch=4), where="test")
    core.load_state_dict(state)  # before attach: the signals state waits for the parameters
    core.attach(model.parameters())
    assert core.state_dict() == state and core.reference_batch == 12 and core.batch_size == 12


# --- item 1: Lightning with a validation loop -------------------------------------------------------

def lightning_module_and_data(pl, validate):
    class Data(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 8

        def train_dataloader(self):
            return DataLoader(dataset(128), batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self):
            return DataLoader(dataset(32, seed=1), batch_size=16)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()
            self.applied = {}

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def on_before_optimizer_step(self, optimizer):  # before Lightning clips: what the step computed
            g = flat(self.net)
            self.applied.setdefault(self.current_epoch, []).append((np.var(g), np.linalg.norm(g)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    if validate:
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))
        Module.validation_step = validation_step
    return Module(), Data()


@pytest.mark.parametrize("signals_mode", ["last", "epoch-avg"])
def test_lightning_with_validation_and_clipping_reads_the_gradient_before_clipping(signals_mode, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from deba.integrations.lightning import DebaCallback

    module, data = lightning_module_and_data(pl, validate=True)
    callback = DebaCallback(growing(), signals_mode=signals_mode)
    pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               gradient_clip_val=0.01, num_sanity_val_steps=0, callbacks=[callback]).fit(module, datamodule=data)
    assert [r.decision for r in callback.records] == ["hold", "increase", "increase"]
    for epoch, record in enumerate(callback.records):
        steps = module.applied[epoch]
        ref = steps[-1] if signals_mode == "last" else np.mean(steps, axis=0)
        np.testing.assert_allclose([record.grad_var, record.grad_norm], ref, rtol=1e-5)
        assert record.grad_norm > 0.01 * 1.5  # the unclipped norm, well above the clip value


# --- a non-finite period's record replays; the trainer's hooks into close ----------------------------------

def test_a_non_finite_periods_record_keeps_loss_none_so_the_log_replays_to_the_same_decisions():
    from deba.policy import EpochSignals

    model = mlp()
    x, y = dataset().tensors
    c = DebaController(growing(start_batch=8), model.parameters())
    records = []
    for epoch in range(4):
        for step in range(3):
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x[:8]), y[:8])
            loss.backward()
            c.after_backward(loss * float("nan") if (epoch, step) == (2, 0) else loss, samples=8)
        records.append(c.end_epoch(epoch).to_dict())
    assert records[2]["non_finite"] and records[2]["loss"] is None and records[2]["nonfinite_steps"] == 1
    replay = growing(start_batch=8)
    again = [replay.step(EpochSignals(r["epoch"], r["grad_var"], r["grad_norm"], r["loss"])).to_dict()
             for r in records]
    key = ("decision", "non_finite", "next_batch_size")
    assert [tuple(r[k] for k in key) for r in again] == [tuple(r[k] for k in key) for r in records]


def test_check_state_widens_the_non_finite_flag_and_adds_its_fields():
    model = mlp()
    x, y = dataset().tensors
    loop = PeriodLoop(growing(start_batch=8), where="face")
    loop.attach(model.parameters())
    seen = []

    def check(nonfinite):
        seen.append(nonfinite)
        return True, {"nonfinite_tensors": ["net.0.weight"]}

    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x[:8]), y[:8])
    loss.backward()
    loop.observe_step(loss, 8)
    loop.observe_gradients()
    r = loop.close(check_state=check)
    assert seen == [False]  # the finite period went to the check as finite
    assert r.non_finite and r.decision == "hold" and r.loss is None and loop.last_nonfinite
    assert r.extra["nonfinite_tensors"] == ["net.0.weight"]


def test_attach_takes_signals_a_step_feeds_itself_when_their_mode_matches():
    from deba.signals import GradientSignals

    model = mlp()
    loop = PeriodLoop(growing(), signals_mode="epoch-avg", where="face")
    with pytest.raises(DebaError, match="face: the signals given run mode 'last'"):
        loop.attach(signals=GradientSignals(list(model.parameters()), mode="last"))
    own = GradientSignals(list(model.parameters()), mode="epoch-avg")
    assert loop.attach(signals=own) is own
    with pytest.raises(DebaError, match="samples must be a non-negative integer"):
        loop.count_step(-1)


def test_a_decision_record_survives_to_dict_and_from_dict():
    from deba.policy import DecisionRecord

    r = DecisionRecord(3, 64, 0.1, 2.0, 1.5, 0.01, 0.02, 0.4, "increase", False, False, "calm", 96,
                       extra={"steps": 7, "gns": 12.5})
    d = r.to_dict()
    assert d["steps"] == 7 and "extra" not in d
    assert DecisionRecord.from_dict(d) == r


def test_a_face_whose_step_never_zeroes_the_gradient_can_turn_the_zeroed_gradient_check_off():
    # deba train's step never zeroes .grad before a period closes, so a truly zero gradient is read as one
    model = mlp()
    x, y = dataset().tensors
    for refuse in (True, False):
        loop = PeriodLoop(FixedPolicy(8), where="face", refuse_zeroed_gradient=refuse)
        loop.attach(model.parameters())
        loss = nn.functional.cross_entropy(model(x[:8]), y[:8])
        loss.backward()
        loop.observe_step(loss, 8)
        model.zero_grad(set_to_none=False)
        if refuse:
            with pytest.raises(DebaError, match="face: the gradients held in .grad at the end of the epoch are all zero"):
                loop.close()
        else:
            r = loop.close()
            assert r.grad_norm == 0.0 and r.decision == "hold" and not r.non_finite
