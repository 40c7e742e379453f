"""What every batch-size policy shares: the per-period signals it consumes, the record it returns,
and the signal tracker that turns raw statistics into DEBA's relative changes and confidence.

Pure Python: nothing here imports torch, so the policy can be replayed on a laptop from a log.

A *period* is the unit a policy decides in. It is an epoch in the paper (and the field is called
``epoch`` throughout, as in the spec), but the harness may use a fixed number of steps or samples
instead (``decision_interval``); the window and the cooldown are then counted in those periods.
"""
from __future__ import annotations

import abc
import math
import numbers
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

DECISIONS = ("increase", "rollback", "hold")
EPS = 1e-8


@dataclass(frozen=True)
class EpochSignals:
    """Statistics of one training period, as the signals layer reports them."""

    epoch: int
    grad_var: float | None
    grad_norm: float | None
    loss: float | None
    # gradient noise scale of the period (deba.signals, gns=True): means of the per-step unbiased estimates
    # of |G|^2 and tr(Sigma); None where the period had no two-size sample
    gns_g2: float | None = None
    gns_trace: float | None = None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "EpochSignals":
        epoch = m["epoch"]
        if isinstance(epoch, float) and epoch.is_integer():
            epoch = int(epoch)
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
            raise ValueError(f"epoch must be an integer, got {epoch!r}")
        return cls(epoch=int(epoch), grad_var=m.get("grad_var"), grad_norm=m.get("grad_norm"), loss=m.get("loss"),
                   gns_g2=m.get("gns_g2"), gns_trace=m.get("gns_trace"))


@dataclass
class DecisionRecord:
    """One decision: the signals it was made on, what was decided, why, and the next batch size."""

    epoch: int
    batch_size: int
    grad_var: float | None
    grad_norm: float | None
    loss: float | None
    dnorm: float | None
    dloss: float | None
    conf: float | None
    decision: str
    in_cooldown: bool
    non_finite: bool
    reason: str
    next_batch_size: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DecisionRecord":
        """The inverse of :meth:`to_dict`: keys that are not fields go back into ``extra``."""
        names = [f.name for f in fields(cls) if f.name != "extra"]
        return cls(**{k: d[k] for k in names}, extra={k: v for k, v in d.items() if k not in names})


def is_finite_number(x: Any) -> bool:
    # numbers.Real, not (int, float): a finite NumPy float32 (not a float subclass) is a finite signal
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def relative_change(current: float, previous: float, eps: float = EPS) -> float:
    """|x_t - x_{t-1}| / (|x_{t-1}| + eps), eqs. 2 and 3 of the paper."""
    return abs(current - previous) / (abs(previous) + eps)


def confidence(grad_var: float, median: float, mode: str, eps: float = EPS) -> float:
    """Eq. 4 (``ratio``), or the bounded reading of spec section 1 (``bounded``)."""
    if mode == "ratio":
        return grad_var / (median + eps)
    if mode == "bounded":
        return grad_var / (grad_var + median + eps)
    raise ValueError(f"conf mode must be 'ratio' or 'bounded', got {mode!r}")


CONF_MODES = ("ratio", "bounded")


@dataclass
class TrackedSignals:
    dnorm: float | None
    dloss: float | None
    conf: float | None
    non_finite: bool
    first: bool


MAX_WINDOW = 2**31 - 1  # largest window a SignalTracker accepts


