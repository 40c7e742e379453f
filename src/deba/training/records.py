"""The run's records and outputs: the state the loop carries (checkpointed), the summary, the log files
rewritten whole from the records, and TensorBoard scalars."""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..logio import write_json, write_jsonl
from ..runfolder import DECISIONS_FILE, EPOCHS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class RunState:
    """What the loop carries across epochs; all of it goes into the checkpoint."""

    epoch: int = 0  # epochs completed
    period: int = 0  # decision periods completed (== epoch unless decision_interval is set)
    samples_seen: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    nonfinite_events: int = 0
    best_test_acc: float | None = None
    best_epoch: int | None = None
    largest_ok_batch: int = 0
    steps: int = 0  # optimisation steps of the run
    micro_batch: int | None = None  # set by --accumulate after an out-of-memory error; kept for the run
    since_decision_steps: int = 0  # interval mode: steps and global samples of the open period
    since_decision_samples: int = 0
    records: list = field(default_factory=list)  # epochs.jsonl
    decisions: list = field(default_factory=list)  # decisions.jsonl (decision_interval mode)
    events: list = field(default_factory=list)
    status: str = "running"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def write_outputs(tr: Trainer) -> dict:
    """Rewrite the run's log files whole from the records (rank 0); returns the summary."""
    summary = tr.summary()
    if tr.out is None or not tr.dist.is_main:
        return summary
    write_jsonl(tr.out / EPOCHS_FILE, tr.state.records)
    if tr.config.decision_interval:
        write_jsonl(tr.out / DECISIONS_FILE, tr.state.decisions)
    write_json(tr.out / SUMMARY_FILE, summary)
    return summary


def run_summary(tr: Trainer) -> dict:
    """The run's summary (summary.json) from its config, state and policy."""
    c, s = tr.config, tr.state
    recs = s.records
    final_done = bool(recs) and (recs[-1]["epoch"] == c.epochs or tr._samples_done())
    final = recs[-1]["test_acc"] if final_done else None
    counts = tr.policy.counts
    summary = {
        "run_name": c.run_name or (Path(c.out).name if c.out else None),
        "arch": c.model or c.arch,
        "dataset": tr.dataset_name,
        "policy": tr.policy.name,
        "preset": getattr(tr.policy, "preset", None),
        "seed": c.seed,
        "epochs": c.epochs,
        "epochs_completed": s.epoch,
        "status": s.status,
        "final_test_acc": final,
        "best_test_acc": s.best_test_acc,
        "best_epoch": s.best_epoch,
        "train_time_s": s.train_time_s,
        "eval_time_s": s.eval_time_s,
        "increases": counts["increase"],
        "rollbacks": counts["rollback"],
        "holds": counts["hold"],
        "non_finite_epochs": s.nonfinite_events,
        "batch_sizes": [r["batch_size"] for r in recs],
        "final_batch_size": tr.policy.batch_size,
        "max_batch_size": max((r["batch_size"] for r in recs), default=None),
        "b_max_cap": tr.policy.b_max_cap,
        "samples_seen": s.samples_seen,
        "steps": s.steps,
        "decisions": s.period,
        "micro_batch": tr.step.micro_batch,
        "events": s.events,
        "concurrent_runs": c.concurrent_runs,
        "world_size": tr.dist.world_size,
        "device_name": device_name(tr.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "graphs": getattr(tr.step, "mode", None),
    }
    if tr.lm is not None:
        summary.update(tr.lm.summary_fields(recs, final_done, s.samples_seen))
    return summary


def log_tensorboard(tb, rec: dict) -> None:
    if not tb:
        return
    for key in ("batch_size", "loss", "grad_var", "grad_norm", "dnorm", "dloss", "conf", "test_acc", "lr"):
        v = rec.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            tb.add_scalar(key, v, rec["epoch"])


def periods_epoch_record(epoch: int, stats: dict, next_batch_size: int) -> dict:
    """Interval mode: the epoch's record sums up the periods that ended in it (the policy already decided on
    them; their records are in decisions.jsonl)."""
    periods = stats["periods"]
    losses = [(p["loss"], p["steps"]) for p in periods if p["loss"] is not None]
    return {"epoch": epoch, "batch_size": stats["batch_at_start"], "grad_var": None, "grad_norm": None,
            "loss": (sum(lo * n for lo, n in losses) / sum(n for _, n in losses)) if losses else None,
            "dnorm": None, "dloss": None, "conf": None, "decision": "periods", "in_cooldown": None,
            "non_finite": any(p["non_finite"] for p in periods),
            "reason": f"{len(periods)} decision(s) in this epoch, see decisions.jsonl",
            "next_batch_size": next_batch_size, "periods": [p["epoch"] for p in periods]}


def tensors_note(rec: dict) -> str:
    names = rec.get("nonfinite_tensors")
    return f"; non-finite state: {', '.join(names)}" if names else ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
