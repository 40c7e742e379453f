"""Saving and resuming a trainer's run: what goes into the checkpoint, and the checks that a checkpoint fits
the run that resumes it (the file format itself is :mod:`deba.training.checkpoint`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DebaError, option
from . import safety
from .checkpoint import fit_problem, load_for_resume, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import sum_over_ranks
from .oom import set_micro_batch
from .records import RunState

if TYPE_CHECKING:
    from .trainer import Trainer

# config keys that may differ between a checkpoint and a resuming run
RESUME_MUTABLE_KEYS = {"quiet", "tensorboard", "out", "concurrent_runs", "device", "checkpoint_every", "epochs",
                       "max_nonfinite", "nonfinite_action", "dist_timeout"}


def save(tr: Trainer) -> None:
    """Write the checkpoint (rank 0); every rank must call it (the open period's sums are reduced)."""
    path = tr.checkpoint_path()
    if path is None:
        return
    signals = signals_state(tr)
    if not tr.dist.is_main:
        return
    # the open period's counts live in the PeriodLoop; the run state carries them into the checkpoint
    tr.state.since_decision_steps, tr.state.since_decision_samples = tr.period.epoch_steps, tr.period.epoch_samples
    save_checkpoint(path, {
        "config": tr.config.to_dict(),
        "model": tr.model.state_dict(),
        "step": tr.step.state_dict(),
        "policy": tr.policy.state_dict(),
        "rng": rng_state(),
        "run": tr.state.to_dict(),
        # interval mode: the open period's accumulators and its starting state (None between periods)
        "signals": signals,
        "period_start": tr._period_snapshot,
        "partial_epoch": tr._partial,  # a stop mid-epoch: where the epoch goes on (None otherwise)
    })


def restore_period_counts(tr: Trainer) -> None:
    """The PeriodLoop's counts of the open period, from the checkpoint: the run state's in interval mode; in
    epoch mode the period is the epoch, so those of an epoch stopped part-way (none at an epoch's end)."""
    s, part, period = tr.state, tr._partial, tr.period
    period.samples_seen = s.samples_seen
    if tr.config.decision_interval:
        period.epoch_steps, period.epoch_samples = s.since_decision_steps, s.since_decision_samples
    else:
        period.epoch_steps, period.epoch_samples = (part["steps"], part["samples"]) if part else (0, 0)
    period.epoch_opt_steps = period.epoch_steps


def signals_state(tr: Trainer) -> dict:
    """The signal accumulators; with several ranks the per-rank sums (loss, steps) are summed, so that
    rank 0 can hold them all after a resume and the period's closing all-reduce counts them once."""
    state = tr.signals.state_dict()
    if tr.dist.enabled:
        keys = ("loss_sum", "steps", "nonfinite_steps")
        state.update(zip(keys, sum_over_ranks([state[k] for k in keys], tr.device)))
    return state


def resume(tr: Trainer, fallback: bool = False) -> bool:
    """Load the run's checkpoint into the trainer, after checking it fits this run; False where there is none."""
    path = tr.checkpoint_path()
    if path is None or not path.exists():
        return False
    payload, note = load_for_resume(path, fallback, map_location=tr.device)
    if note:
        tr._notes_after_resume.append(note)
    problem = fit_problem(payload, tr.model, set(RunState.__dataclass_fields__))
    if problem:
        raise DebaError(f"{path}: checkpoint does not fit this run: {problem}")
    saved = payload["config"]
    mine = tr.config.to_dict()
    # a key the checkpoint's deba did not know yet had its default then
    defaults = TrainConfig().to_dict()
    differ = sorted(k for k in mine if k not in RESUME_MUTABLE_KEYS and saved.get(k, defaults[k]) != mine[k])
    if differ:
        raise DebaError(f"{path}: checkpoint was written with a different config ({', '.join(differ)}); "
                        "resume with the same settings or use another --out")
    if payload["run"]["epoch"] > tr.config.epochs:
        raise DebaError(f"{path}: checkpoint is at epoch {payload['run']['epoch']}, beyond --epochs {tr.config.epochs}")
    horizon = saved.get("epochs", defaults["epochs"])
    if tr.config.lr_schedule == "cosine" and horizon != tr.config.epochs:
        # the cosine decay is laid over the run's epochs: another horizon would restart it mid-run
        raise DebaError(f"{path}: the run's cosine schedule decays over {horizon} epochs; resuming with "
                        f"{option('epochs')} {tr.config.epochs} would restart the decay. Resume with "
                        f"{option('epochs')} {horizon}, or start a new run for a longer schedule")
    tr.model.load_state_dict(payload["model"])
    try:
        tr.step.load_state_dict(payload["step"])
        tr.policy.load_state_dict(payload["policy"])
        set_rng_state(payload["rng"])
    except (DebaError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DebaError(f"{path}: checkpoint does not fit this run's optimizer, policy or RNG ({what})") from None
    bad = safety.nonfinite_tensors(tr.model)
    if bad:
        raise DebaError(f"{path}: checkpoint holds non-finite values ({', '.join(bad)}); resume from an "
                        "earlier checkpoint or start afresh")
    tr.state = RunState(**payload["run"])
    tr._partial = payload.get("partial_epoch")
    tr.state.status = "running"
    signals = payload.get("signals")
    if signals is not None:
        if not tr.dist.is_main:  # rank 0 holds the summed per-rank sums (see signals_state)
            signals = {**signals, "loss_sum": 0.0, "steps": 0.0, "nonfinite_steps": 0.0}
        tr.signals.load_state_dict(signals)
    tr._period_snapshot = payload.get("period_start")
    restore_period_counts(tr)
    if tr.state.micro_batch is not None:
        set_micro_batch(tr, tr.state.micro_batch)
    part = tr._partial
    tr._event(f"resumed from checkpoint at epoch {tr.state.epoch}"
              + (f", step {part['steps']} of epoch {part['epoch']}" if part else ""))
    return True