class SignalTracker:
    """Turns per-period (grad_var, grad_norm, loss) into (dnorm, dloss, conf).

    A non-finite period (NaN, inf or missing value in any of the three) is ignored entirely:
    nothing of it enters the window, and the next relative changes compare against the last
    finite period.
    """

    def __init__(self, window: int = 15, full_history: bool = False, conf_mode: str = "ratio"):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if window > MAX_WINDOW:  # deque's maxlen is a C ssize_t; no run has this many periods anyway
            raise ValueError(f"window must be at most {MAX_WINDOW}, got {window}")
        if conf_mode not in CONF_MODES:
            raise ValueError(f"conf mode must be one of {CONF_MODES}, got {conf_mode!r}")
        self.window = window
        self.full_history = full_history
        self.conf_mode = conf_mode
        self._values: deque[float] = deque(maxlen=None if full_history else window)
        self.prev_norm: float | None = None
        self.prev_loss: float | None = None

    def update(self, grad_var, grad_norm, loss) -> TrackedSignals:
        if not all(is_finite_number(v) for v in (grad_var, grad_norm, loss)):
            return TrackedSignals(None, None, None, non_finite=True, first=self.prev_norm is None)
        grad_var, grad_norm, loss = float(grad_var), float(grad_norm), float(loss)
        self._values.append(grad_var)
        first = self.prev_norm is None
        # the first period's grad_var enters the window, but its conf is undefined (spec section 1)
        conf = None if first else confidence(grad_var, statistics.median(self._values), self.conf_mode)
        dnorm = None if first else relative_change(grad_norm, self.prev_norm)
        dloss = None if first else relative_change(loss, self.prev_loss)
        self.prev_norm, self.prev_loss = grad_norm, loss
        return TrackedSignals(dnorm, dloss, conf, non_finite=False, first=first)

    def state_dict(self) -> dict:
        return {"values": list(self._values), "prev_norm": self.prev_norm, "prev_loss": self.prev_loss}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._values = deque(state["values"], maxlen=None if self.full_history else self.window)
        self.prev_norm = state["prev_norm"]
        self.prev_loss = state["prev_loss"]


class BatchSizePolicy(abc.ABC):
    """Base class of every policy: ``step(signals) -> DecisionRecord``, ``batch_size``, state round trips.

    Shaped like ``torch.optim.lr_scheduler``: the harness calls :meth:`step` once per period with
    that period's signals and trains the next period at :attr:`batch_size`.
    """

    name = "base"
    # Whether the starting batch size was chosen by the user (not a default): a loop whose own loader
    # has another size then keeps the policy's, with a warning; otherwise it adopts the loader's.
    start_batch_given = True

    def __init__(self, start_batch: int, b_min: int = 1, b_max: int = 1 << 30):
        self._batch_size = int(start_batch)
        self.b_min = int(b_min)
        self.b_max = int(b_max)
        self.b_max_cap: int | None = None
        self.last_epoch: int | None = None
        self.counts = {"increase": 0, "rollback": 0, "hold": 0, "non_finite": 0}
        self.notes: list[str] = []  # how settings were derived (a scaled cooldown, ...), for run logs

    def set_start_batch(self, batch_size: int) -> None:
        """Start at ``batch_size`` instead of the configured start (before the first step only)."""
        if self.last_epoch is not None:
            raise ValueError("the starting batch size can change only before the first step")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
                not self.b_min <= batch_size <= self.effective_b_max:
            raise ValueError(f"start_batch ({batch_size!r}) must lie in [b_min, b_max] = "
                             f"[{self.b_min}, {self.effective_b_max}]")
        self._batch_size = batch_size

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def effective_b_max(self) -> int:
        return self.b_max if self.b_max_cap is None else min(self.b_max, self.b_max_cap)

    def cap_batch_size(self, largest_working: int) -> None:
        """Cap the batch size for the rest of the run (after an out-of-memory error at a larger size)."""
        largest_working = int(largest_working)
        if largest_working < 1:
            raise ValueError(f"batch-size cap must be >= 1, got {largest_working}")
        self.b_max_cap = largest_working if self.b_max_cap is None else min(self.b_max_cap, largest_working)
        self._batch_size = min(self._batch_size, self.effective_b_max)

    def _check_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"epoch must be an integer, got {epoch!r}")
        if self.last_epoch is not None and epoch != self.last_epoch + 1:
            raise ValueError(f"epochs must be consecutive: got epoch {epoch} after epoch {self.last_epoch}")

    @abc.abstractmethod
    def step(self, signals: EpochSignals | Mapping[str, Any]) -> DecisionRecord:
        """Consume one period's signals; return the decision record and move to the next batch size."""

    # --- state -----------------------------------------------------------------------------
    def settings(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {
            "policy": self.name,
            "settings": self.settings(),
            "batch_size": self._batch_size,
            "b_max_cap": self.b_max_cap,
            "last_epoch": self.last_epoch,
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("policy") != self.name:
            raise ValueError(f"state is of policy {state.get('policy')!r}, not {self.name!r}")
        self._apply_settings(state["settings"])
        self._batch_size = int(state["batch_size"])
        self.b_max_cap = state["b_max_cap"]
        self.last_epoch = state["last_epoch"]
        self.counts = dict(state["counts"])

    def _apply_settings(self, settings: Mapping[str, Any]) -> None:  # noqa: B027 - a hook, empty by default
        pass
