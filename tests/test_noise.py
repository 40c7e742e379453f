"""The gradient noise scale (deba.signals, gns=True) against independent references: per-step values against
gradients recomputed by plain autograd in float64, the period estimates against ground truth known in closed
form (linear regression) or computed exactly from per-example gradients (torch.func), with the biased mean of
per-step ratios as a negative control; the training step's two-size split; the trainer's period records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from deba.errors import DebaError
from deba.signals import GradientSignals, combine_noise_scale, noise_scale_terms
from deba.training.config import TrainConfig
from deba.training.step import EagerStep
from deba.training.trainer import train


def half_mse(out, y):
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def make_step(model, signals, loss_fn=half_mse):
    # lr far too small to move the weights: the population quantities stay those of the starting point
    return EagerStep(model, signals, lr=1e-30, momentum=0.0, weight_decay=0.0, loss_fn=loss_fn)


def sq_norm_of_grad(model, loss) -> float:
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return float(sum((g.double() ** 2).sum() for g in grads))


def test_per_step_estimates_match_autograd_recomputation_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    signals = GradientSignals(list(model.parameters()), gns=True)
    step = make_step(model, signals)
    g2_ref, tr_ref = [], []
    for batch in (10, 11, 7, 2):  # odd sizes: the first micro-batch takes the larger half
        x, y = torch.randn(batch, 6, dtype=torch.float64), torch.randn(batch, dtype=torch.float64)
        b_small = (batch + 1) // 2
        small = sq_norm_of_grad(model, half_mse(model(x[:b_small]), y[:b_small]))
        big = sq_norm_of_grad(model, half_mse(model(x), y))
        g2_ref.append((batch * big - b_small * small) / (batch - b_small))
        tr_ref.append((small - big) / (1 / b_small - 1 / batch))
        step.gns_split_next = True
        step(x, y)
        assert step.gns_split_next is False  # consumed by the call
    out = signals.end_epoch()
    np.testing.assert_allclose(out["gns_g2"], np.mean(g2_ref), rtol=1e-9)
    np.testing.assert_allclose(out["gns_trace"], np.mean(tr_ref), rtol=1e-9)
    assert out["gns_samples"] == 4 and out["gns_nonfinite"] == 0
    assert (out["gns_b_small"], out["gns_b_big"]) == (1, 2)  # the last sample's sizes
    if np.mean(g2_ref) > 0 and np.mean(tr_ref) > 0:
        np.testing.assert_allclose(out["b_simple"], np.mean(tr_ref) / np.mean(g2_ref), rtol=1e-9)


def test_a_split_step_makes_the_same_update_as_an_unsplit_one():
    torch.manual_seed(1)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    models = [nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model, split in zip(models, (False, True)):
        signals = GradientSignals(list(model.parameters()), gns=True)
        step = EagerStep(model, signals, lr=0.1, momentum=0.9, weight_decay=1e-3, loss_fn=half_mse)
        for _ in range(3):
            step.gns_split_next = split
            step(x, y)
        out = signals.end_epoch()
        assert out["gns_samples"] == (3 if split else 0)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _linear_regression_run(steps: int, batch: int, dim: int, sigma2: float, seed: int):
    """Per-step (|G|^2, tr(Sigma)) estimates at a fixed weight for y = x.w* + noise, x ~ N(0, I).

    Closed form at weight w with d = w - w*, for the loss 0.5 (x.w - y)^2: G = d, Sigma = (|d|^2 + sigma2) I +
    d d^T, so |G|^2 = |d|^2 and tr(Sigma) = dim (|d|^2 + sigma2) + |d|^2."""
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(dim, generator=gen, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star + torch.randn(dim, generator=gen, dtype=torch.float64) / math.sqrt(dim))
    d2 = float(((model.weight.detach()[0] - w_star) ** 2).sum())
    truth = {"g2": d2, "trace": dim * (d2 + sigma2) + d2}
    signals = GradientSignals(list(model.parameters()), gns=True)
    step = make_step(model, signals)
    g2, trace = [], []
    for _ in range(steps):
        x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
        y = x @ w_star + math.sqrt(sigma2) * torch.randn(batch, generator=gen, dtype=torch.float64)
        step.gns_split_next = True
        step(x, y)
        out = signals.end_epoch()  # one-step periods: the per-step estimates, read back
        g2.append(out["gns_g2"])
        trace.append(out["gns_trace"])
    return np.array(g2), np.array(trace), truth


def ratio_of_means_and_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """mean(num) / mean(den) and its delta-method standard error."""
    r = num.mean() / den.mean()
    z = (num - r * den) / den.mean()
    return r, z.std(ddof=1) / math.sqrt(len(z))


def within(estimate: float, se: float, truth: float, k: float = 4.0) -> bool:
    return abs(estimate - truth) <= k * se


def test_linear_regression_estimates_agree_with_the_closed_form_and_the_mean_of_ratios_does_not():
    # a regime where every per-step |G|^2 estimate is positive, so the negative control is not merely heavy-tailed
    # (its own standard error stays small) but biased: the per-step numerator and denominator are correlated
    g2, trace, truth = _linear_regression_run(steps=1500, batch=128, dim=4, sigma2=0.0, seed=3)
    n = len(g2)
    # each component is unbiased: within 4 standard errors of the truth
    assert within(g2.mean(), g2.std(ddof=1) / math.sqrt(n), truth["g2"])
    assert within(trace.mean(), trace.std(ddof=1) / math.sqrt(n), truth["trace"])
    b_true = truth["trace"] / truth["g2"]
    b_est, se = ratio_of_means_and_se(trace, g2)
    assert within(b_est, se, b_true), (b_est, se, b_true)
    assert se < 0.25 * b_true  # the check has teeth: the interval is not wide open
    assert g2.min() > 0
    # negative control: the average of per-step ratios, judged by the same rule, is far off
    ratios = trace / g2
    assert not within(ratios.mean(), ratios.std(ddof=1) / math.sqrt(n), b_true), (ratios.mean(), b_true)


def split_step_estimates(model, loss_fn, x_pop, y_pop, seed: int, steps: int = 1500, batch: int = 32):
    """Per-step |G|^2 and tr(Sigma) estimates of split steps on batches drawn with replacement from a population
    (so the per-example gradients are i.i.d. draws from it); the lr is too small to move the weights."""
    signals = GradientSignals(list(model.parameters()), gns=True)
    step = make_step(model, signals, loss_fn=loss_fn)
    gen = torch.Generator().manual_seed(seed)
    g2, trace = [], []
    for _ in range(steps):
        idx = torch.randint(0, len(x_pop), (batch,), generator=gen)
        step.gns_split_next = True
        step(x_pop[idx], y_pop[idx])
        out = signals.end_epoch()
        g2.append(out["gns_g2"])
        trace.append(out["gns_trace"])
    return np.array(g2), np.array(trace)


def test_mlp_estimates_agree_with_exact_per_example_gradients():
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(4)
    n_pop, dim = 256, 5
    x_pop = torch.randn(n_pop, dim, dtype=torch.float64)
    y_pop = torch.sin(x_pop.sum(1)) + 0.3 * torch.randn(n_pop, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, x, y):
        return half_mse(functional_call(model, p, (x[None],)), y[None])

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x_pop, y_pop)
    flat = torch.cat([g.reshape(n_pop, -1) for g in per_example.values()], dim=1).numpy()
    g_true = flat.mean(0)
    trace_true = ((flat - g_true) ** 2).sum(1).mean()  # population covariance of the finite population
    b_true = trace_true / (g_true ** 2).sum()

    g2, trace = split_step_estimates(model, half_mse, x_pop, y_pop, seed=5)
    b_est, se = ratio_of_means_and_se(trace, g2)
    assert within(b_est, se, b_true), (b_est, se, b_true)
    assert se < 0.25 * b_true


def test_combine_reports_negative_and_missing_estimates_without_clipping():
    assert combine_noise_scale(0.0, 0.0, 0)["b_simple"] is None
    assert "no step" in combine_noise_scale(0.0, 0.0, 0)["gns_reason"]
    neg = combine_noise_scale(-2.0, 10.0, 4)
    assert neg["gns_g2"] == -0.5 and neg["gns_trace"] == 2.5 and neg["b_simple"] is None
    assert "<= 0" in neg["gns_reason"]
    ok = combine_noise_scale(2.0, 10.0, 4)
    assert ok["b_simple"] == pytest.approx(5.0) and ok["gns_reason"] is None
    with pytest.raises(DebaError, match="b_small < b_big"):
        noise_scale_terms(torch.tensor(1.0), torch.tensor(1.0), 4, 4)


def test_a_period_without_a_sample_is_null_with_a_reason_and_state_round_trips():
    model = nn.Linear(3, 1)
    signals = GradientSignals(list(model.parameters()), gns=True)
    half_mse(model(torch.randn(4, 3)), torch.randn(4)).backward()
    out = signals.end_epoch()
    assert out["b_simple"] is None and out["gns_samples"] == 0 and "no step" in out["gns_reason"]
    step = make_step(model, signals)
    for _ in range(2):
        step.gns_split_next = True
        step(torch.randn(6, 3), torch.randn(6))
    state = signals.state_dict()
    other = GradientSignals(list(model.parameters()), gns=True)
    other.load_state_dict(state)
    a, b = signals.end_epoch(), other.end_epoch()
    assert a == b and a["gns_samples"] == 2


def test_nonfinite_gradient_norm_is_counted_not_averaged():
    model = nn.Linear(2, 1)
    signals = GradientSignals(list(model.parameters()), gns=True)
    step = make_step(model, signals)
    step.gns_split_next = True
    step(torch.randn(4, 2), torch.randn(4))
    step.gns_split_next = True
    step(torch.tensor([[1.0, 2.0], [float("inf"), 1.0], [0.0, 1.0], [1.0, 1.0]]), torch.randn(4))
    out = signals.end_epoch()
    assert out["gns_samples"] == 1 and out["gns_nonfinite"] == 1 and math.isfinite(out["gns_g2"])


TINY = dict(arch="tiny_mlp", dataset="synthetic", device="cpu", quiet=True, start_batch=32, subset=1024,
            eval_every=10)


def _records(run):
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


def _strip(records):
    """What an interrupted and resumed run must repeat exactly: everything but times, events and the
    evaluation (the first leg also evaluates its own last epoch)."""
    drop = ("events", "test_acc", "test_loss")
    return [{k: v for k, v in r.items() if not k.endswith("time_s") and k not in drop} for r in records]


def test_trainer_logs_noise_fields_every_period_and_gns_every_counts_samples(tmp_path):
    train(TrainConfig(**TINY, epochs=2, policy="fixed", gns=True, gns_every=4, out=str(tmp_path / "r")))
    recs = _records(tmp_path / "r")
    for r in recs:
        assert r["gns_samples"] == math.ceil(r["steps"] / 4)  # steps 0, 4, 8, ... of each epoch
        assert (r["gns_b_small"], r["gns_b_big"]) == (16, 32)
        assert {"gns_g2", "gns_trace", "b_simple", "gns_reason"} <= set(r)
    # without gns the records carry none of it, and no step is split
    train(TrainConfig(**TINY, epochs=1, policy="fixed", out=str(tmp_path / "off")))
    assert "gns_g2" not in _records(tmp_path / "off")[0]


def test_gns_policy_run_resumes_to_identical_records(tmp_path):
    # constant lr: a cosine horizon is part of the run, so a 2-epoch leg would be another run (issue 14)
    cfg = dict(TINY, policy="gns", target_factor=4.0, cooldown=0, lr_scaling="sqrt", gns_every=1)
    train(TrainConfig(**cfg, epochs=4, out=str(tmp_path / "full")))
    train(TrainConfig(**cfg, epochs=2, out=str(tmp_path / "part")))
    train(TrainConfig(**cfg, epochs=4, out=str(tmp_path / "part")), resume=True)
    full, part = _records(tmp_path / "full"), _records(tmp_path / "part")
    assert _strip(part) == _strip(full)
    assert part[-1]["test_acc"] == full[-1]["test_acc"]
    assert all(r["b_simple"] is None or r["b_simple"] > 0 for r in full)
    assert any(r["decision"] != "hold" for r in full)  # the run adapted at least once


def test_seesaw_run_follows_the_cosine_halvings(tmp_path):
    train(TrainConfig(**dict(TINY, start_batch=16), epochs=8, policy="seesaw", lr_schedule="cosine",
                      lr_scaling="sqrt", b_max=64, out=str(tmp_path / "s")))
    recs = _records(tmp_path / "s")
    assert [r["batch_size"] for r in recs] == [16, 16, 16, 16, 32, 32, 64, 64]
    # lr = 0.01 x cosine(progress at the epoch's start) x sqrt(B / 16)
    n = 1024
    for r, seen in zip(recs, np.cumsum([0] + [x["samples"] for x in recs[:-1]])):
        expect = 0.01 * 0.5 * (1 + math.cos(math.pi * seen / (8 * n))) * math.sqrt(r["batch_size"] / 16)
        assert r["lr"] == pytest.approx(expect, rel=1e-9)


def test_config_refuses_bad_noise_options():
    with pytest.raises(DebaError, match="target_factor must be a number > 0"):
        TrainConfig(**TINY, policy="gns", target_factor=0.0)
    with pytest.raises(DebaError, match="noise_smoothing must be a number in"):
        TrainConfig(**TINY, policy="gns", noise_smoothing=1.5)
    with pytest.raises(DebaError, match="gns_every must be an integer >= 1"):
        TrainConfig(**TINY, gns_every=0)
    with pytest.raises(DebaError, match="seesaw follows training progress"):
        TrainConfig(**TINY, policy="seesaw", decision_interval=10)
    assert TrainConfig(**TINY, policy="gns").collects_noise and not TrainConfig(**TINY).collects_noise


def test_debacontroller_takes_two_gradient_sizes_from_an_own_loop():
    from deba.integrations import DebaController
    from deba.policy import GnsPolicy

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    ctl = DebaController(GnsPolicy(16, 4, 64, target_factor=1.0, smoothing=1.0, cooldown=0), model.parameters(),
                         gns=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g2_ref, tr_ref = [], []
    for _ in range(3):
        x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
        small = sq_norm_of_grad(model, half_mse(model(x[:6]), y[:6]))
        big = sq_norm_of_grad(model, half_mse(model(x), y))
        g2_ref.append((16 * big - 6 * small) / 10)
        tr_ref.append((small - big) / (1 / 6 - 1 / 16))
        opt.zero_grad()
        (half_mse(model(x[:6]), y[:6]) * 6 / 16).backward()
        ctl.observe_small_gradient(6, 16)
        loss = half_mse(model(x[6:]), y[6:]) * 10 / 16
        loss.backward()
        ctl.observe_big_gradient(6, 16)
        ctl.after_backward(loss * 16 / 10, samples=16)
        opt.step()
    rec = ctl.end_epoch()
    np.testing.assert_allclose(rec.extra["gns_g2"], np.mean(g2_ref), rtol=1e-9)
    np.testing.assert_allclose(rec.extra["gns_trace"], np.mean(tr_ref), rtol=1e-9)
    assert rec.extra["gns_samples"] == 3 and (rec.extra["gns_b_small"], rec.extra["gns_b_big"]) == (6, 16)
    off = DebaController(GnsPolicy(16, 4, 64), model.parameters())
    with pytest.raises(DebaError, match="noise scale is off"):
        off.observe_small_gradient(6, 16)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over the attention backward on the CPU
def test_gpt_estimates_agree_with_exact_per_sequence_gradients():
    """The GPT of deba.gpt in float64: the population G and Sigma from exact per-sequence gradients (torch.func),
    the estimate from split steps on batches drawn from that population; the mean of per-step ratios, the
    negative control, misses by the same rule."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from deba.gpt import GPT, GPTConfig

    torch.manual_seed(6)
    vocab, t, n_pop = 11, 8, 128
    model = GPT(GPTConfig(vocab_size=vocab, block_size=t, n_layer=1, n_head=2, n_embd=16)).double()
    x_pop = torch.randint(0, vocab, (n_pop, t))
    y_pop = torch.where(torch.rand(n_pop, t) < 0.3, torch.randint(0, vocab, (n_pop, t)), (3 * x_pop + 1) % vocab)

    def ce(logits, y):  # the batch loss: the mean over sequences of each sequence's mean over positions
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    params = {k: v.detach() for k, v in model.named_parameters()}  # the tied head is the embedding
    per_seq = vmap(grad(lambda p, x, y: ce(functional_call(model, p, (x[None],)), y[None])),
                   in_dims=(None, 0, 0))(params, x_pop, y_pop)
    flat = torch.cat([g.reshape(n_pop, -1) for g in per_seq.values()], dim=1).numpy()
    g_true = flat.mean(0)
    b_true = ((flat - g_true) ** 2).sum(1).mean() / (g_true ** 2).sum()

    g2, trace = split_step_estimates(model, ce, x_pop, y_pop, seed=7)
    b_est, se = ratio_of_means_and_se(trace, g2)
    assert within(b_est, se, b_true), (b_est, se, b_true)
    assert se < 0.25 * b_true
    ratios = trace / g2
    assert not within(ratios.mean(), ratios.std(ddof=1) / math.sqrt(len(ratios)), b_true), (ratios.mean(), b_true)
