"""Decisions every N steps or samples (decision_interval): period counts, straddling epochs, batch-size
changes mid-epoch, cooldown in periods, non-finite periods, and exact resume with a period left open."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from deba.data import make_synthetic
from deba.errors import DebaError
from deba.models import tiny_mlp
from deba.training.config import TrainConfig
from deba.training.trainer import NonFiniteStop, Trainer

N_TRAIN = 200
BASE = dict(arch="tiny_mlp", device="cpu", quiet=True, start_batch=16, deterministic=True, seed=2)
# thresholds under which DEBA grows at every decision after the first (bounded conf < 1)
GROWING = dict(BASE, policy="deba", theta_stab=50.0, theta_conf=0.999, cooldown=0)
FIXED = dict(BASE, policy="fixed")
TIMING = {"train_time_s", "eval_time_s", "schema_version"}


def _data():
    return make_synthetic(n_train=N_TRAIN, n_test=40, image_size=8, seed=5)


class Recorder(nn.Module):
    """tiny_mlp that records the batch size of every training forward; optionally poisons one of them."""

    def __init__(self, nan_at: set[int] = frozenset()):
        super().__init__()
        torch.manual_seed(0)
        self.net = tiny_mlp(10)
        self.nan_at = set(nan_at)  # 1-based training-forward indices whose input becomes NaN
        self.sizes: list[int] = []

    def forward(self, x):
        if self.training:
            self.sizes.append(int(x.shape[0]))
            if len(self.sizes) in self.nan_at:
                x = x * float("nan")
        return self.net(x)


def _run(out, cfg, *, resume=False, model=None):
    model = model or Recorder()
    trainer = Trainer(TrainConfig(**cfg, out=str(out)), model=model, dataset=_data())
    summary = trainer.fit(resume=resume)
    return trainer, model, summary


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strip(records):
    return [{**{k: v for k, v in r.items() if k not in TIMING},
             "events": [e for e in r.get("events", []) if not e.startswith("resumed from checkpoint")]}
            for r in records]


def _reference_sizes(n, start, interval, unit, epochs, next_sizes):
    """The batch sizes a harness that applies each decision at the very next step must train, given the
    policy's successive next_batch_size values: whole batches of each epoch's order (drop last), the
    period counter running on across epochs."""
    sizes, b, since, decisions = [], start, 0, iter(next_sizes)
    for _ in range(epochs):
        offset = 0
        while offset + b <= n:
            sizes.append(b)
            offset += b
            since += 1 if unit == "steps" else b
            if since >= interval:
                since, b = 0, next(decisions)
    return sizes


@pytest.mark.parametrize("unit, interval, periods_per_epoch", [
    # 200 // 16 = 12 steps of 16 per epoch, 36 in 3 epochs
    ("steps", 5, [[1, 2], [3, 4], [5, 6, 7]]),  # decisions at steps 5, 10, ..., 35; period 3 = steps 11-15
    ("samples", 40, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]),  # 3 steps (48 >= 40 samples) each
])
def test_number_of_decisions_and_periods_across_epochs(tmp_path, unit, interval, periods_per_epoch):
    cfg = dict(FIXED, epochs=3, decision_interval=interval, decision_interval_unit=unit)
    _, model, summary = _run(tmp_path / "r", cfg)
    decisions = _jsonl(tmp_path / "r" / "decisions.jsonl")
    epochs = _jsonl(tmp_path / "r" / "epochs.jsonl")
    n_decisions = sum(len(p) for p in periods_per_epoch)
    steps_per_period = interval if unit == "steps" else 3
    assert [d["epoch"] for d in decisions] == list(range(1, n_decisions + 1))  # consecutive period index
    assert [d["global_step"] for d in decisions] == [steps_per_period * k for k in range(1, n_decisions + 1)]
    assert {d["steps"] for d in decisions} == {steps_per_period}
    assert {d["samples"] for d in decisions} == {16 * steps_per_period}
    assert [d["epoch_of_period"] for d in decisions] == [e for e, ps in enumerate(periods_per_epoch, 1) for _ in ps]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["periods"] for e in epochs] == periods_per_epoch
    assert all(e["steps"] == 12 and e["samples"] == 192 and e["batch_steps"] == [[16, 12]] for e in epochs)
    assert all(e["decision"] == "periods" and e["grad_var"] is None for e in epochs)
    assert len(model.sizes) == 36 and summary["decisions"] == n_decisions and summary["steps"] == 36
    # an epoch's loss: the step-weighted mean over the periods that ended in it
    for e in epochs:
        mine = [d for d in decisions if d["epoch"] in e["periods"]]
        assert e["loss"] == pytest.approx(sum(d["loss"] * d["steps"] for d in mine) / sum(d["steps"] for d in mine))


@pytest.mark.parametrize("unit, interval", [("steps", 4), ("samples", 70)])
def test_batch_size_changes_take_effect_at_the_next_step(tmp_path, unit, interval):
    cfg = dict(GROWING, epochs=3, decision_interval=interval, decision_interval_unit=unit)
    _, model, _ = _run(tmp_path / "g", cfg)
    decisions = _jsonl(tmp_path / "g" / "decisions.jsonl")
    # hand-worked: hold at the first period, then x1.5 (floored) at every decision, up to B_max = N_TRAIN
    expected_next, b = [], 16
    for k in range(len(decisions)):
        if k > 0:
            b = min(N_TRAIN, math.floor(1.5 * b))
        expected_next.append(b)
    assert [d["next_batch_size"] for d in decisions] == expected_next
    assert [d["decision"] for d in decisions] == ["hold"] + ["increase"] * (len(decisions) - 1)
    ref = _reference_sizes(N_TRAIN, 16, interval, unit, 3, expected_next)
    assert model.sizes == ref
    assert len(set(ref)) >= 4  # the batch really changed, several times within epochs
    epochs = _jsonl(tmp_path / "g" / "epochs.jsonl")
    assert [s for e in epochs for b_, n in e["batch_steps"] for s in [b_] * n] == model.sizes
    assert all(sum(b_ * n for b_, n in e["batch_steps"]) == e["samples"] <= N_TRAIN for e in epochs)


def test_cooldown_counts_periods(tmp_path):
    cfg = dict(GROWING, cooldown=2, epochs=3, decision_interval=2)
    _run(tmp_path / "c", cfg)
    decisions = _jsonl(tmp_path / "c" / "decisions.jsonl")
    assert len(decisions) >= 8
    # period 1 holds (no previous signals), 2 grows, 3-4 cool down, 5 grows, 6-7 cool down, ...
    assert [d["decision"] for d in decisions] == [
        "hold" if p == 1 or (p - 2) % 3 else "increase" for p in range(1, len(decisions) + 1)]
    assert [d["in_cooldown"] for d in decisions] == [p > 2 and (p - 2) % 3 != 0 for p in range(1, len(decisions) + 1)]


@pytest.mark.parametrize("unit, interval, signals", [("steps", 5, "last"), ("samples", 100, "epoch-avg")])
def test_resume_with_an_open_period_equals_uninterrupted(tmp_path, unit, interval, signals):
    cfg = dict(GROWING, decision_interval=interval, decision_interval_unit=unit, signals_mode=signals,
               signals_every=2)
    _run(tmp_path / "full", dict(cfg, epochs=4))
    part = tmp_path / "part"
    _run(part, dict(cfg, epochs=2))
    ckpt = torch.load(part / "checkpoint.pt", weights_only=False)
    assert ckpt["run"]["since_decision_steps"] > 0 and ckpt["period_start"] is not None  # a period straddles
    assert ckpt["signals"]["steps"] == ckpt["run"]["since_decision_steps"]
    _run(part, dict(cfg, epochs=4), resume=True)
    for name in ("epochs.jsonl", "decisions.jsonl"):
        assert _strip(_jsonl(part / name)) == _strip(_jsonl(tmp_path / "full" / name)), name
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["final_test_acc"] == full["final_test_acc"] and resumed["decisions"] == full["decisions"]


def test_nonfinite_period_holds_is_logged_and_restored(tmp_path):
    # 12 steps of 16 per epoch, periods of 4 steps: forward 6 is in period 2
    cfg = dict(GROWING, epochs=2, decision_interval=4, max_nonfinite=3)
    trainer, model, summary = _run(tmp_path / "n", cfg, model=Recorder(nan_at={6}))
    decisions = _jsonl(tmp_path / "n" / "decisions.jsonl")
    assert [d["non_finite"] for d in decisions] == [False, True] + [False] * (len(decisions) - 2)
    bad = decisions[1]
    assert bad["decision"] == "hold" and bad["loss"] is None and bad["nonfinite_steps"] >= 1
    assert bad["next_batch_size"] == bad["batch_size"] == 16
    epochs = _jsonl(tmp_path / "n" / "epochs.jsonl")
    assert epochs[0]["non_finite"] is True and epochs[1]["non_finite"] is False
    assert any("period 2" in e and "restored to the start of the period (1/3)" in e for e in epochs[0]["events"])
    assert summary["non_finite_epochs"] == 1 and summary["status"] == "complete"
    # without the restore the weights would stay NaN and every later period would be non-finite
    assert all(d["loss"] is not None for d in decisions[2:])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_resume_restores_a_straddling_nonfinite_period_to_its_start(tmp_path):
    # 12 steps per epoch, periods of 5: period 3 is steps 11-15; step 14 (epoch 2) is poisoned
    cfg = dict(FIXED, decision_interval=5, max_nonfinite=3)
    full_trainer, _, _ = _run(tmp_path / "full", dict(cfg, epochs=2), model=Recorder(nan_at={14}))
    part = tmp_path / "part"
    _run(part, dict(cfg, epochs=1))
    resumed_trainer, _, _ = _run(part, dict(cfg, epochs=2), resume=True, model=Recorder(nan_at={2}))
    decisions = _jsonl(part / "decisions.jsonl")
    assert [d["non_finite"] for d in decisions] == [False, False, True, False]
    for name in ("epochs.jsonl", "decisions.jsonl"):
        assert _strip(_jsonl(part / name)) == _strip(_jsonl(tmp_path / "full" / name)), name
    for a, b in zip(resumed_trainer.model.parameters(), full_trainer.model.parameters()):
        assert torch.equal(a, b)  # restored to the state after step 10, saved with the epoch-1 checkpoint


def test_nonfinite_periods_stop_the_run_mid_epoch(tmp_path):
    cfg = dict(FIXED, epochs=3, decision_interval=4, max_nonfinite=1)
    with pytest.raises(NonFiniteStop, match="non-finite"):
        _run(tmp_path / "s", cfg, model=Recorder(nan_at={6}))
    epochs = _jsonl(tmp_path / "s" / "epochs.jsonl")
    assert len(epochs) == 1 and epochs[0]["steps"] == 8  # stopped at the end of period 2
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["status"] == "stopped: non-finite"
    state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_interval_unit_validated():
    with pytest.raises(DebaError, match="decision_interval_unit"):
        TrainConfig(decision_interval=5, decision_interval_unit="epochs")


# --- issue 11: deba train is a face over deba.period.PeriodLoop -------------------------------------------

@pytest.mark.parametrize("interval", [None, 3])
def test_every_period_of_deba_train_is_closed_and_decided_in_the_period_loop(tmp_path, monkeypatch, interval):
    from deba.period import PeriodLoop

    closed = []
    close = PeriodLoop.close

    def spy(self, *args, **kwargs):
        record = close(self, *args, **kwargs)
        closed.append(record.to_dict())
        return record

    monkeypatch.setattr(PeriodLoop, "close", spy)
    cfg = dict(GROWING, epochs=3, **({"decision_interval": interval} if interval else {}))
    trainer, model, summary = _run(tmp_path / "r", cfg)
    logged = _jsonl(tmp_path / "r" / ("decisions.jsonl" if interval else "epochs.jsonl"))
    key = ("epoch", "decision", "batch_size", "next_batch_size", "grad_var", "loss")
    assert [tuple(r[k] for k in key) for r in closed] == [tuple(r[k] for k in key) for r in logged]
    assert any(r["decision"] == "increase" for r in logged)  # the decisions applied were the core's
    assert len(closed) == (len(logged) if interval else 3)
    # the core counted every trained sample, and the batch sizes the model saw follow its decisions
    assert trainer.period.samples_seen == summary["samples_seen"] == sum(model.sizes)
