"""deba.verdict: modelled H100 time, t-intervals and the issue-12 goal against hand-worked values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from deba.report import RunLog
from deba.verdict import mean_ci, meets_goal, modelled_time, paired_table, render, step_seconds, t975


def test_step_seconds_at_table_points_and_between_them_log_log():
    assert step_seconds("resnet18", 64) == pytest.approx(8.8 * 64 / 50_000)
    assert step_seconds("resnet18", 2048) == pytest.approx(0.29 * 2048 / 50_000)
    # B = 96 lies at log-fraction log(1.5)/log(2) between 64 and 128
    a, b = 8.8 * 64 / 50_000, 3.1 * 128 / 50_000
    frac = math.log(1.5) / math.log(2)
    assert step_seconds("resnet18", 96) == pytest.approx(math.exp(math.log(a) + frac * (math.log(b) - math.log(a))))
    # below the table: the first segment extended
    assert step_seconds("resnet18", 32) == pytest.approx(math.exp(math.log(a) - (math.log(b) - math.log(a))))
    assert step_seconds("tiny_cnn", 64) is None


def test_modelled_time_sums_batch_steps():
    recs = [{"batch_steps": [[64, 10], [128, 5]]}, {"batch_size": 256, "steps": 2}]
    expect = 10 * 8.8 * 64 / 5e4 + 5 * 3.1 * 128 / 5e4 + 2 * 1.9 * 256 / 5e4
    assert modelled_time("resnet18", recs) == pytest.approx(expect)
    assert modelled_time("gpt", recs) is None


def test_mean_ci_matches_a_hand_computed_t_interval():
    v = [1.0, 2.0, 4.0]
    m, lo, hi = mean_ci(v)
    half = 4.303 * np.std(v, ddof=1) / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half))
    assert math.isnan(mean_ci([1.0])[1]) and t975(12) == 2.228 and t975(100) == 1.96


def _run(arm, seed, acc, batch_steps, arch="resnet18"):
    recs = [{"epoch": i + 1, "batch_size": b, "steps": n, "batch_steps": [[b, n]]} for i, (b, n) in enumerate(batch_steps)]
    summary = {"status": "complete", "final_test_acc": acc, "seed": seed, "arch": arch, "dataset": "cifar10"}
    return RunLog(run_id=f"{arm}/seed{seed}", source="x", config={"epochs": len(recs)}, summary=summary,
                  records=recs, arm=arm)


def test_paired_table_and_goal_by_hand():
    runs = []
    for seed, (base, fast, slow) in {1: (50.0, 50.5, 49.0), 2: (52.0, 51.9, 50.0), 3: (51.0, 51.2, 50.5)}.items():
        runs.append(_run("fixed-cosine", seed, base, [(64, 100), (64, 100)]))
        runs.append(_run("gns", seed, fast, [(64, 100), (128, 20)]))  # 120 / 200 = 0.6x the steps
        runs.append(_run("other", seed, slow, [(64, 50), (64, 50)]))
    t = paired_table(runs)
    g = t[(t.arm == "gns") & (t.reference == "fixed-cosine")].iloc[0]
    d = [0.5, -0.1, 0.2]
    m, lo, hi = mean_ci(d)
    assert (g.delta, g.delta_lo, g.delta_hi) == pytest.approx((m, lo, hi))
    assert g.steps_ratio == pytest.approx(0.6) and g.n_pairs == 3
    t_gns = 100 * 8.8 * 64 / 5e4 + 20 * 3.1 * 128 / 5e4
    assert g.modelled_time_ratio == pytest.approx(t_gns / (200 * 8.8 * 64 / 5e4))
    assert bool(g.goal) is True
    o = t[(t.arm == "other") & (t.reference == "fixed-cosine")].iloc[0]
    assert o.steps_ratio == pytest.approx(0.5) and bool(o.goal) is False  # -1.17 points: worse
    assert meets_goal({**g.to_dict(), "steps_ratio": 0.61}) is False
    assert meets_goal({**g.to_dict(), "n_pairs": 1}) is None
    text = "\n".join(render(t))
    assert "| cifar10 | resnet18 | gns | yes |" in text and "| cifar10 | resnet18 | other | no |" in text


def test_a_loss_metric_is_lower_better():
    row = {"n_pairs": 3, "delta": 0.009, "delta_lo": -0.1, "delta_hi": 0.2, "steps_ratio": 0.5,
           "metric": "final_val_loss"}
    assert meets_goal(row) is True
    assert meets_goal({**row, "delta": 0.011}) is False
