"""``gns``: grow the batch toward a target proportional to the gradient noise scale (ours).

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training") show that the number of steps to a
given loss falls almost linearly with the batch size B while B is well below the noise scale
B_simple = tr(Sigma) / |G|^2, and stops falling above it; the examples needed grow as B passes it. The
noise scale rises as training proceeds, so the batch that pays rises too. This policy reads the period's
unbiased estimates of |G|^2 and tr(Sigma) (deba.signals with ``gns=True``), smooths numerator and
denominator separately with an exponential moving average (never the per-period ratio, whose average is
biased), and steers B toward ``target = target_factor * B_noise``:

- ``increase`` (B x grow_factor) when the grown batch is still at or below the target;
- ``rollback`` (B x rollback_factor) when even the rolled-back batch is above the target (a falling noise
  scale brings the batch down);
- ``hold`` in between: the dead band [rollback_factor * B, grow_factor * B) is the hysteresis that keeps
  the batch from flip-flopping on estimation noise; a cooldown after each change adds to it;
- ``hold`` when the period has no estimate, or a smoothed estimate that is not positive (reported in the
  reason, never clipped), and ``hold`` flagged ``non_finite`` on a non-finite period (nothing enters the
  averages).

At a bound a decision that cannot move the batch is recorded as ``hold`` with the bound named (unlike
DEBA's presets, whose spec keeps the decision's name there). Every record carries the period's
``b_simple``, the smoothed ``b_noise`` and the ``target``. Pure Python: replayable from a log.
How the default target factor and smoothing were chosen: docs/noise.md.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .base import BatchSizePolicy, DecisionRecord, EpochSignals, SignalTracker, is_finite_number
from .deba import scaled_size

DEFAULT_TARGET_FACTOR = 0.5
DEFAULT_SMOOTHING = 0.5
DEFAULT_COOLDOWN = 1


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class GnsPolicy(BatchSizePolicy):
    """Batch size steered toward ``target_factor`` x the smoothed gradient noise scale.

    ``smoothing`` is the weight of the newest period in the moving averages of |G|^2 and tr(Sigma)
    (1: no smoothing). ``cooldown`` periods are held after every change. ``window`` and ``conf_mode`` only
    shape the DEBA signals logged beside the decision (dnorm, dloss, conf), as the fixed policy does.
    """

    name = "gns"

    def __init__(self, start_batch: int = 64, b_min: int = 16, b_max: int = 2048, *,
                 target_factor: float = DEFAULT_TARGET_FACTOR, smoothing: float = DEFAULT_SMOOTHING,
                 cooldown: int = DEFAULT_COOLDOWN, grow_factor: float = 1.5, rollback_factor: float = 0.8,
                 window: int = 15, conf_mode: str = "ratio"):
        self._check(start_batch, b_min, b_max, target_factor, smoothing, cooldown, grow_factor, rollback_factor)
        super().__init__(start_batch, b_min, b_max)
        self.start_batch = int(start_batch)
        self.target_factor = float(target_factor)
        self.smoothing = float(smoothing)
        self.cooldown = int(cooldown)
        self.grow_factor = float(grow_factor)
        self.rollback_factor = float(rollback_factor)
        self.window = int(window)
        self.conf_mode = conf_mode
        self.tracker = SignalTracker(self.window, False, conf_mode)
        self.ema_g2: float | None = None
        self.ema_trace: float | None = None
        self.last_change: int | None = None

    @staticmethod
    def _check(start_batch, b_min, b_max, target_factor, smoothing, cooldown, grow_factor, rollback_factor):
        for name, v in (("start_batch", start_batch), ("b_min", b_min), ("b_max", b_max), ("cooldown", cooldown)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "cooldown" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'cooldown' else 1}, got {v!r}")
        if b_min > b_max:
            raise ValueError(f"b_min ({b_min}) must not exceed b_max ({b_max})")
        if not b_min <= start_batch <= b_max:
            raise ValueError(f"start_batch {start_batch} must lie in [b_min {b_min}, b_max {b_max}]")
        for name, v, ok, what in (("target_factor", target_factor, lambda x: x > 0, "> 0"),
                                  ("smoothing", smoothing, lambda x: 0 < x <= 1, "in (0, 1]"),
                                  ("grow_factor", grow_factor, lambda x: x > 1, "> 1"),
                                  ("rollback_factor", rollback_factor, lambda x: 0 < x < 1, "in (0, 1)")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"{name} must be a number {what}, got {v!r}")

    @property
    def b_noise(self) -> float | None:
        """The smoothed noise scale, or None while undefined (no estimate yet, or one not positive)."""
        if self.ema_g2 is None or self.ema_trace is None or self.ema_g2 <= 0 or self.ema_trace <= 0:
            return None
        return self.ema_trace / self.ema_g2

    def in_cooldown(self, period: int) -> bool:
        return self.last_change is not None and period <= self.last_change + self.cooldown

    def step(self, signals: EpochSignals | Mapping[str, Any]) -> DecisionRecord:
        if not isinstance(signals, EpochSignals):
            signals = EpochSignals.from_mapping(signals)
        self._check_epoch(signals.epoch)
        t = self.tracker.update(signals.grad_var, signals.grad_norm, signals.loss)
        g2, trace = signals.gns_g2, signals.gns_trace
        noise_bad = any(v is not None and not is_finite_number(v) for v in (g2, trace))
        non_finite = t.non_finite or noise_bad
        has_noise = is_finite_number(g2) and is_finite_number(trace)
        if has_noise and not non_finite:
            a = self.smoothing
            self.ema_g2 = float(g2) if self.ema_g2 is None else a * float(g2) + (1 - a) * self.ema_g2
            self.ema_trace = float(trace) if self.ema_trace is None else a * float(trace) + (1 - a) * self.ema_trace
        batch = self._batch_size
        decision, reason, nxt, target = self._decide(signals.epoch, batch, non_finite, has_noise)
        if non_finite:
            self.counts["non_finite"] += 1
        self.counts[decision] += 1
        if decision != "hold":
            self.last_change = signals.epoch
        self.last_epoch = signals.epoch
        self._batch_size = nxt
        period_b = trace / g2 if has_noise and g2 > 0 and trace > 0 else None
        extra = {"b_simple": period_b, "b_noise": self.b_noise, "target_batch": target}
        return DecisionRecord(signals.epoch, batch, signals.grad_var, signals.grad_norm, signals.loss,
                              t.dnorm, t.dloss, t.conf, decision, self.in_cooldown(signals.epoch) and decision == "hold",
                              non_finite, reason, nxt, extra)

    def _decide(self, period: int, batch: int, non_finite: bool, has_noise: bool) -> tuple[str, str, int, float | None]:
        """(decision, reason, next batch size, target) for the period that just ended."""
        if non_finite:
            return "hold", "non-finite signals: hold", batch, None
        b_noise = self.b_noise
        if b_noise is None:
            if self.ema_g2 is None:
                why = "no noise-scale estimate yet" if not has_noise else "no estimate"
            else:
                why = (f"smoothed |G|^2 {_fmt(self.ema_g2)}, tr(Sigma) {_fmt(self.ema_trace)}: "
                       "an estimate is not positive, B_noise undefined")
            return "hold", f"{why}: hold", batch, None
        target = self.target_factor * b_noise
        if self.in_cooldown(period):
            return "hold", f"cooldown until period {self.last_change + self.cooldown} (target {_fmt(target)})", batch, target
        b_max = self.effective_b_max
        grown = scaled_size(batch, self.grow_factor)
        shrunk = scaled_size(batch, self.rollback_factor)
        about = f"target {_fmt(self.target_factor)} x B_noise {_fmt(b_noise)} = {_fmt(target)}"
        if target >= grown:
            if batch >= b_max:
                return "hold", f"{about} >= {grown} but B is at B_max {b_max}", batch, target
            return "increase", f"{about} >= {grown} = {self.grow_factor:g} x B", min(b_max, grown), target
        if target < shrunk:
            if batch <= self.b_min:
                return "hold", f"{about} < {shrunk} but B is at B_min {self.b_min}", batch, target
            return "rollback", f"{about} < {shrunk} = {self.rollback_factor:g} x B", max(self.b_min, shrunk), target
        return "hold", f"{about} within [{shrunk}, {grown})", batch, target

    # --- state ---------------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"start_batch": self.start_batch, "b_min": self.b_min, "b_max": self.b_max,
                "target_factor": self.target_factor, "smoothing": self.smoothing, "cooldown": self.cooldown,
                "grow_factor": self.grow_factor, "rollback_factor": self.rollback_factor,
                "window": self.window, "conf_mode": self.conf_mode}

    def _apply_settings(self, s: Mapping[str, Any]) -> None:
        self.start_batch = int(s["start_batch"])
        self.b_min, self.b_max = int(s["b_min"]), int(s["b_max"])
        self.target_factor, self.smoothing = float(s["target_factor"]), float(s["smoothing"])
        self.cooldown = int(s["cooldown"])
        self.grow_factor, self.rollback_factor = float(s["grow_factor"]), float(s["rollback_factor"])
        self.window, self.conf_mode = int(s["window"]), s["conf_mode"]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(tracker=self.tracker.state_dict(), ema_g2=self.ema_g2, ema_trace=self.ema_trace,
                     last_change=self.last_change)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tracker = SignalTracker(self.window, False, self.conf_mode)
        self.tracker.load_state_dict(state["tracker"])
        self.ema_g2, self.ema_trace = state["ema_g2"], state["ema_trace"]
        self.last_change = state["last_change"]
