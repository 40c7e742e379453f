"""Out-of-memory recovery: what the trainer does when a step runs out of memory.

Without ``accumulate`` the policy's B_max is capped below the failing size (:func:`handle_oom`); with it
the micro-batch is halved until a step fits (:func:`shrink_micro_batch`). A multi-process run cannot
recover in place: the rank writes its limit to the run folder and stops (:func:`persist_oom_limit`), and
:func:`apply_oom_limits` applies the limits on ``--resume``. The trainer's module docstring says more.
"""
from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import torch

from ..errors import DebaError
from ..logio import make_dir, read_json, write_json
from .distributed import RestartNeeded, min_over_ranks

if TYPE_CHECKING:
    from .trainer import Trainer

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
)

OOM_LIMITS_GLOB = "oom-rank*.json"  # per rank: {"b_max_cap": N} and/or {"micro_batch": M}, see persist_oom_limit


def free_memory(tr: Trainer) -> None:
    if hasattr(tr.step, "free_graphs"):
        tr.step.free_graphs()
    if tr.device.type == "cuda":
        gc.collect()  # tensors still referenced from the error's traceback frames
        torch.cuda.empty_cache()


def set_micro_batch(tr: Trainer, size: int) -> None:
    """Split every batch into micro-batches of at most ``size`` samples (per process) from now on.

    A CUDA-graph step keys its graphs by input shape only and captured the old split, so its graphs
    are dropped and recaptured at the next call."""
    tr.step.micro_batch = int(size)
    if hasattr(tr.step, "free_graphs"):
        tr.step.free_graphs()


def handle_oom(tr: Trainer, failed: int, err: BaseException) -> None:
    if tr.config.accumulate:
        shrink_micro_batch(tr, failed)
        return
    good = tr.state.largest_ok_batch
    if good <= 0 or good >= failed:
        good = max(tr.policy.b_min, failed // 2) if good <= 0 else good
    if failed <= tr.policy.b_min:
        raise DebaError(f"out of memory at batch size {failed}, the smallest allowed (b_min); "
                        "use a smaller model, --accumulate, --micro-batch, or --amp bf16") from None
    cap = min(good, failed - 1)
    if tr.dist.enabled:
        persist_oom_limit(tr, failed, b_max_cap=cap)
    free_memory(tr)
    tr.period.cap_batch_size(cap)  # the PeriodLoop applies it (B_max capped, the current size with it)
    tr._event(f"out of memory at batch size {failed}; B_max capped at {tr.policy.effective_b_max}, "
              f"continuing the epoch at batch size {tr.policy.batch_size}")


def shrink_micro_batch(tr: Trainer, failed: int) -> None:
    """--accumulate: halve the micro-batch the failed step ran (the per-process batch when none was set).

    Called again on each failure, so the halving goes on until a step fits; the size found stays."""
    per_process = tr.loader.per_rank_batch_size
    current = tr.step.micro_batch
    ran = per_process if current is None else min(current, per_process)
    if ran <= 1:
        raise DebaError(f"out of memory at batch size {failed} even with micro-batches of 1 sample; "
                        "use a smaller model or --amp bf16") from None
    size = ran // 2
    if tr.dist.enabled:
        persist_oom_limit(tr, failed, micro_batch=size)
    free_memory(tr)
    set_micro_batch(tr, size)
    tr.state.micro_batch = size
    tr._event(f"micro-batch set to {size} after out of memory at batch size {failed}")


def persist_oom_limit(tr: Trainer, failed: int, **limit: int) -> None:
    """Multi-process run: write this rank's limit to the run folder and stop (RestartNeeded).

    A rank that ran out of memory cannot recover in place: the others are already inside this step's
    gradient all-reduce (or the next one), which it would join out of step. Nothing else on this rank
    is written; the checkpoint of the last finished epoch stays the state to resume from, and
    :func:`apply_oom_limits` applies the smallest limit every rank wrote when the run starts again."""
    r, w = tr.dist.rank, tr.dist.world_size
    what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in limit.items())
    if tr.out is None:
        raise RestartNeeded(f"out of memory at batch size {failed} on rank {r} of {w}; a multi-process run "
                            f"without an output folder cannot keep the limit ({what}): give --out") from None
    path = tr.out / OOM_LIMITS_GLOB.replace("*", str(r))
    merged = dict(limit)
    if path.exists():
        old = read_json(path)
        for k, v in old.items():
            if k in ("b_max_cap", "micro_batch") and isinstance(v, int):
                merged[k] = min(v, merged.get(k, v))
    make_dir(tr.out)
    write_json(path, {**merged, "failed_batch_size": failed, "rank": r, "world_size": w,
                      "epoch": tr._current_epoch})
    raise RestartNeeded(f"out of memory at batch size {failed} on rank {r} of {w}: stopping, the other ranks "
                        f"cannot go on with this one; {what} is kept in {path.name} and applied when the run "
                        "is started again with --resume (torchrun --max-restarts N does it for you)") from None


def apply_oom_limits(tr: Trainer) -> None:
    """Apply the limits ranks of an earlier start of this run wrote when they ran out of memory.

    Every rank reads the run folder (shared, as for the checkpoint) and the smallest value of each
    limit is agreed with one all-reduce, so all ranks train at the same sizes even if one could not
    read a file."""
    caps: list[int] = []
    micros: list[int] = []
    if tr.out is not None and tr.out.is_dir():
        for path in sorted(tr.out.glob(OOM_LIMITS_GLOB)):
            saved = read_json(path)
            for key, into in (("b_max_cap", caps), ("micro_batch", micros)):
                v = saved.get(key)
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise DebaError(f"{path}: {key} must be an integer >= 1, got {v!r}")
                into.append(v)
    none = 2 ** 62
    cap, micro = min(caps, default=none), min(micros, default=none)
    if tr.dist.enabled:
        cap, micro = min_over_ranks([cap, micro], tr.device)
    if cap != none and (tr.policy.b_max_cap is None or cap < tr.policy.b_max_cap):
        tr.policy.cap_batch_size(max(cap, tr.policy.b_min))
        tr._event(f"B_max capped at {tr.policy.effective_b_max} (out of memory in an earlier start of "
                  f"this run), training at batch size {tr.policy.batch_size}")
    if micro != none and (tr.step.micro_batch is None or micro < tr.step.micro_batch):
        set_micro_batch(tr, micro)
        tr.state.micro_batch = micro
        tr._event(f"micro-batch set to {micro} (out of memory in an earlier start of this run)")
