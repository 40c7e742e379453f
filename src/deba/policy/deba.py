"""The DEBA rule (paper section 3; readings fixed by spec section 1)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .base import (
    CONF_MODES,
    MAX_WINDOW,
    BatchSizePolicy,
    DecisionRecord,
    EpochSignals,
    SignalTracker,
    is_finite_number,
)


VAR_SCALINGS = ("none", "batch")


def _fmt(x: float) -> str:
    return f"{x:.3g}"


@dataclass(frozen=True)
class DebaConfig:
    """Every setting of the DEBA rule. Validated on construction; saved with the policy state."""

    theta_stab: float
    theta_conf: float
    window: int = 15
    full_history: bool = False
    cooldown: int = 10
    grow_factor: float = 1.5
    rollback_factor: float = 0.8
    b_min: int = 16
    b_max: int = 2048
    start_batch: int = 64
    conf_mode: str = "ratio"
    # "batch": the window and conf see grad_var x B / start_batch, not grad_var (ours, not the paper's).
    # The variance of a mini-batch gradient falls roughly as 1/B, so without this a change of batch size
    # moves the next conf in the direction that repeats the change (a rollback raises grad_var, hence conf,
    # hence the next rollback); scaled by B it compares gradient noise per sample instead.
    var_scaling: str = "none"

    def __post_init__(self) -> None:
        def number(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            return v

        def integer(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            return v

        for name in ("theta_stab", "theta_conf"):
            if number(name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if integer("window") < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.window > MAX_WINDOW:
            raise ValueError(f"window must be at most {MAX_WINDOW}, got {self.window}")
        if integer("cooldown") < 0:
            raise ValueError(f"cooldown must be >= 0, got {self.cooldown}")
        if number("grow_factor") <= 1:
            raise ValueError(f"grow_factor must be > 1, got {self.grow_factor}")
        if not 0 < number("rollback_factor") < 1:
            raise ValueError(f"rollback_factor must be in (0, 1), got {self.rollback_factor}")
        if integer("b_min") < 1:
            raise ValueError(f"b_min must be >= 1, got {self.b_min}")
        if integer("b_max") < self.b_min:
            raise ValueError(f"b_min ({self.b_min}) must not exceed b_max ({self.b_max})")
        if not self.b_min <= integer("start_batch") <= self.b_max:
            raise ValueError(f"start_batch ({self.start_batch}) must lie in [b_min, b_max] = [{self.b_min}, {self.b_max}]")
        if not isinstance(self.full_history, bool):
            raise ValueError(f"full_history must be true or false, got {self.full_history!r}")
        if self.conf_mode not in CONF_MODES:
            raise ValueError(f"conf_mode must be one of {', '.join(CONF_MODES)}, got {self.conf_mode!r}")
        if self.var_scaling not in VAR_SCALINGS:
            raise ValueError(f"var_scaling must be one of {', '.join(VAR_SCALINGS)}, got {self.var_scaling!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DebaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DEBA setting(s): {', '.join(unknown)}")
        return cls(**dict(d))

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_size(batch_size: int, factor: float) -> int:
    # The 1e-9 keeps floor() exact where factor * B is an integer that binary floating point
    # lands a hair below (0.7 * 30 for instance); it cannot move a true fraction across an integer.
    return int(math.floor(factor * batch_size + 1e-9))


class DebaPolicy(BatchSizePolicy):
    """DEBA: grow the batch when gradients are quiet and stable, roll it back when they are noisy.

    >>> p = DebaPolicy(DebaConfig(theta_stab=0.55, theta_conf=0.6, conf_mode="bounded"))
    >>> rec = p.step({"epoch": 1, "grad_var": 1e-6, "grad_norm": 2.0, "loss": 1.5})
    >>> rec.decision, p.batch_size
    ('hold', 64)
    """

    name = "deba"

    def __init__(self, config: DebaConfig, *, preset: str | None = None, arch: str | None = None):
        self.config = config
        self.preset = preset
        self.arch = arch
        super().__init__(config.start_batch, config.b_min, config.b_max)
        self.tracker = SignalTracker(config.window, config.full_history, config.conf_mode)
        self.last_adapt_epoch: int | None = None
        self.start_batch_given = config.start_batch != DebaConfig.__dataclass_fields__["start_batch"].default

    def set_start_batch(self, batch_size: int) -> None:
        super().set_start_batch(batch_size)
        self.config = replace(self.config, start_batch=batch_size)  # var_scaling's reference moves with it

    def in_cooldown(self, epoch: int) -> bool:
        return self.last_adapt_epoch is not None and epoch <= self.last_adapt_epoch + self.config.cooldown

    def step(self, signals: EpochSignals | Mapping[str, Any]) -> DecisionRecord:
        if not isinstance(signals, EpochSignals):
            signals = EpochSignals.from_mapping(signals)
        epoch = signals.epoch
        self._check_epoch(epoch)
        c = self.config
        batch = self._batch_size
        grad_var = signals.grad_var
        if c.var_scaling == "batch" and is_finite_number(grad_var):
            grad_var = float(grad_var) * batch / c.start_batch
        tracked = self.tracker.update(grad_var, signals.grad_norm, signals.loss)
        cooling = self.in_cooldown(epoch)

        if tracked.non_finite:
            decision, reason = "hold", "non-finite signal: epoch ignored"
            self.counts["non_finite"] += 1
        elif tracked.first:
            decision, reason = "hold", "first epoch: no previous norm or loss"
        else:
            decision, reason = self._rule(tracked.conf, tracked.dnorm, tracked.dloss)
            if cooling:
                decision, reason = "hold", f"cooldown until epoch {self.last_adapt_epoch + c.cooldown}"

        if decision == "increase":
            nxt = min(self.effective_b_max, scaled_size(batch, c.grow_factor))
        elif decision == "rollback":
            # a cap below b_min (out of memory at small sizes) wins over b_min: memory is the harder limit
            nxt = min(self.effective_b_max, max(c.b_min, scaled_size(batch, c.rollback_factor)))
        else:
            nxt = batch
        if decision != "hold":
            # an adaptation at a bound keeps its name and restarts the cooldown (spec section 1)
            self.last_adapt_epoch = epoch
        self.counts[decision] += 1
        self.last_epoch = epoch
        self._batch_size = nxt
        return DecisionRecord(
            epoch=epoch,
            batch_size=batch,
            grad_var=signals.grad_var,
            grad_norm=signals.grad_norm,
            loss=signals.loss,
            dnorm=tracked.dnorm,
            dloss=tracked.dloss,
            conf=tracked.conf,
            decision=decision,
            in_cooldown=cooling,
            non_finite=tracked.non_finite,
            reason=reason,
            next_batch_size=nxt,
        )

    def _rule(self, conf: float, dnorm: float, dloss: float) -> tuple[str, str]:
        ts, tc = self.config.theta_stab, self.config.theta_conf
        if conf <= tc and dnorm < ts and dloss < ts:
            return "increase", f"conf {_fmt(conf)} <= {_fmt(tc)}, dnorm {_fmt(dnorm)} < {_fmt(ts)}, dloss {_fmt(dloss)} < {_fmt(ts)}"
        if conf > tc:
            return "rollback", f"conf {_fmt(conf)} > {_fmt(tc)}"
        if dnorm > 3 * ts:
            return "rollback", f"dnorm {_fmt(dnorm)} > {_fmt(3 * ts)} (3 x theta_stab)"
        unstable = [f"{n} {_fmt(v)} >= {_fmt(ts)}" for n, v in (("dnorm", dnorm), ("dloss", dloss)) if v >= ts]
        return "hold", f"conf {_fmt(conf)} <= {_fmt(tc)} but " + ", ".join(unstable)

    # --- state -----------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"config": self.config.to_dict(), "preset": self.preset, "arch": self.arch}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["tracker"] = self.tracker.state_dict()
        state["last_adapt_epoch"] = self.last_adapt_epoch
        return state

    def _apply_settings(self, settings: Mapping[str, Any]) -> None:
        # the saved settings win over the ones this instance was built with
        self.config = DebaConfig.from_dict(settings["config"])
        self.preset = settings.get("preset")
        self.arch = settings.get("arch")
        self.b_min, self.b_max = self.config.b_min, self.config.b_max
        self.tracker = SignalTracker(self.config.window, self.config.full_history, self.config.conf_mode)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tracker.load_state_dict(state["tracker"])
        self.last_adapt_epoch = state["last_adapt_epoch"]
