"""The learning rate when the batch size changes: schedules driven by samples seen, and lr x (B / B0)^p.

torch's schedulers count calls to ``step()``. Stepped once per optimiser step, a schedule planned for
``epochs x len(loader)`` steps at the starting batch B0 then ends early after the batch grew (fewer steps)
and overruns after a rollback (``OneCycleLR`` raises "Tried to step N times"). :class:`LRCoupling` gives
such a scheduler its position in samples instead: before every optimiser step it sets
``scheduler.last_epoch = samples_seen // (B0 x accumulation)`` and the learning rate from the schedule's
closed form at that position, so the schedule keeps its shape whatever batch sizes the policy chooses.
The user (or Lightning) goes on calling ``scheduler.step()`` as before; its result is replaced at the next
step. Supported: :data:`SUPPORTED` (``SequentialLR`` of those too). ``ReduceLROnPlateau`` follows its metric
and is left alone, as is any scheduler stepped per epoch (epochs do not change length with B).

Coupling: with ``scaling`` sqrt or linear (p = 1/2 or 1) the learning rate is multiplied by (B / B0)^p,
B the current batch size: on top of a driven schedule's value, on the optimiser's initial learning rate
without a scheduler, and as a factor (B_new / B_old)^p at each change for a scheduler left alone.
"""
from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler as sched

from .errors import DebaError

LR_SCALINGS = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
SUPPORTED = (sched.LambdaLR, sched.StepLR, sched.MultiStepLR, sched.ConstantLR, sched.LinearLR, sched.ExponentialLR,
             sched.PolynomialLR, sched.CosineAnnealingLR, sched.OneCycleLR, sched.CyclicLR, sched.SequentialLR)
SUPPORTED_NAMES = ", ".join(c.__name__ for c in SUPPORTED)


def is_supported(scheduler: Any) -> bool:
    if type(scheduler) is sched.SequentialLR:
        return all(is_supported(s) for s in scheduler._schedulers)
    return type(scheduler) in SUPPORTED


def scheduler_lrs_at(scheduler: Any, position: int) -> list[float]:
    """Move ``scheduler`` to ``position`` (steps at the starting batch) and return its learning rates there.

    Closed forms only: the value does not depend on the path that led to ``position``.
    """
    if type(scheduler) is sched.SequentialLR:
        milestones = scheduler._milestones
        idx = bisect_right(milestones, position)
        child_position = position - milestones[idx - 1] if idx > 0 else position
        scheduler.last_epoch = position
        lrs = scheduler_lrs_at(scheduler._schedulers[idx], child_position)
        scheduler._last_lr = list(lrs)
        return lrs
    if type(scheduler) is sched.OneCycleLR:
        # the next step() must stay within total_steps, or OneCycleLR raises
        position = min(position, scheduler.total_steps - 1)
    scheduler.last_epoch = position
    with sched._enable_get_lr_call(scheduler):
        closed = getattr(scheduler, "_get_closed_form_lr", None)
        lrs = [float(v) for v in (closed() if closed is not None else scheduler.get_lr())]
    scheduler._last_lr = list(lrs)
    return lrs


def batch_scale(batch_size: int, reference_batch: int, power: float) -> float:
    """(B / B0)^p: the coupling factor, here and in ``deba train``'s schedule (deba.training.schedule)."""
    return (batch_size / reference_batch) ** power if power else 1.0


def check_scaling(scaling: str, where: str) -> float:
    if scaling not in LR_SCALINGS:
        raise DebaError(f"{where}: lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {scaling!r}")
    return LR_SCALINGS[scaling]


class LRCoupling:
    """Sets an optimiser's learning rate from samples seen and the batch size (see the module notes).

    ``optimizer``: the optimiser whose ``param_groups`` get the learning rate (taken from the schedulers
    when not given). ``schedulers``: per-optimiser-step schedulers to drive by samples (each must be of a
    :data:`SUPPORTED` type). ``left_alone``: schedulers deba does not drive (per-epoch ones,
    ``ReduceLROnPlateau``); coupling then acts as a factor at each batch-size change. ``scaling``: none,
    sqrt or linear. ``accumulation``: batches per optimiser step (the schedule's unit is B0 x accumulation
    samples).
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, schedulers: Iterable[Any] = (), *,
                 scaling: str = "none", left_alone: Sequence[Any] = (), accumulation: int = 1,
                 where: str = "LRCoupling"):
        self.power = check_scaling(scaling, where)
        self.scaling = scaling
        self.schedulers = list(schedulers)
        for s in self.schedulers:
            if not is_supported(s):
                raise DebaError(f"{where}: {type(s).__name__} cannot be driven by samples seen (supported: "
                                f"{SUPPORTED_NAMES}); step it yourself, per epoch, or leave scheduler= out")
        if optimizer is None and self.schedulers:
            optimizer = self.schedulers[0].optimizer
        if optimizer is None and self.power:
            raise DebaError(f"{where}: lr_scaling={scaling!r} needs the optimizer (optimizer=...)")
        self.optimizer = optimizer
        self.left_alone = list(left_alone)
        self.accumulation = max(1, int(accumulation))
        groups = optimizer.param_groups if optimizer is not None else []
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in groups]

    @property
    def active(self) -> bool:
        return bool(self.schedulers) or (self.power != 0 and self.optimizer is not None)

    def factor(self, batch_size: int, reference_batch: int) -> float:
        return batch_scale(batch_size, reference_batch, self.power)

    def apply(self, samples_seen: int, batch_size: int, reference_batch: int) -> None:
        """Before an optimiser step: schedules at ``samples_seen``, times (B / B0)^p."""
        if self.optimizer is None or (not self.schedulers and (self.left_alone or not self.power)):
            return
        lrs = list(self.base_lrs)
        position = samples_seen // (reference_batch * self.accumulation)
        for s in self.schedulers:  # several on one optimiser: the last one's values stand, as with step()
            lrs = scheduler_lrs_at(s, position)
        scale = self.factor(batch_size, reference_batch)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr * scale

    def on_change(self, old: int, new: int) -> None:
        """A batch-size change: schedulers left alone get the coupling as a factor (B_new / B_old)^p."""
        if not self.power or self.schedulers or not self.left_alone or self.optimizer is None:
            return
        ratio = (new / old) ** self.power
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * ratio
        for s in self.left_alone:
            if hasattr(s, "_last_lr"):
                s._last_lr = [g["lr"] for g in self.optimizer.param_groups]


def warn_not_driven(scheduler: Any, where: str) -> None:
    warnings.warn(f"{where}: {type(scheduler).__name__} is stepped per optimiser step but cannot be driven by "
                  f"samples seen (supported: {SUPPORTED_NAMES}); it counts steps, so its shape changes with the "
                  "batch size", stacklevel=3)


__all__ = ["LRCoupling", "LR_SCALINGS", "batch_scale", "SUPPORTED", "is_supported", "scheduler_lrs_at", "warn_not_driven"]
