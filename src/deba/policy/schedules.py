"""Non-adaptive batch-size policies used as baselines: fixed, step growth at set epochs, and Seesaw."""
from __future__ import annotations

import abc
import math
from typing import Any, Mapping, Sequence

from .base import BatchSizePolicy, DecisionRecord, EpochSignals, SignalTracker


class _ObservingPolicy(BatchSizePolicy):
    """A policy that never looks at the signals to decide, but still logs DEBA's view of them
    (dnorm, dloss, conf), so a fixed-batch run can be profiled and replayed."""

    def __init__(self, start_batch: int, b_min: int, b_max: int, window: int = 15, conf_mode: str = "ratio"):
        if start_batch < 1:
            raise ValueError(f"start_batch must be >= 1, got {start_batch}")
        if b_min > b_max:
            raise ValueError(f"b_min ({b_min}) must not exceed b_max ({b_max})")
        super().__init__(start_batch, b_min, b_max)
        self.window = window
        self.conf_mode = conf_mode
        self.tracker = SignalTracker(window, False, conf_mode)

    @abc.abstractmethod
    def _next(self, epoch: int) -> tuple[str, str, int]:
        """(decision, reason, next batch size) for the period that just ended."""

    def step(self, signals: EpochSignals | Mapping[str, Any]) -> DecisionRecord:
        if not isinstance(signals, EpochSignals):
            signals = EpochSignals.from_mapping(signals)
        self._check_epoch(signals.epoch)
        t = self.tracker.update(signals.grad_var, signals.grad_norm, signals.loss)
        if t.non_finite:
            self.counts["non_finite"] += 1
        batch = self._batch_size
        decision, reason, nxt = self._next(signals.epoch)
        nxt = max(self.b_min, min(self.effective_b_max, nxt))
        self.counts[decision] += 1
        self.last_epoch = signals.epoch
        self._batch_size = nxt
        return DecisionRecord(signals.epoch, batch, signals.grad_var, signals.grad_norm, signals.loss,
                              t.dnorm, t.dloss, t.conf, decision, False, t.non_finite, reason, nxt)

    def state_dict(self) -> dict:
        s = super().state_dict()
        s["tracker"] = self.tracker.state_dict()
        return s

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tracker = SignalTracker(self.window, False, self.conf_mode)
        self.tracker.load_state_dict(state["tracker"])


class FixedPolicy(_ObservingPolicy):
    """The paper's baseline: one batch size throughout."""

    name = "fixed"

    def __init__(self, start_batch: int | None = None, window: int = 15, conf_mode: str = "ratio"):
        given = start_batch is not None
        start_batch = 64 if start_batch is None else start_batch
        super().__init__(start_batch, start_batch, start_batch, window, conf_mode)
        self.start_batch_given = given

    def set_start_batch(self, batch_size: int) -> None:
        if self.last_epoch is not None:
            raise ValueError("the starting batch size can change only before the first step")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"start_batch must be a positive integer, got {batch_size!r}")
        self.b_min = self.b_max = self._batch_size = batch_size  # fixed: the one size is the start

    def _next(self, epoch):
        return "hold", "fixed batch size", self._batch_size

    def settings(self) -> dict:
        return {"start_batch": self.b_min, "window": self.window, "conf_mode": self.conf_mode}

    def _apply_settings(self, s):
        self.b_min = self.b_max = int(s["start_batch"])
        self.window, self.conf_mode = int(s["window"]), s["conf_mode"]


