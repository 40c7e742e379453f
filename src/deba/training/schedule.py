"""Learning rate as a function of training progress counted in samples seen.

Counting progress in samples (not steps) keeps a schedule meaningful when the batch size changes:
a cosine decay over 100 epochs ends at the end of epoch 100 whatever batch sizes were used.
"""
from __future__ import annotations

import math


def learning_rate(
    base_lr: float,
    *,
    schedule: str,
    scaling: str,
    batch_size: int,
    reference_batch: int,
    samples_seen: int,
    total_samples: int,
) -> float:
    if scaling == "none":
        scale = 1.0
    elif scaling == "linear":
        scale = batch_size / reference_batch
    elif scaling == "sqrt":
        scale = math.sqrt(batch_size / reference_batch)
    else:
        raise ValueError(f"unknown lr scaling {scaling!r}")
    if schedule == "constant":
        factor = 1.0
    elif schedule == "cosine":
        progress = min(1.0, max(0.0, samples_seen / max(1, total_samples)))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}")
    return base_lr * scale * factor
