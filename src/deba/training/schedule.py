"""Learning rate as a function of training progress counted in samples seen.

Counting progress in samples (not steps) keeps a schedule meaningful when the batch size changes:
a cosine decay over 100 epochs ends at the end of epoch 100 whatever batch sizes were used.
"""
from __future__ import annotations

import math

from ..lr_coupling import LR_SCALINGS, batch_scale


def learning_rate(
    base_lr: float,
    *,
    schedule: str,
    scaling: str,
    batch_size: int,
    reference_batch: int,
    samples_seen: int,
    total_samples: int,
    warmup_samples: int = 0,
    min_lr: float = 0.0,
) -> float:
    """The learning rate after ``samples_seen`` samples.

    ``warmup_samples`` > 0: linear warm-up, base x (samples_seen + B0) / (warmup_samples + B0) with B0 the
    reference batch (nanoGPT's (it + 1) / (warmup_iters + 1) at a fixed batch), then the schedule runs over
    the remaining samples. ``min_lr``: the cosine decays to it instead of 0."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"unknown lr scaling {scaling!r}")
    scale = batch_scale(batch_size, reference_batch, LR_SCALINGS[scaling])
    if warmup_samples > 0 and samples_seen < warmup_samples:
        return base_lr * scale * (samples_seen + reference_batch) / (warmup_samples + reference_batch)
    if schedule == "constant":
        factor = 1.0
    elif schedule == "cosine":
        span = max(1, total_samples - warmup_samples)
        progress = min(1.0, max(0.0, (samples_seen - warmup_samples) / span))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}")
    if min_lr:
        return scale * (min_lr + factor * (base_lr - min_lr))
    return base_lr * scale * factor
