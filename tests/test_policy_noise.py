"""The gns and seesaw policies: hand-worked decision sequences, bounds, bad signals, state round trips."""
from __future__ import annotations

import math

import pytest

from deba.policy import GnsPolicy, SeesawPolicy, cosine_halvings


def sig(epoch, g2, trace, **kw):
    return {"epoch": epoch, "grad_var": 1e-4, "grad_norm": 1.0, "loss": 1.0, "gns_g2": g2, "gns_trace": trace, **kw}


def run(policy, noise):
    return [policy.step(sig(e, g2, tr)) for e, (g2, tr) in enumerate(noise, 1)]


def test_hand_worked_sequence_with_smoothing_hysteresis_and_cooldown():
    # factor 0.5, smoothing 0.5, cooldown 1, grow 1.5, rollback 0.8, start 64
    p = GnsPolicy(64, 16, 512, target_factor=0.5, smoothing=0.5, cooldown=1)
    recs = run(p, [(1.0, 300.0), (1.0, 300.0), (1.0, 300.0), (1.0, 100.0), (1.0, 100.0), (1.0, 20.0)])
    # 1: ema B_noise 300 -> target 150 >= 96: increase to 96
    # 2: cooldown (period 2 <= 1 + 1)
    # 3: ema 300, target 150 < 144? no: 150 >= floor(1.5 * 96) = 144 -> increase to 144
    # 4: cooldown; ema trace 0.5*100 + 0.5*300 = 200, target 100
    # 5: ema trace 150, target 75 < floor(0.8 * 144) = 115 -> rollback to 115
    # 6: cooldown; ema trace 0.5*20 + 0.5*150 = 85
    assert [r.decision for r in recs] == ["increase", "hold", "increase", "hold", "rollback", "hold"]
    assert [r.next_batch_size for r in recs] == [96, 96, 144, 144, 115, 115]
    assert [r.in_cooldown for r in recs] == [False, True, False, True, False, True]
    assert recs[3].extra["b_noise"] == pytest.approx(200.0) and recs[3].extra["target_batch"] == pytest.approx(100.0)
    assert recs[5].extra["b_noise"] == pytest.approx(85.0) and recs[5].extra["b_simple"] == pytest.approx(20.0)
    assert "target 0.5 x B_noise 150 = 75 < 115 = 0.8 x B" in recs[4].reason


def test_dead_band_holds_and_a_falling_noise_scale_rolls_back():
    p = GnsPolicy(100, 16, 512, target_factor=1.0, smoothing=1.0, cooldown=0)
    recs = run(p, [(1.0, 100.0), (1.0, 149.0), (1.0, 81.0), (1.0, 79.0), (1.0, 40.0), (1.0, 10.0)])
    # [80, 150) holds at B = 100; 79 < 80 rolls back to 80; 40 < 64 to 64; 10 < 51 to 51
    assert [r.decision for r in recs] == ["hold", "hold", "hold", "rollback", "rollback", "rollback"]
    assert [r.next_batch_size for r in recs] == [100, 100, 100, 80, 64, 51]
    assert "within [80, 150)" in recs[0].reason


def test_bounds_hold_with_the_bound_named():
    p = GnsPolicy(64, 64, 96, target_factor=1.0, smoothing=1.0, cooldown=0)
    recs = run(p, [(1.0, 1000.0), (1.0, 1000.0), (1.0, 1.0), (1.0, 1.0)])
    assert [r.next_batch_size for r in recs] == [96, 96, 76, 64]
    assert recs[1].decision == "hold" and "B_max 96" in recs[1].reason
    p = GnsPolicy(64, 64, 96, target_factor=1.0, smoothing=1.0, cooldown=0)
    rec = p.step(sig(1, 1.0, 1.0))
    assert rec.decision == "hold" and "B_min 64" in rec.reason
    p.cap_batch_size(70)  # an out-of-memory cap lowers the bound
    assert p.step(sig(2, 1.0, 1e6)).next_batch_size == 70 and p.effective_b_max == 70  # grows to the cap