class StepGrowPolicy(_ObservingPolicy):
    """Smith et al. 2018, "Don't decay the learning rate, increase the batch size": multiply the batch
    by ``grow_factor`` after each epoch in ``milestones`` (where a step schedule would decay the LR)."""

    name = "step-grow"

    def __init__(self, milestones: Sequence[int], grow_factor: float = 2.0, start_batch: int | None = None,
                 b_min: int = 16, b_max: int = 2048, window: int = 15, conf_mode: str = "ratio"):
        given = start_batch is not None
        start_batch = 64 if start_batch is None else start_batch
        if grow_factor <= 1:
            raise ValueError(f"grow_factor must be > 1, got {grow_factor}")
        ms = sorted(int(m) for m in milestones)
        if not ms or ms[0] < 1:
            raise ValueError(f"step-grow needs milestones >= 1, got {list(milestones)!r}")
        super().__init__(start_batch, b_min, b_max, window, conf_mode)
        self.milestones = ms
        self.grow_factor = float(grow_factor)
        self.start_batch_given = given

    def _next(self, epoch):
        if epoch in self.milestones:
            return "increase", f"milestone epoch {epoch}", int(self._batch_size * self.grow_factor + 1e-9)
        return "hold", "between milestones", self._batch_size

    def settings(self) -> dict:
        return {"milestones": self.milestones, "grow_factor": self.grow_factor, "b_min": self.b_min,
                "b_max": self.b_max, "window": self.window, "conf_mode": self.conf_mode}

    def _apply_settings(self, s):
        self.milestones, self.grow_factor = list(s["milestones"]), float(s["grow_factor"])
        self.b_min, self.b_max = int(s["b_min"]), int(s["b_max"])
        self.window, self.conf_mode = int(s["window"]), s["conf_mode"]


def cosine_halvings(progress: float) -> int:
    """How many times a cosine decay 0.5 * (1 + cos(pi * t)) has halved by progress ``t`` in [0, 1]:
    floor(log2(1 / f(t))), with the last instant (f = 0) counted as one more than any before it."""
    t = min(1.0, max(0.0, float(progress)))
    f = 0.5 * (1.0 + math.cos(math.pi * t))
    if f <= 0.0:
        return 1 << 20
    return max(0, int(math.floor(math.log2(1.0 / f) + 1e-12)))


class SeesawPolicy(_ObservingPolicy):
    """Seesaw (arXiv 2510.14717) taken over a cosine schedule: wherever the cosine decay of the learning
    rate passes another halving, the batch doubles instead, and the learning rate falls by 1/sqrt(2) rather
    than 1/2.

    The policy decides the batch: after period ``p`` of ``total_periods`` the batch is
    start_batch x 2^k, k the number of halvings the cosine has made by progress p / total_periods (capped
    at B_max). The learning rate is the harness's: run it with ``lr_schedule: cosine`` and
    ``lr_scaling: sqrt``; lr = base x f(t) x sqrt(B / B0) is then exactly the cosine with every halving that
    became a doubling of the batch softened to 1/sqrt(2), and past B_max the plain cosine goes on.
    """

    name = "seesaw"

    def __init__(self, total_periods: int, start_batch: int = 64, b_min: int = 16, b_max: int = 2048,
                 window: int = 15, conf_mode: str = "ratio"):
        if isinstance(total_periods, bool) or not isinstance(total_periods, int) or total_periods < 1:
            raise ValueError(f"seesaw needs total_periods >= 1, got {total_periods!r}")
        super().__init__(start_batch, b_min, b_max, window, conf_mode)
        self.total_periods = total_periods
        self.start_batch = int(start_batch)

    def target(self, period: int) -> int:
        """The batch for the period after ``period`` (no cap applied)."""
        k = cosine_halvings(period / self.total_periods)
        return self.start_batch << min(k, 40)

    def _next(self, epoch):
        nxt = min(self.target(epoch), self.effective_b_max)
        k = cosine_halvings(epoch / self.total_periods)
        if nxt > self._batch_size:
            return "increase", f"cosine halved {k} time(s) by period {epoch}/{self.total_periods}", nxt
        return "hold", f"cosine halvings {k} at period {epoch}/{self.total_periods}", self._batch_size

    def settings(self) -> dict:
        return {"total_periods": self.total_periods, "start_batch": self.start_batch, "b_min": self.b_min,
                "b_max": self.b_max, "window": self.window, "conf_mode": self.conf_mode}

    def _apply_settings(self, s):
        self.total_periods, self.start_batch = int(s["total_periods"]), int(s["start_batch"])
        self.b_min, self.b_max = int(s["b_min"]), int(s["b_max"])
        self.window, self.conf_mode = int(s["window"]), s["conf_mode"]
