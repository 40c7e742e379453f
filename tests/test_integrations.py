"""deba.integrations: the custom-loop controller and the Lightning callback, on the CPU.

References are independent of the code under test: gradient statistics and epoch losses computed in
NumPy float64 from the gradients the test reads itself, fed to a bare policy of the same settings;
batch sizes counted from what the loaders actually yield.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from deba.errors import DebaError
from deba.integrations import DebaController, loader_batch_size, set_loader_batch_size
from deba.policy import FixedPolicy, make_deba

N_SAMPLES = 96


def dataset(n=N_SAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(axis=1)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def mixed_policy():
    # chosen so that the run below both grows and shrinks the batch, with margins of a few percent
    # between the signals and the thresholds (float32 vs float64 cannot flip a decision)
    return make_deba("paper", theta_stab=0.6, theta_conf=1.1, window=3, cooldown=0, start_batch=8,
                     b_min=4, b_max=64, grow_factor=2.0, rollback_factor=0.5)


def flat_grads64(model) -> np.ndarray:
    return np.concatenate([p.grad.detach().double().numpy().ravel() for p in model.parameters()])


@torch.no_grad()
def sgd_step(model, lr=0.1):
    # by hand: torch.optim's first step imports torch._dynamo, seconds of import for nothing here
    for p in model.parameters():
        p.sub_(lr * p.grad)


def expected_sizes(n, batch_size, drop_last=False):
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return sizes


def run_loop(epochs, signals_mode, every=1):
    """Train with a DebaController; alongside, feed a bare policy NumPy float64 signals."""
    model = mlp()
    loader = DataLoader(dataset(), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(1))
    controller = DebaController(mixed_policy(), model.parameters(), signals_mode=signals_mode, every=every,
                                loader=loader)
    reference = mixed_policy()
    out = []
    for epoch in range(epochs):
        sizes, losses, step_stats = [], [], []
        for step, (x, y) in enumerate(loader):
            sizes.append(len(x))
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            controller.after_backward(loss, samples=len(x))
            losses.append(loss.item())
            if step % every == 0:
                g = flat_grads64(model)
                step_stats.append((np.var(g), np.linalg.norm(g)))
            sgd_step(model)
        if signals_mode == "last":
            g = flat_grads64(model)
            ref_var, ref_norm = np.var(g), np.linalg.norm(g)
        else:
            ref_var, ref_norm = np.mean(step_stats, axis=0)
        signals = {"epoch": epoch, "grad_var": ref_var, "grad_norm": ref_norm, "loss": float(np.mean(losses))}
        out.append((sizes, controller.end_epoch(epoch), reference.step(signals), controller.samples_seen))
    return out, controller, loader


@pytest.mark.parametrize("signals_mode,every", [("last", 1), ("epoch-avg", 1), ("epoch-avg", 3)])
def test_controller_decides_like_the_bare_policy_on_numpy_signals(signals_mode, every):
    out, _, _ = run_loop(8, signals_mode, every)
    for _sizes, record, ref, _ in out:
        np.testing.assert_allclose(record.grad_var, ref.grad_var, rtol=1e-5)
        np.testing.assert_allclose(record.grad_norm, ref.grad_norm, rtol=1e-5)
        np.testing.assert_allclose(record.loss, ref.loss, rtol=1e-6)
        assert (record.decision, record.batch_size, record.next_batch_size) == \
            (ref.decision, ref.batch_size, ref.next_batch_size)
        assert record.reason.split(" ")[0] == ref.reason.split(" ")[0]
    if signals_mode == "last":  # the run this test is built on moves the batch both ways
        decisions = {record.decision for _, record, _, _ in out}
        assert {"increase", "rollback"} <= decisions


def test_loader_yields_the_decided_batch_size_each_epoch_and_samples_are_counted():
    out, controller, loader = run_loop(8, "last")
    assert out[0][0] == expected_sizes(N_SAMPLES, 8)  # the constructor resized the loader from 5 to 8
    for epoch, (sizes, record, _, samples_seen) in enumerate(out):
        assert sizes == expected_sizes(N_SAMPLES, record.batch_size)
        if epoch + 1 < len(out):
            assert out[epoch + 1][1].batch_size == record.next_batch_size
        assert record.extra["samples"] == N_SAMPLES
        assert record.extra["steps"] == len(sizes)
        assert record.extra["samples_seen"] == samples_seen == (epoch + 1) * N_SAMPLES
    assert loader.batch_sampler.batch_size == loader_batch_size(loader) == controller.batch_size
    total = 10 * N_SAMPLES
    assert controller.progress(total) == pytest.approx(len(out) / 10)
    assert controller.progress(N_SAMPLES) == 1.0


def test_samples_default_to_the_batch_size_and_progress_spans_a_change():
    model = mlp()
    loader = DataLoader(dataset(), batch_size=8, drop_last=True)
    policy = make_deba("paper-bounded", theta_stab=1e9, theta_conf=0.9, window=1, cooldown=0, start_batch=10,
                       b_min=4, b_max=64, grow_factor=2.0)
    controller = DebaController(policy, model.parameters(), loader=loader)
    seen = []
    for _epoch in range(3):
        for x, y in loader:
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            controller.after_backward(loss)  # no samples=: counts controller.batch_size per step
        controller.end_epoch()  # epoch numbers default to 0, 1, 2
        seen.append(controller.samples_seen)
    # hand-worked: B = 10, 10, 20 (first epoch holds, then window=1 gives conf 0.5 <= 0.9: increase)
    assert seen == [90, 180, 180 + 80]
    assert controller.batch_size == 40 and controller.policy.last_epoch == 2
    assert controller.progress(4 * 90) == pytest.approx(260 / 360)


def test_hook_gets_each_new_batch_size_and_apply_resizes_other_loaders():
    model = mlp()
    policy = make_deba("paper-bounded", theta_stab=1e9, theta_conf=0.9, window=1, cooldown=0, start_batch=6,
                       b_min=4, b_max=64, grow_factor=2.0)
    calls = []
    controller = DebaController(policy, model.parameters(), on_batch_size_change=calls.append)
    other = DataLoader(dataset(), batch_size=3)
    assert controller.apply(other) == 6 and [len(x) for x, _ in other][:2] == [6, 6]
    for epoch in range(3):
        for x, y in DataLoader(dataset(), batch_size=controller.batch_size):
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            controller.after_backward(loss, samples=len(x))
        controller.end_epoch(epoch)
    assert calls == [12, 24]  # epoch 0 holds; epochs 1 and 2 grow
    controller.apply(other)
    assert [len(x) for x, _ in other] == expected_sizes(N_SAMPLES, 24)


def test_persistent_workers_pick_up_the_new_batch_size():
    loader = DataLoader(dataset(), batch_size=8, num_workers=1, persistent_workers=True)
    assert [len(x) for x, _ in loader] == expected_sizes(N_SAMPLES, 8)
    set_loader_batch_size(loader, 20)
    assert [len(x) for x, _ in loader] == expected_sizes(N_SAMPLES, 20)
    assert len(loader) == 5


def test_state_round_trip_mid_epoch_continues_identically():
    model = mlp()
    data = dataset()
    x, y = data.tensors
    policy_kwargs = {"theta_stab": 0.3, "theta_conf": 0.45, "window": 3, "cooldown": 1, "start_batch": 8, "b_min": 4,
                     "b_max": 64}
    a = DebaController(make_deba("paper-bounded", **policy_kwargs), model.parameters(), signals_mode="epoch-avg")

    def step(controllers, lo, hi):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi])
        loss.backward()
        for c in controllers:
            c.after_backward(loss, samples=hi - lo)
        sgd_step(model)

    for epoch in range(3):
        for lo in range(0, 48, 8):
            step([a], lo, lo + 8)
        a.end_epoch(epoch)
    step([a], 0, 8)
    step([a], 8, 16)  # mid-epoch: the accumulators hold two steps
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON types only
    loader = DataLoader(data, batch_size=5)
    b = DebaController(make_deba("paper-bounded", theta_stab=9.0, theta_conf=0.9), model.parameters(),
                       signals_mode="epoch-avg", loader=loader)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    assert b.policy.config == a.policy.config  # the saved settings win
    assert loader.batch_sampler.batch_size == a.batch_size
    assert (b.samples_seen, b.epoch_steps, b.epoch_samples) == (3 * 48 + 16, 2, 16)
    step([a, b], 16, 24)
    ra, rb = a.end_epoch(3), b.end_epoch(3)
    assert ra.to_dict() == rb.to_dict()


def test_state_of_another_kind_is_refused():
    model = mlp()
    a = DebaController(FixedPolicy(8), model.parameters())
    with pytest.raises(DebaError, match="version"):
        a.load_state_dict({"state_version": 99})
    b = DebaController(FixedPolicy(8), model.parameters(), signals_mode="epoch-avg")
    with pytest.raises(DebaError, match="mode"):
        b.load_state_dict(a.state_dict())
    c = DebaController(growing_policy(), model.parameters())
    with pytest.raises(DebaError, match="policy 'fixed'"):
        c.load_state_dict(a.state_dict())


def test_epochs_out_of_order_are_refused_before_the_signals_are_read():
    model = mlp()
    x, y = dataset().tensors
    c = DebaController(mixed_policy(), model.parameters())
    for epoch in range(2):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        c.after_backward(loss, samples=len(x))
        if epoch == 1:
            with pytest.raises(DebaError, match="consecutive"):
                c.end_epoch(5)
        record = c.end_epoch(epoch)
        assert (record.epoch, record.extra["steps"]) == (epoch, 1)
        assert record.loss == pytest.approx(loss.item(), rel=1e-6)


class OddBatches(BatchSampler):
    """A BatchSampler subclass keeps its batch_size attribute: resizable."""


def test_set_loader_batch_size_on_resizable_loaders():
    data = dataset()
    custom = DataLoader(data, batch_sampler=OddBatches(SequentialSampler(data), batch_size=4, drop_last=False))
    set_loader_batch_size(custom, 32)
    assert [len(x) for x, _ in custom] == [32, 32, 32]

    class DeviceLoaderLike:
        def set_batch_size(self, b):
            self.b = b

    like = DeviceLoaderLike()
    set_loader_batch_size(like, 7)
    assert like.b == 7


def test_loaders_without_a_mutable_batch_size_raise_one_clear_error():
    data = dataset()
    with pytest.raises(DebaError, match="batch_size=None"):
        set_loader_batch_size(DataLoader(data, batch_size=None), 8)
    fixed_batches = [list(range(i, i + 8)) for i in range(0, N_SAMPLES, 8)]
    with pytest.raises(DebaError, match="no integer batch_size"):
        set_loader_batch_size(DataLoader(data, batch_sampler=fixed_batches), 8)
    with pytest.raises(DebaError, match="no batch_sampler"):
        set_loader_batch_size(object(), 8)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(DebaError, match="positive integer"):
            set_loader_batch_size(DataLoader(data, batch_size=4), bad)
    model = mlp()
    with pytest.raises(DebaError, match="batch_size=None"):  # at construction, not epochs later
        DebaController(FixedPolicy(8), model.parameters(), loader=DataLoader(data, batch_size=None))
    with pytest.raises(DebaError, match="BatchSizePolicy"):
        DebaController(object(), model.parameters())
    c = DebaController(FixedPolicy(8), model.parameters())
    with pytest.raises(DebaError, match="no step"):
        c.end_epoch(0)
    with pytest.raises(DebaError, match="total_samples"):
        c.progress(0)


def test_deba_and_the_loop_import_without_lightning():
    code = (
        "import sys\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['lightning.pytorch'] = None\n"
        "import deba, deba.integrations, deba.integrations.loop\n"
        "from deba.integrations import DebaController\n"
        "try:\n"
        "    import deba.integrations.lightning\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'deba[lightning]'" in proc.stdout


# --- Lightning ---------------------------------------------------------------------------------------

def lightning_parts():
    pl = pytest.importorskip("lightning.pytorch")
    from deba.integrations.lightning import DebaCallback

    class Data(pl.LightningDataModule):
        def __init__(self, n=128):
            super().__init__()
            self.batch_size = 3  # DebaCallback replaces it with the policy's size in setup()
            self.data = dataset(n)

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    class Module(pl.LightningModule):
        """Records, by its own means, what the callback should see: sizes, losses, gradient statistics."""

        def __init__(self):
            super().__init__()
            self.net = mlp()
            self.sizes, self.losses, self.step_stats, self.epoch_end = {}, {}, {}, {}

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.sizes.setdefault(self.current_epoch, []).append(len(x))
            self.losses.setdefault(self.current_epoch, []).append(loss.item())
            return loss

        def on_before_optimizer_step(self, optimizer):
            g = flat_grads64(self.net)
            self.step_stats.setdefault(self.current_epoch, []).append((np.var(g), np.linalg.norm(g)))

        def on_train_epoch_end(self):  # runs after the callback's hook; .grad is untouched by it
            g = flat_grads64(self.net)
            self.epoch_end[self.current_epoch] = (np.var(g), np.linalg.norm(g))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return pl, DebaCallback, Data, Module


def trainer(pl, callbacks, max_epochs, root, **kwargs):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                      enable_checkpointing=kwargs.pop("enable_checkpointing", False), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1, callbacks=callbacks, **kwargs)


def growing_policy():
    # window 1: the median is grad_var itself, so the bounded conf is 0.5 <= 0.9; theta_stab huge and
    # no cooldown: every epoch after the first grows the batch
    return make_deba("paper-bounded", theta_stab=1e9, theta_conf=0.9, window=1, cooldown=0, start_batch=8,
                     b_min=4, b_max=64, grow_factor=2.0)


def test_lightning_callback_grows_the_datamodule_batch_size(tmp_path):
    pl, DebaCallback, Data, Module = lightning_parts()
    data, module, callback = Data(), Module(), DebaCallback(growing_policy())
    fit = trainer(pl, [callback], 4, tmp_path)
    fit.fit(module, datamodule=data)
    # hand-worked: epoch 0 holds (first epoch), epochs 1, 2, 3 double the size
    assert [r.batch_size for r in callback.records] == [8, 8, 16, 32]
    assert [r.decision for r in callback.records] == ["hold", "increase", "increase", "increase"]
    assert {e: sizes for e, sizes in module.sizes.items()} == {
        0: [8] * 16, 1: [8] * 16, 2: [16] * 8, 3: [32] * 4}
    assert data.batch_size == 64 and callback.batch_size == 64
    assert fit.reload_dataloaders_every_n_epochs == 0  # the user's setting is back
    assert callback.samples_seen == 4 * 128 and callback.progress(8 * 128) == 0.5
    metrics = fit.callback_metrics
    assert float(metrics["deba/batch_size"]) == 32 and float(metrics["deba/next_batch_size"]) == 64
    assert float(metrics["deba/decision"]) == 1.0
    assert float(metrics["deba/conf"]) == pytest.approx(callback.records[-1].conf, rel=1e-6)


@pytest.mark.parametrize("signals_mode,accumulate", [("last", 1), ("last", 2), ("epoch-avg", 1)])
def test_lightning_signals_match_numpy(signals_mode, accumulate, tmp_path):
    pl, DebaCallback, Data, Module = lightning_parts()
    module, callback = Module(), DebaCallback(growing_policy(), signals_mode=signals_mode)
    trainer(pl, [callback], 3, tmp_path, accumulate_grad_batches=accumulate).fit(module, datamodule=Data())
    reference = growing_policy()
    for epoch, record in enumerate(callback.records):
        if signals_mode == "last":
            ref_var, ref_norm = module.epoch_end[epoch]
        else:
            ref_var, ref_norm = np.mean(module.step_stats[epoch], axis=0)
        np.testing.assert_allclose(record.grad_var, ref_var, rtol=1e-5)
        np.testing.assert_allclose(record.grad_norm, ref_norm, rtol=1e-5)
        np.testing.assert_allclose(record.loss, np.mean(module.losses[epoch]), rtol=1e-6)
        ref = reference.step({"epoch": epoch, "grad_var": ref_var, "grad_norm": ref_norm,
                              "loss": float(np.mean(module.losses[epoch]))})
        assert (record.decision, record.next_batch_size) == (ref.decision, ref.next_batch_size)


def test_lightning_checkpoint_resume_keeps_the_policy_and_batch_size(tmp_path):
    pl, DebaCallback, Data, Module = lightning_parts()
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = DebaCallback(growing_policy())
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(pl, [first, ckpt], 3, tmp_path, enable_checkpointing=True).fit(Module(), datamodule=Data())
    assert first.batch_size == 32

    resumed_module, resumed_data = Module(), Data()
    resumed = DebaCallback(make_deba("paper-bounded", theta_stab=1e9, theta_conf=0.9, window=1, cooldown=0,
                                     start_batch=4, b_min=4, b_max=64, grow_factor=2.0))
    trainer(pl, [resumed], 5, tmp_path, enable_checkpointing=True).fit(resumed_module, datamodule=resumed_data,
                                                             ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed_module.sizes == {3: [32] * 4, 4: [64] * 2}
    assert [(r.epoch, r.batch_size) for r in resumed.records] == [(3, 32), (4, 64)]
    assert resumed.samples_seen == 5 * 128
    assert resumed_data.batch_size == 64  # the b_max cap: an increase at the bound keeps the size


def test_lightning_module_attribute_and_hook_routes(tmp_path):
    pl, DebaCallback, _, Module = lightning_parts()

    class SelfLoading(Module):
        def __init__(self):
            super().__init__()
            self.batch_size = 5
            self.data = dataset(128)

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=self.batch_size)

    module = SelfLoading()
    trainer(pl, [DebaCallback(growing_policy())], 3, tmp_path).fit(module)
    assert module.sizes == {0: [8] * 16, 1: [8] * 16, 2: [16] * 8} and module.batch_size == 32

    calls = []

    def resize(trainer_, pl_module, batch_size):
        calls.append(batch_size)
        pl_module.chosen = batch_size

    class HookLoading(Module):
        chosen = 1

        def train_dataloader(self):
            return DataLoader(dataset(128), batch_size=self.chosen)

    module = HookLoading()
    trainer(pl, [DebaCallback(growing_policy(), on_batch_size_change=resize)], 3, tmp_path).fit(module)
    assert calls == [8, 16, 32] and module.sizes[2] == [16] * 8


def test_lightning_errors_name_the_problem(tmp_path):
    pl, DebaCallback, _, Module = lightning_parts()
    with pytest.raises(DebaError, match="'batch_size' attribute"):
        trainer(pl, [DebaCallback(growing_policy())], 1, tmp_path).fit(
            Module(), train_dataloaders=DataLoader(dataset(), batch_size=8))

    class Ignores(Module):
        batch_size = 8

    with pytest.raises(DebaError, match="batch size 5 but the policy set 8"):
        trainer(pl, [DebaCallback(growing_policy())], 1, tmp_path).fit(
            Ignores(), train_dataloaders=DataLoader(dataset(), batch_size=5))
    with pytest.raises(DebaError, match="signals mode"):
        DebaCallback(growing_policy(), signals_mode="mean")


def test_lightning_missing_gives_the_install_hint(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "deba.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'deba\[lightning\]'"):
        importlib.import_module("deba.integrations.lightning")


def test_lightning_noise_scale_across_accumulation_matches_numpy(tmp_path):
    """gns=True under accumulate_grad_batches=2: the first micro-batch's gradient and the step's, read by the
    module itself and combined in NumPy float64 (McCandlish et al., appendix A), give the period's values."""
    pl, DebaCallback, Data, Module = lightning_parts()

    class Noted(Module):
        def __init__(self):
            super().__init__()
            self.small, self.big = {}, {}

        def on_after_backward(self):  # after the callback's hook; reads .grad as it is
            if self.trainer.fit_loop.epoch_loop.batch_idx % 2 == 0:
                self.small.setdefault(self.current_epoch, []).append(flat_grads64(self.net) * 2)  # loss / 2

        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            self.big.setdefault(self.current_epoch, []).append(flat_grads64(self.net))

    policy = FixedPolicy(8)
    module, callback = Noted(), DebaCallback(policy, gns=True)
    trainer(pl, [callback], 2, tmp_path, accumulate_grad_batches=2).fit(module, datamodule=Data(n=128))
    for epoch, record in enumerate(callback.records):
        small = [float(g @ g) for g in module.small[epoch]]
        big = [float(g @ g) for g in module.big[epoch]]
        assert len(small) == len(big) == 8  # 16 micro-batches of 8, 8 optimiser steps
        g2 = np.mean([(16 * b - 8 * s) / 8 for s, b in zip(small, big)])
        trace = np.mean([(s - b) / (1 / 8 - 1 / 16) for s, b in zip(small, big)])
        extra = record.extra
        assert (extra["gns_samples"], extra["gns_b_small"], extra["gns_b_big"]) == (8, 8, 16)
        np.testing.assert_allclose(extra["gns_g2"], g2, rtol=1e-4)
        np.testing.assert_allclose(extra["gns_trace"], trace, rtol=1e-4)
        np.testing.assert_allclose(extra["b_simple"], trace / g2, rtol=1e-4)


def test_lightning_noise_scale_every_second_step_and_the_warning_without_accumulation(tmp_path):
    pl, DebaCallback, Data, Module = lightning_parts()
    callback = DebaCallback(FixedPolicy(8), gns=True, gns_every=2)
    trainer(pl, [callback], 1, tmp_path, accumulate_grad_batches=2).fit(Module(), datamodule=Data(n=128))
    assert callback.records[0].extra["gns_samples"] == 4  # optimiser steps 0, 2, 4, 6
    callback = DebaCallback(FixedPolicy(8), gns=True)
    with pytest.warns(UserWarning, match="accumulate_grad_batches=1 nothing is sampled"):
        trainer(pl, [callback], 1, tmp_path).fit(Module(), datamodule=Data(n=128))
    assert callback.records[0].extra["b_simple"] is None and callback.records[0].extra["gns_reason"]
    with pytest.raises(DebaError, match="gns_every must be an integer >= 1"):
        DebaCallback(FixedPolicy(8), gns=True, gns_every=0)
