"""Property tests of the DEBA policy: random valid configurations and random signal sequences (non-finite
values included), checked against invariants and against a second, deliberately plain implementation of
spec section 1 written here (lists instead of deques, exact rational floors instead of float ones)."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from deba.logio import dumps
from deba.policy import DebaConfig, DebaPolicy, EpochSignals

BAD_VALUES = [math.nan, math.inf, -math.inf, None]
SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def configs(draw):
    b_min = draw(st.integers(1, 64))
    b_max = b_min + draw(st.integers(0, 4000))
    return DebaConfig(
        theta_stab=draw(st.floats(0.02, 1.5)),
        theta_conf=draw(st.floats(0.05, 2.0)),
        window=draw(st.integers(1, 20)),
        full_history=draw(st.booleans()),
        cooldown=draw(st.integers(0, 6)),
        # factors with two decimals at most, so that the exact rational floor of the reference is the rule
        grow_factor=draw(st.sampled_from([1.1, 1.15, 1.25, 1.5, 2.0, 3.0])),
        rollback_factor=draw(st.sampled_from([0.3, 0.5, 0.7, 0.75, 0.8, 0.9])),
        b_min=b_min,
        b_max=b_max,
        start_batch=draw(st.integers(b_min, b_max)),
        conf_mode=draw(st.sampled_from(["ratio", "bounded"])),
    )


@st.composite
def signal_sequences(draw, max_len=60):
    """Random walks in log space (small steps often, so that increases happen), with non-finite values."""
    n = draw(st.integers(1, max_len))
    step = st.one_of(st.just(0.0), st.floats(-0.15, 0.15), st.floats(-1.2, 1.2))
    gv, gn, loss = draw(st.floats(1e-8, 1e2)), draw(st.floats(1e-3, 1e2)), draw(st.floats(1e-3, 10.0))
    rows = []
    for _ in range(n):
        gv *= math.exp(draw(step))
        gn *= math.exp(draw(step))
        loss *= math.exp(draw(step))
        row = [gv, gn, loss]
        if draw(st.integers(0, 9)) == 0:  # about one epoch in ten carries a bad value
            row[draw(st.integers(0, 2))] = draw(st.sampled_from(BAD_VALUES))
        rows.append(tuple(row))
    return rows


def median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def reference(cfg: DebaConfig, rows, first_epoch: int, cap_at: int | None = None, cap: int | None = None):
    """Spec section 1, step by step. Returns (epoch, batch, decision, next, in_cooldown, non_finite, conf,
    dnorm, dloss) per epoch. ``cap`` (an OOM cap) applies from the epoch index ``cap_at`` on."""
    history: list[float] = []
    prev_norm = prev_loss = None
    last_adapt = None
    batch, b_max = cfg.start_batch, cfg.b_max
    out = []
    for i, (gv, gn, loss) in enumerate(rows):
        if cap_at is not None and i == cap_at:
            b_max = min(b_max, cap)
            batch = min(batch, b_max)
        t = first_epoch + i
        finite = all(v is not None and math.isfinite(v) for v in (gv, gn, loss))
        cooling = last_adapt is not None and t <= last_adapt + cfg.cooldown
        conf = dnorm = dloss = None
        decision = "hold"
        if finite:
            history.append(gv)
            window = history if cfg.full_history else history[-cfg.window :]
            if prev_norm is not None:
                med = median(window)
                conf = gv / (med + 1e-8) if cfg.conf_mode == "ratio" else gv / (gv + med + 1e-8)
                dnorm = abs(gn - prev_norm) / (abs(prev_norm) + 1e-8)
                dloss = abs(loss - prev_loss) / (abs(prev_loss) + 1e-8)
                if cooling:
                    decision = "hold"
                elif conf <= cfg.theta_conf and dnorm < cfg.theta_stab and dloss < cfg.theta_stab:
                    decision = "increase"
                elif conf > cfg.theta_conf or dnorm > 3 * cfg.theta_stab:
                    decision = "rollback"
            prev_norm, prev_loss = gn, loss
        if decision == "increase":
            nxt = min(b_max, math.floor(Fraction(str(cfg.grow_factor)) * batch))
        elif decision == "rollback":
            nxt = max(cfg.b_min, math.floor(Fraction(str(cfg.rollback_factor)) * batch))
        else:
            nxt = batch
        if decision != "hold":
            last_adapt = t
        out.append((t, batch, decision, nxt, cooling, not finite, conf, dnorm, dloss))
        batch = nxt
    return out


def run_policy(policy, rows, first_epoch, cap_at=None, cap=None):
    recs = []
    for i, row in enumerate(rows):
        if cap_at is not None and i == cap_at:
            policy.cap_batch_size(cap)
        recs.append(policy.step(EpochSignals(first_epoch + i, *row)))
    return recs


@SETTINGS
@given(cfg=configs(), rows=signal_sequences(), first_epoch=st.integers(-5, 100), cap_draw=st.data())
def test_policy_matches_reference_and_invariants(cfg, rows, first_epoch, cap_draw):
    cap_at = cap = None
    if cap_draw.draw(st.booleans()):  # sometimes an out-of-memory cap somewhere in the run
        cap_at = cap_draw.draw(st.integers(0, len(rows) - 1))
        cap = cap_draw.draw(st.integers(cfg.b_min, cfg.b_max))
    p = DebaPolicy(cfg)
    recs = run_policy(p, rows, first_epoch, cap_at, cap)
    ref = reference(cfg, rows, first_epoch, cap_at, cap)

    got = [
        (
            r.epoch,
            r.batch_size,
            r.decision,
            r.next_batch_size,
            r.in_cooldown,
            r.non_finite,
            r.conf,
            r.dnorm,
            r.dloss,
        )
        for r in recs
    ]
    assert got == ref

    for i, r in enumerate(recs):
        assert cfg.b_min <= r.batch_size <= cfg.b_max and cfg.b_min <= r.next_batch_size <= cfg.b_max
        if cap_at is not None and i >= cap_at:
            assert r.batch_size <= cap and r.next_batch_size <= cap
        if i + 1 < len(recs):
            if cap_at == i + 1:  # the cap cuts the size between the two epochs
                assert recs[i + 1].batch_size == min(r.next_batch_size, cap)
            else:
                assert recs[i + 1].batch_size == r.next_batch_size
        if r.in_cooldown or r.non_finite or i == 0:
            assert r.decision == "hold" and r.next_batch_size == r.batch_size
        if r.decision == "increase":
            assert r.next_batch_size >= r.batch_size
        elif r.decision == "rollback":
            assert r.next_batch_size <= r.batch_size
        else:
            assert r.next_batch_size == r.batch_size
        assert r.reason and "\n" not in r.reason
        if r.non_finite:
            assert (r.conf, r.dnorm, r.dloss) == (None, None, None)
    assert p.batch_size == recs[-1].next_batch_size
    for name in ("increase", "rollback", "hold"):
        assert p.counts[name] == sum(r.decision == name for r in recs)
    assert p.counts["non_finite"] == sum(r.non_finite for r in recs)
    # the cooldown as the spec words it: no adaptation within cooldown epochs of the last one
    adapt = [r.epoch for r in recs if r.decision != "hold"]
    assert all(b - a > cfg.cooldown for a, b in itertools.pairwise(adapt))


@SETTINGS
@given(cfg=configs(), other=configs(), rows=signal_sequences(), data=st.data())
def test_state_round_trip_mid_sequence(cfg, other, rows, data):
    split = data.draw(st.integers(0, len(rows)))
    a = DebaPolicy(cfg)
    run_policy(a, rows[:split], 1)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    b = DebaPolicy(other)  # built with different settings: the saved ones must win
    b.load_state_dict(state)
    assert b.config == cfg
    rest_a = run_policy(a, rows[split:], split + 1)
    rest_b = run_policy(b, rows[split:], split + 1)
    assert [dumps(r.to_dict()) for r in rest_b] == [dumps(r.to_dict()) for r in rest_a]
    assert b.state_dict() == a.state_dict()
