"""deba.signals against NumPy float64 references, on the CPU."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from deba.errors import DebaError
from deba.signals import GradientSignals, grad_stats


def flat_grads64(params) -> np.ndarray:
    """The reference: every gradient, concatenated in float64 (allowed here, never in the library)."""
    return np.concatenate([p.grad.detach().double().numpy().ravel() for p in params if p.grad is not None])


def assert_stats(var, norm, ref: np.ndarray, rtol=1e-5):
    assert var.dtype == torch.float32 and norm.dtype == torch.float32
    assert var.dim() == 0 and norm.dim() == 0
    np.testing.assert_allclose(var.item(), np.var(ref), rtol=rtol)
    np.testing.assert_allclose(norm.item(), np.linalg.norm(ref), rtol=rtol)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        self.unused = nn.Linear(4, 4)  # never called: its parameters keep grad None

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.head(x)


@torch.no_grad()
def sgd_step(model, lr):
    # by hand: torch.optim's first step imports torch._dynamo, seconds of import for nothing here
    for p in model.parameters():
        if p.grad is not None:
            p.sub_(lr * p.grad)


def backward_once(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


def test_conv_net_after_backward_skips_frozen_and_unused_parameters():
    torch.manual_seed(0)
    model = ConvNet()
    model.conv1.weight.requires_grad_(False)  # frozen: no gradient
    backward_once(model, torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,)))
    params = list(model.parameters())
    assert model.conv1.weight.grad is None and model.unused.weight.grad is None
    with_grad = [p for p in params if p.grad is not None]
    assert 0 < len(with_grad) < len(params)
    var, norm = grad_stats(params)
    assert var.device == params[0].device
    assert_stats(var, norm, flat_grads64(params))


def test_linear_net_accepts_a_generator_of_parameters():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    backward_once(model, torch.randn(32, 20), torch.randint(0, 5, (32,)))
    var, norm = grad_stats(model.parameters())
    assert_stats(var, norm, flat_grads64(model.parameters()))


def test_mixed_dtypes_bf16_fp16_fp32():
    torch.manual_seed(2)
    low = nn.Linear(16, 32).to(torch.bfloat16)
    high = nn.Linear(32, 4)
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    loss = high(torch.relu(low(x)).float()).square().mean()
    loss.backward()
    half = torch.zeros(50, dtype=torch.float16, requires_grad=True)
    half.grad = torch.randn(50).to(torch.float16)
    params = [*low.parameters(), *high.parameters(), half]
    assert {p.grad.dtype for p in params} == {torch.bfloat16, torch.float16, torch.float32}
    var, norm = grad_stats(params)
    assert_stats(var, norm, flat_grads64(params))


def test_large_common_offset_keeps_the_variance_accurate():
    # E[x^2] - E[x]^2 in float32 would lose every digit here: var ~ 1e-6 against x^2 ~ 1e6.
    gen = torch.Generator().manual_seed(3)
    params = []
    for n, offset in ((5000, 1000.0), (3000, 1000.002), (700, 999.998)):
        p = torch.zeros(n, requires_grad=True)
        p.grad = offset + 1e-3 * torch.randn(n, generator=gen)
        params.append(p)
    ref = flat_grads64(params)
    assert np.var(ref) < 1e-5 and np.mean(ref) > 999
    var, norm = grad_stats(params)
    assert_stats(var, norm, ref)


# --- the float32 accumulation that accelerators use, forced on the CPU ------------------------------------
def _offset_params(gen):
    params = []
    for n, offset in ((5000, 1000.0), (3000, 1000.002), (700, 999.998)):
        p = torch.zeros(n, requires_grad=True)
        p.grad = offset + 1e-3 * torch.randn(n, generator=gen)
        params.append(p)
    return params


def _mixed_params(gen):
    low = torch.zeros(40, 30, dtype=torch.bfloat16, requires_grad=True)
    low.grad = (0.5 + torch.randn(40, 30, generator=gen)).to(torch.bfloat16)
    half = torch.zeros(50, dtype=torch.float16, requires_grad=True)
    half.grad = torch.randn(50, generator=gen).to(torch.float16)
    full = torch.zeros(7, 9, requires_grad=True)
    full.grad = -2.0 + torch.randn(7, 9, generator=gen)
    wide = torch.zeros(11, dtype=torch.float64, requires_grad=True)
    wide.grad = torch.randn(11, generator=gen, dtype=torch.float64)
    return [low, half, full, wide]


def test_production_accumulation_dtypes():
    from deba import signals as sig

    assert sig.ACCELERATOR_ACCUMULATION_ON_CPU is False
    assert sig._norm_dtype(torch.device("cpu"), torch.float32) == torch.float64
    assert sig._norm_dtype(torch.device("cuda", 0), torch.float32) == torch.float32
    assert sig._norm_dtype(torch.device("cuda", 0), torch.bfloat16) == torch.float32
    assert sig._norm_dtype(torch.device("cuda", 0), torch.float64) == torch.float64


@pytest.mark.parametrize("foreach_dtype", [True, False])  # torch's foreach_norm with dtype=, or the fallback
@pytest.mark.parametrize("case", ["offset", "mixed", "conv"])
def test_accelerator_float32_accumulation_forced_on_cpu_matches_float64(monkeypatch, foreach_dtype, case):
    """The branch every GPU run takes (sums of squares accumulated in float32, float64 gradients excepted),
    run on the CPU against the float64 reference; a spy proves the float32 branch ran."""
    from deba import signals as sig

    monkeypatch.setattr(sig, "ACCELERATOR_ACCUMULATION_ON_CPU", True)
    monkeypatch.setattr(sig, "_FOREACH_NORM_HAS_DTYPE", None if foreach_dtype else False)
    seen = []
    real_norms = sig._norms
    monkeypatch.setattr(sig, "_norms", lambda ts, acc: seen.append(({t.dtype for t in ts}, acc)) or real_norms(ts, acc))
    gen = torch.Generator().manual_seed(21)
    if case == "offset":
        params = _offset_params(gen)
    elif case == "mixed":
        params = _mixed_params(gen)
    else:
        torch.manual_seed(22)
        model = ConvNet()
        backward_once(model, torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,)))
        params = list(model.parameters())
    var, norm = grad_stats(params)
    assert seen and all(acc == (torch.float64 if dtypes == {torch.float64} else torch.float32) for dtypes, acc in seen)
    assert any(acc == torch.float32 for _, acc in seen)
    assert_stats(var, norm, flat_grads64(params))


def test_accelerator_float32_accumulation_through_epoch_avg_signals(monkeypatch):
    from deba import signals as sig

    monkeypatch.setattr(sig, "ACCELERATOR_ACCUMULATION_ON_CPU", True)
    torch.manual_seed(23)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    signals = GradientSignals(model.parameters(), mode="epoch-avg")
    variances, norms, losses = [], [], []
    for x, y in make_steps(4, seed=24):
        loss = backward_once(model, x, y)
        signals.observe_loss(loss)
        signals.observe_gradients()
        ref = flat_grads64(model.parameters())
        variances.append(np.var(ref))
        norms.append(np.linalg.norm(ref))
        losses.append(loss.item())
        sgd_step(model, 0.1)
    out = signals.end_epoch()
    np.testing.assert_allclose(out["grad_var"], np.mean(variances), rtol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], np.mean(norms), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], np.mean(losses), rtol=1e-6)


def test_constant_gradient_has_zero_variance():
    p = torch.zeros(3, 4, requires_grad=True)
    p.grad = torch.full((3, 4), 0.1)
    var, norm = grad_stats([p])
    assert var.item() == 0.0
    np.testing.assert_allclose(norm.item(), math.sqrt(12 * np.float32(0.1) ** 2), rtol=1e-6)


@pytest.mark.slow
def test_thirty_million_components_without_concatenation(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    params = []
    for shape in ((4096, 4096), (2048, 3000), (7_000_000,)):
        p = torch.zeros(shape, requires_grad=True)
        p.grad = 0.5 + torch.randn(shape, generator=gen)
        params.append(p)
    assert sum(p.numel() for p in params) > 29_000_000
    ref = flat_grads64(params)

    def forbidden(*args, **kwargs):
        raise AssertionError("the gradient must not be concatenated")

    for name in ("cat", "concat", "concatenate"):
        monkeypatch.setattr(torch, name, forbidden)
    var, norm = grad_stats(params)
    monkeypatch.undo()
    assert_stats(var, norm, ref)


def test_nonfinite_gradients_propagate():
    a = torch.zeros(4, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    a.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b.grad = torch.tensor([1.0, float("inf"), 0.0])
    var, norm = grad_stats([a, b])
    assert math.isinf(norm.item()) and not math.isfinite(var.item())
    b.grad = torch.tensor([1.0, float("nan"), 0.0])
    var, norm = grad_stats([a, b])
    assert math.isnan(var.item()) and math.isnan(norm.item())


def test_no_gradient_at_all_is_an_error():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(DebaError, match="no parameter has a gradient"):
        grad_stats([p])


class HostReads:
    """Counts every way a tensor value can reach Python."""

    NAMES = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(self_, *a, _original=original, **k):
                self.count += 1
                return _original(self_, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


def make_steps(n_steps, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 10, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n_steps)]


def test_end_epoch_is_the_single_host_read_and_loss_matches_numpy(monkeypatch):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3))
    signals = GradientSignals(model.parameters(), mode="epoch-avg", every=1)
    losses, variances, norms = [], [], []
    reads = HostReads(monkeypatch)
    for x, y in make_steps(5):
        loss = backward_once(model, x, y)
        signals.observe_loss(loss)
        signals.observe_gradients()
        losses.append(loss.detach().double().numpy().item())
        ref = flat_grads64(model.parameters())
        variances.append(np.var(ref))
        norms.append(np.linalg.norm(ref))
        sgd_step(model, 0.1)
    # the reference reads above use .numpy(): count only what the signals layer does
    reads.count = 0
    x, y = make_steps(1, seed=99)[0]
    loss = backward_once(model, x, y)
    signals.observe_loss(loss)
    signals.observe_gradients()
    grad_stats(model.parameters())
    assert reads.count == 0
    out = signals.end_epoch()
    assert reads.count == 1
    monkeypatch.undo()
    losses.append(loss.item())
    ref = flat_grads64(model.parameters())
    variances.append(np.var(ref))
    norms.append(np.linalg.norm(ref))
    assert out["steps"] == 6 and out["nonfinite_steps"] == 0
    np.testing.assert_allclose(out["loss"], np.mean(losses), rtol=1e-6)
    np.testing.assert_allclose(out["grad_var"], np.mean(variances), rtol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], np.mean(norms), rtol=1e-5)
    assert out["grad_observations"] == 6 and out["nonfinite_grad_observations"] == 0
    assert all(isinstance(out[k], float) for k in ("grad_var", "grad_norm", "loss"))


def test_nonfinite_losses_are_counted_and_left_out_of_the_mean():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([1.0, -1.0])
    signals = GradientSignals([p])
    values = [0.5, float("nan"), 1.25, float("inf"), -float("inf"), 2.0]
    for v in values:
        signals.observe_loss(torch.tensor(v))
    signals.observe_loss(torch.tensor([3.0, 5.0]))  # an unreduced loss enters as its mean, 4.0
    out = signals.end_epoch()
    assert out["steps"] == 7 and out["nonfinite_steps"] == 3
    np.testing.assert_allclose(out["loss"], np.mean([0.5, 1.25, 2.0, 4.0]), rtol=1e-12)
    for v in (float("nan"), float("inf")):
        signals.observe_loss(torch.tensor(v))
    out = signals.end_epoch()
    assert out["steps"] == 2 and out["nonfinite_steps"] == 2 and math.isnan(out["loss"])


def test_last_mode_reads_the_last_steps_gradients_and_ignores_observe_gradients():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    signals = GradientSignals(model.parameters(), mode="last")
    losses = []
    for i, (x, y) in enumerate(make_steps(4, seed=8)):
        loss = backward_once(model, x, y)
        signals.observe_loss(loss)
        assert not signals.should_observe(i)
        signals.observe_gradients(i)
        signals.observe_gradients()
        losses.append(loss.item())
    state = signals.state_dict()
    assert state["var_sum"] == 0.0 and state["norm_sum"] == 0.0 and state["observed"] == 0.0
    ref = flat_grads64(model.parameters())
    out = signals.end_epoch()
    assert "grad_observations" not in out
    np.testing.assert_allclose(out["grad_var"], np.var(ref), rtol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], np.linalg.norm(ref), rtol=1e-5)
    np.testing.assert_allclose(out["loss"], np.mean(losses), rtol=1e-6)
    model.zero_grad(set_to_none=True)
    with pytest.raises(DebaError, match="no gradients held"):
        signals.end_epoch()


def test_last_mode_propagates_nonfinite_gradients():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([1.0, float("nan"), 2.0])
    out = GradientSignals([p]).end_epoch()
    assert math.isnan(out["grad_var"]) and math.isnan(out["grad_norm"])


def test_epoch_avg_every_k_matches_numpy_and_skips_nonfinite_observations():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    signals = GradientSignals(model.parameters(), mode="epoch-avg", every=3)
    assert [signals.should_observe(i) for i in range(7)] == [True, False, False, True, False, False, True]
    variances, norms = [], []
    for i, (x, y) in enumerate(make_steps(8, seed=10)):
        loss = backward_once(model, x, y)
        signals.observe_loss(loss)
        if i == 6:  # a step a GradScaler would skip: its statistics must not enter the average
            model[0].weight.grad[0, 0] = float("inf")
        signals.observe_gradients(i)
        if signals.should_observe(i) and i != 6:
            ref = flat_grads64(model.parameters())
            variances.append(np.var(ref))
            norms.append(np.linalg.norm(ref))
        if i != 6:
            sgd_step(model, 0.1)
    out = signals.end_epoch()
    assert len(variances) == 2
    assert out["grad_observations"] == 3 and out["nonfinite_grad_observations"] == 1
    np.testing.assert_allclose(out["grad_var"], np.mean(variances), rtol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], np.mean(norms), rtol=1e-5)
    # an epoch with no finite observation has no statistics
    out = signals.end_epoch()
    assert math.isnan(out["grad_var"]) and math.isnan(out["grad_norm"]) and out["steps"] == 0


def test_reset_zeroes_in_place_and_state_dict_round_trips():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    steps = make_steps(6, seed=12)
    first = GradientSignals(model.parameters(), mode="epoch-avg", every=2)
    address = first._acc.data_ptr()
    for i, (x, y) in enumerate(steps[:3]):
        first.observe_loss(backward_once(model, x, y))
        first.observe_gradients(i)
    first.observe_loss(torch.tensor(float("nan")))
    state = first.state_dict()
    assert state["steps"] == 4 and state["nonfinite_steps"] == 1 and state["observed"] == 2
    assert all(isinstance(v, (int, float, str)) for v in state.values())

    second = GradientSignals(model.parameters(), mode="epoch-avg", every=2)
    second_address = second._acc.data_ptr()
    second.load_state_dict(state)
    assert second._acc.data_ptr() == second_address
    assert second.state_dict() == state
    for i, (x, y) in enumerate(steps[3:], start=3):
        loss = backward_once(model, x, y)
        for s in (first, second):
            s.observe_loss(loss)
            s.observe_gradients(i)
    out_first, out_second = first.end_epoch(), second.end_epoch()
    assert out_first == out_second and out_first["steps"] == 7

    first.observe_loss(torch.tensor(1.0))
    first.reset()
    assert first._acc.data_ptr() == address
    assert all(v == 0 for k, v in first.state_dict().items() if k not in ("mode", "every"))

    with pytest.raises(DebaError, match="mode"):
        GradientSignals(model.parameters(), mode="last").load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "mean"}, "signals mode"),
    ({"every": 0}, "every"),
    ({"every": 1.5}, "every"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(DebaError, match=message) as info:
        GradientSignals([torch.zeros(1, requires_grad=True)], **kwargs)
    assert "\n" not in str(info.value)


def _distributed_worker(rank, world_size, init_file, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        p = torch.zeros(2, requires_grad=True)
        p.grad = torch.tensor([1.0, 3.0])
        signals = GradientSignals([p])
        for v in ([1.0, 2.0] if rank == 0 else [4.0, float("nan"), 7.0]):
            signals.observe_loss(torch.tensor(v))
        results[rank] = signals.end_epoch()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_loss_sums_and_step_counts_are_reduced_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in (0, 1):
        out = results[rank]
        assert out["steps"] == 5 and out["nonfinite_steps"] == 1
        np.testing.assert_allclose(out["loss"], np.mean([1.0, 2.0, 4.0, 7.0]), rtol=1e-12)
        np.testing.assert_allclose(out["grad_var"], 1.0, rtol=1e-6)
        np.testing.assert_allclose(out["grad_norm"], math.sqrt(10.0), rtol=1e-6)
