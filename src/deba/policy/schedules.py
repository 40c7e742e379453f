"""Non-adaptive batch-size policies used as baselines: fixed, and step growth at set epochs."""
from __future__ import annotations

import abc
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