def test_missing_negative_and_nonfinite_signals_hold_and_say_why():
    p = GnsPolicy(64, 16, 512, smoothing=1.0, cooldown=0)
    r1 = p.step(sig(1, None, None))
    assert r1.decision == "hold" and "no noise-scale estimate yet" in r1.reason and not r1.non_finite
    r2 = p.step(sig(2, -0.5, 10.0))  # possible with few samples: reported, not clipped
    assert r2.decision == "hold" and "not positive" in r2.reason and p.ema_g2 == -0.5
    r3 = p.step(sig(3, float("nan"), 10.0))
    assert r3.decision == "hold" and r3.non_finite and p.ema_g2 == -0.5  # nothing entered the averages
    r4 = p.step(sig(4, 1.0, 1000.0, loss=float("inf")))
    assert r4.non_finite and r4.decision == "hold"
    assert p.counts == {"increase": 0, "rollback": 0, "hold": 4, "non_finite": 2}
    r5 = p.step(sig(5, 1.0, 1000.0))
    assert r5.decision == "increase"


def test_state_round_trip_into_a_policy_with_other_settings_continues_identically():
    noise = [(1.0, 300.0), (2.0, 100.0), (1.0, 500.0), (0.5, 50.0), (1.0, 400.0), (1.0, 60.0), (1.0, 900.0)]
    ref = GnsPolicy(64, 16, 512, target_factor=0.5, smoothing=0.3, cooldown=1)
    ref_recs = run(ref, noise)
    a = GnsPolicy(64, 16, 512, target_factor=0.5, smoothing=0.3, cooldown=1)
    run(a, noise[:3])
    b = GnsPolicy(32, 8, 4096, target_factor=2.0, smoothing=1.0, cooldown=5)  # saved settings win
    b.load_state_dict(a.state_dict())
    rest = [b.step(sig(e, g2, tr)) for e, (g2, tr) in enumerate(noise[3:], 4)]
    assert [r.to_dict() for r in rest] == [r.to_dict() for r in ref_recs[3:]]
    assert b.settings() == ref.settings()


@pytest.mark.parametrize("kwargs, message", [
    ({"target_factor": 0}, "target_factor must be a number > 0"),
    ({"smoothing": 0}, "smoothing must be a number in"),
    ({"grow_factor": 1.0}, "grow_factor must be a number > 1"),
    ({"rollback_factor": 1.0}, "rollback_factor must be a number in"),
    ({"cooldown": -1}, "cooldown must be an integer >= 0"),
    ({"b_min": 600}, "b_min"),
    ({"start_batch": 8}, "start_batch 8 must lie in"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    args = {"start_batch": 64, "b_min": 16, "b_max": 512, **kwargs}
    with pytest.raises(ValueError, match=message):
        GnsPolicy(args.pop("start_batch"), args.pop("b_min"), args.pop("b_max"), **args)


def test_cosine_halvings_by_hand():
    # f(t) = 0.5 (1 + cos(pi t)): 1/2 at t = 0.5, 1/4 at t = 2/3, 1/8 at t = 0.7699
    assert [cosine_halvings(t) for t in (0.0, 0.49, 0.5, 0.66, 0.67, 0.76, 0.77)] == [0, 0, 1, 1, 2, 2, 3]
    assert cosine_halvings(1.0) > 40


def test_seesaw_trajectory_over_eight_periods():
    p = SeesawPolicy(8, start_batch=64, b_min=16, b_max=512)
    recs = [p.step({"epoch": e, "grad_var": 1.0, "grad_norm": 1.0, "loss": 1.0}) for e in range(1, 9)]
    # progress e/8: halvings 0, 0, 0, 1 (t=0.5), 1, 2 (t=0.75), 4 (t=0.875, capped at 512), all
    assert [r.next_batch_size for r in recs] == [64, 64, 64, 128, 128, 256, 512, 512]
    assert [r.decision for r in recs] == ["hold"] * 3 + ["increase", "hold", "increase", "increase", "hold"]
    q = SeesawPolicy(8, start_batch=64, b_min=16, b_max=512)
    q.load_state_dict(p.state_dict())
    assert q.batch_size == 512 and q.settings() == p.settings()
    # the lr a harness gives it (cosine x sqrt(B / B0)) falls by 1/sqrt(2) where the cosine halves
    f = 0.5 * (1 + math.cos(math.pi * 0.5))
    assert f * math.sqrt(128 / 64) == pytest.approx(1 / math.sqrt(2))
