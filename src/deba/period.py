"""The one place where a period of training is closed and decided.

:class:`PeriodLoop` owns what every loop that drives a batch-size policy does between two decisions: it
counts steps and samples, feeds losses and gradients to :class:`deba.signals.GradientSignals`, closes the
period (one host read), flags a period with non-finite steps (spec section 1: it holds, ``non_finite``),
calls ``policy.step``, applies the decision (the new batch size goes to the face's ``resize`` callable, the
learning rate follows, an out-of-memory cap lowers B_max) and keeps all of it in one ``state_dict``.

The faces are thin: :class:`deba.integrations.DebaController` (a loop you wrote) and
:class:`deba.integrations.lightning.DebaCallback` (Lightning) only translate their hooks into
:meth:`observe_step`, :meth:`observe_gradients`, :meth:`close` and :meth:`start`. ``deba train``'s
:class:`deba.training.Trainer` is a face too: its step feeds the signals inside the (possibly CUDA-graph
captured) step, so it attaches those signals (``attach(signals=...)``), counts its steps with
:meth:`count_step` and closes every period (epoch or decision interval) here, with three additions a
multi-process run needs: ``process_group=`` for the loss sums, ``decide=`` to decide on rank 0 and
broadcast, and ``check_state=`` to fold the trained state's own non-finite tensors (and the ranks'
agreement) into the non-finite flag. What stays in the trainer is what is not about the period: the
rollback of a non-finite period to its snapshot, the records and the run folder.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .errors import DebaError
from .lr_coupling import LRCoupling
from .policy import BatchSizePolicy, DecisionRecord, EpochSignals
from .signals import NOISE_FIELDS, GradientSignals

STATE_VERSION = 1


def check_policy(policy: Any, where: str) -> BatchSizePolicy:
    if not isinstance(policy, BatchSizePolicy):
        raise DebaError(f"{where}: policy must be a deba BatchSizePolicy, got {type(policy).__name__}")
    return policy


class PeriodLoop:
    """Signals in, decision applied: the per-period loop shared by every face.

    ``policy``: a :class:`deba.policy.BatchSizePolicy`. ``signals_mode`` / ``every``: as for
    :class:`GradientSignals`. ``resize``: called with the new batch size whenever the decided size changes
    (the face resizes its loader there). ``lr``: an optional :class:`deba.lr_coupling.LRCoupling`.
    ``where``: the name errors start with (the face's class). Parameters may come later
    (:meth:`attach`), as in Lightning, where the module's parameters are known only at fit start.
    """

    def __init__(self, policy: BatchSizePolicy, *, signals_mode: str = "last", every: int = 1,
                 resize: Callable[[int], Any] | None = None, lr: LRCoupling | None = None,
                 where: str = "PeriodLoop", gns: bool = False, refuse_zeroed_gradient: bool = True):
        self.policy = check_policy(policy, where)
        self.gns = bool(gns)  # gradient noise scale: the face reports two gradient sizes (docs/noise.md)
        # a user's loop may zero .grad in place before the period closes (refused, with what to do); a face
        # whose own step never does (deba train) turns the check off, so a truly zero gradient is not misread
        self.refuse_zeroed_gradient = bool(refuse_zeroed_gradient)
        self.where = where
        self.signals_mode = signals_mode
        self.every = every
        GradientSignals._check_mode(signals_mode, every)
        self.resize = resize
        self.lr = lr
        self.signals: GradientSignals | None = None
        self.samples_seen = 0       # over the whole run: the unit of progress
        self.epoch_samples = 0      # in the period under way
        self.epoch_steps = 0        # training batches in the period
        self.epoch_opt_steps = 0    # gradients observed (optimiser steps): the every-k gating index
        self.reference_batch = policy.batch_size  # B0: the start, the unit of lr schedules and coupling
        self.last_record: DecisionRecord | None = None
        self.last_nonfinite = False  # the flag the last period was closed with (the policy may add its own)
        self._pending_signals: Mapping[str, Any] | None = None

    # --- set-up ------------------------------------------------------------------------------------
    def attach(self, parameters: Iterable[torch.Tensor] | None = None, *,
               signals: GradientSignals | None = None) -> GradientSignals:
        """Create the signals over ``parameters`` (their gradients feed the statistics), or use ``signals``
        that the face's own step feeds (``deba train``: inside a CUDA graph); their mode must match."""
        if signals is not None:
            if signals.mode != self.signals_mode or bool(signals.gns) != self.gns:
                raise DebaError(f"{self.where}: the signals given run mode {signals.mode!r} (gns {signals.gns}), "
                                f"this loop was built for {self.signals_mode!r} (gns {self.gns})")
            self.signals = signals
        else:
            params = [p for p in (parameters or ()) if p.requires_grad]
            if not params:
                raise DebaError(f"{self.where}: no trainable parameters given")
            self.signals = GradientSignals(params, mode=self.signals_mode, every=self.every, gns=self.gns)
        if self._pending_signals is not None:
            self.signals.load_state_dict(self._pending_signals)
            self._pending_signals = None
        return self.signals

    def start(self, user_batch_size: int | None, source: str) -> int:
        """Settle the starting batch size between the policy and the user's own (``source`` names it).

        The user's batch size is the start unless the policy was given an explicit ``start_batch``; then
        the policy wins, with a warning that says so. A user's size outside [b_min, b_max] is clamped,
        with a warning. Nothing changes once the policy has stepped (a resumed run keeps its size).
        """
        p = self.policy
        if user_batch_size is None or p.last_epoch is not None or user_batch_size == p.batch_size:
            return p.batch_size
        if p.start_batch_given:
            warnings.warn(f"{self.where}: {source} has batch size {user_batch_size} but the policy was given "
                          f"start_batch={p.batch_size}; the policy's {p.batch_size} wins (leave start_batch out "
                          f"to start at {user_batch_size})", stacklevel=3)
            return p.batch_size
        start = user_batch_size
        try:
            p.set_start_batch(start)
        except ValueError:
            low, high = p.b_min, p.effective_b_max
            start = min(high, max(low, user_batch_size))
            warnings.warn(f"{self.where}: {source} has batch size {user_batch_size}, outside the policy's "
                          f"[b_min, b_max] = [{low}, {high}]; training starts at {start} (widen b_min / b_max "
                          f"to start at {user_batch_size})", stacklevel=3)
            p.set_start_batch(start)
        self.reference_batch = start
        return start

    @property
    def batch_size(self) -> int:
        """The batch size the current period trains at."""
        return self.policy.batch_size

    def progress(self, total_samples: int | float) -> float:
        """``samples_seen / total_samples`` clipped to [0, 1]: progress that batch-size changes do not distort."""
        if isinstance(total_samples, bool) or not isinstance(total_samples, (int, float)) or not total_samples > 0:
            raise DebaError(f"progress: total_samples must be a positive number, got {total_samples!r}")
        return min(1.0, max(0.0, self.samples_seen / total_samples))

    # --- per step (no host read) -------------------------------------------------------------------
    def before_step(self) -> None:
        """Set the learning rate for the optimiser step about to run (samples seen so far, current B)."""
        if self.lr is not None:
            self.lr.apply(self.samples_seen, self.batch_size, self.reference_batch)

    def observe_step(self, loss: torch.Tensor, samples: int) -> None:
        """One training batch: its loss (a device tensor) and how many samples it trained on."""
        self._signals().observe_loss(loss)
        self.count_step(samples)

    def count_step(self, samples: int) -> None:
        """Count one training batch of ``samples`` samples whose loss the face's step gave the signals itself."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise DebaError(f"{self.where}: samples must be a non-negative integer, got {samples!r}")
        self.epoch_steps += 1
        self.epoch_samples += samples
        self.samples_seen += samples

    def observe_gradients(self, last_of_period: bool = True) -> None:
        """The gradients about to be applied (after backward and unscaling, before any clipping).

        epoch-avg mode: added to the period's average (every ``every``-th call). last mode: kept as the
        period's gradient when ``last_of_period`` (pass True on every step when the last is not known
        in advance: each capture replaces the one before), so the period's statistics do not depend on
        what happens to ``.grad`` afterwards (clipping, zeroing before validation).
        """
        signals = self._signals()
        if signals.mode == "epoch-avg":
            signals.observe_gradients(self.epoch_opt_steps)
        elif last_of_period:
            signals.capture_last()
        self.epoch_opt_steps += 1

    # --- the decision -------------------------------------------------------------------------------
    def close(self, epoch: int | None = None, *, process_group: Any = None,
              decide: Callable[[EpochSignals], DecisionRecord] | None = None,
              check_state: Callable[[bool], tuple[bool, dict]] | None = None) -> DecisionRecord:
        """Close the period: one host read, the non-finite flag, the policy's decision, applied.

        ``epoch`` defaults to the one after the policy's last (0 for the first). The record's ``extra``
        carries ``steps``, ``samples`` (this period), ``samples_seen`` (cumulative) and ``nonfinite_steps``.
        ``check_state(nonfinite)`` (optional) returns the final flag and extra fields for the record: the
        trainer adds the trained state's non-finite tensors and makes the ranks agree there.
        """
        if self.epoch_steps == 0:
            raise DebaError(f"{self.where}: no step was recorded this epoch (call after_backward(loss) after "
                            "each backward)")
        epoch = self._next_epoch(epoch)
        stats = self._signals().end_epoch(process_group)
        self._check_gradient(stats)
        # a period with a non-finite step holds and is flagged (spec section 1), whatever its averages say;
        # so does one with a non-finite noise sample (a non-finite gradient norm)
        nonfinite = stats["nonfinite_steps"] > 0 or stats.get("gns_nonfinite", 0) > 0 or not all(
            stats[k] is not None and math.isfinite(stats[k]) for k in ("grad_var", "grad_norm", "loss"))
        extra: dict = {}
        if check_state is not None:
            nonfinite, extra = check_state(nonfinite)
        signals = EpochSignals(epoch, stats["grad_var"], stats["grad_norm"], None if nonfinite else stats["loss"],
                               gns_g2=stats.get("gns_g2"), gns_trace=stats.get("gns_trace"))
        try:
            record = (decide or self.policy.step)(signals)
        except ValueError as e:
            raise DebaError(f"{self.where}: {e}") from None
        # a non-finite period's record keeps loss None, as the policy saw it, so its log replays to the
        # same decisions (deba replay reads loss); the raw sums stay in nonfinite_steps
        record.extra.update(steps=self.epoch_steps, samples=self.epoch_samples, samples_seen=self.samples_seen,
                            nonfinite_steps=stats["nonfinite_steps"], **extra)
        if self.gns:
            record.extra.update({k: stats[k] for k in NOISE_FIELDS})
        self.epoch_steps = self.epoch_samples = self.epoch_opt_steps = 0
        self.last_record, self.last_nonfinite = record, nonfinite
        if record.next_batch_size != record.batch_size:
            self._changed(record.batch_size, record.next_batch_size)
        return record

    def observe_small_gradient(self, b_small: int, batch: int) -> None:
        """Noise scale, after the first micro-batch's backward: ``.grad`` holds b_small/batch times the
        gradient averaged over its ``b_small`` examples (its share of the batch-mean loss)."""
        self._noise_signals().observe_small_gradient(b_small / batch)

    def observe_big_gradient(self, b_small: int, b_big: int) -> None:
        """Noise scale, after the last micro-batch's backward: ``.grad`` holds the gradient averaged over
        ``b_big`` examples (the whole batch; under DDP the global one)."""
        self._noise_signals().observe_big_gradient(b_small, b_big)

    def _noise_signals(self) -> GradientSignals:
        if not self.gns:
            raise DebaError(f"{self.where}: the noise scale is off (pass gns=True)")
        return self._signals()

    def cap_batch_size(self, largest_working: int) -> int:
        """After an out-of-memory error: B_max becomes ``largest_working`` for the rest of the run, the
        current size drops to it if larger (and the loader with it). Returns the batch size now."""
        before = self.batch_size
        try:
            self.policy.cap_batch_size(largest_working)
        except ValueError as e:
            raise DebaError(f"{self.where}: {e}") from None
        if self.batch_size != before:
            self._changed(before, self.batch_size)
        return self.batch_size

    def _changed(self, old: int, new: int) -> None:
        if self.lr is not None:
            self.lr.on_change(old, new)
        if self.resize is not None:
            self.resize(new)

    def _next_epoch(self, epoch: int | None) -> int:
        last = self.policy.last_epoch
        if epoch is None:
            return 0 if last is None else last + 1
        if isinstance(epoch, bool) or not isinstance(epoch, int) or (last is not None and epoch != last + 1):
            # checked before the signals are read, so a wrong call loses nothing
            raise DebaError(f"{self.where}: epochs must be consecutive integers, got {epoch!r} after {last!r}")
        return epoch

    def _check_gradient(self, stats: Mapping[str, Any]) -> None:
        # An all-zero gradient read from .grad at period end: the loop zeroed the gradients in place
        # (zero_grad(set_to_none=False)) before the period closed. Its statistics would read as perfect
        # calm and grow the batch every period; refuse instead.
        if self.refuse_zeroed_gradient and stats.get("grad_source") == "held" and stats["grad_norm"] == 0.0:
            raise DebaError(
                f"{self.where}: the gradients held in .grad at the end of the epoch are all zero, so the loop "
                "zeroed them (zero_grad(set_to_none=False)) before the epoch closed; close the epoch before "
                "zeroing them, zero them at the start of each step instead, or use signals_mode='epoch-avg'")

    def _signals(self) -> GradientSignals:
        if self.signals is None:
            raise DebaError(f"{self.where}: no parameters attached yet (the signals need the model's parameters)")
        return self.signals

    # --- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy, counters, signal accumulators and learning-rate reference (plain Python; one host read)."""
        signals = self.signals.state_dict() if self.signals is not None else self._pending_signals
        return {
            "state_version": STATE_VERSION,
            "policy": self.policy.state_dict(),
            "samples_seen": self.samples_seen,
            "epoch_samples": self.epoch_samples,
            "epoch_steps": self.epoch_steps,
            "epoch_opt_steps": self.epoch_opt_steps,
            "signals": None if signals is None else dict(signals),
            "reference_batch": self.reference_batch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the saved policy settings win); ``resize`` gets the restored size."""
        if state.get("state_version") != STATE_VERSION:
            raise DebaError(f"{self.where} state has version {state.get('state_version')!r}, "
                            f"expected {STATE_VERSION}")
        saved = state["policy"].get("policy")
        if saved != self.policy.name:
            raise DebaError(f"{self.where} state is of policy {saved!r}, this one runs {self.policy.name!r}")
        signals = state.get("signals")
        if signals is not None:
            if self.signals is not None:
                self.signals.load_state_dict(signals)
            else:
                GradientSignals._check_state_mode(signals, self.signals_mode)
                self._pending_signals = signals  # applied in attach()
        self.policy.load_state_dict(state["policy"])
        self.samples_seen = int(state["samples_seen"])
        self.epoch_samples = int(state["epoch_samples"])
        self.epoch_steps = int(state["epoch_steps"])
        self.epoch_opt_steps = int(state.get("epoch_opt_steps", self.epoch_steps))
        self.reference_batch = int(state.get("reference_batch", self.reference_batch))
        if self.resize is not None:
            self.resize(self.batch_size)
