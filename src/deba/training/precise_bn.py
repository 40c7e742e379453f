"""BatchNorm running statistics recomputed before an evaluation ("precise BN").

A BatchNorm layer evaluates with running averages of the batch statistics it saw in training. With a small
momentum (torchvision's MobileNetV3 uses 0.01: an average over about the last 100 steps) and weights that still
move fast, those averages describe an earlier network: on a short CPU run of mobilenet_v3_large the
evaluated accuracy sat at chance (10.4%) while the same weights with batch statistics scored 31.8%
(docs/findings.md). Recomputing the statistics with the current weights over a few training batches, in train
mode without gradients, removes that lag; Detectron2's and fvcore's PreciseBN, and timm's ``--bn-eval``-free
recipes, do the same.

The statistics become the plain average over the batches used (``momentum=None``: a cumulative average), the
layers' momentum is restored afterwards, and nothing else changes: no parameter, no optimizer state, no random
number generator (the batches come from the loader's own seeded order of the current epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_stats(model: torch.nn.Module, batches: Iterable[torch.Tensor], num_batches: int,
                              forward: Callable[[torch.Tensor], object] | None = None) -> int:
    """Reset every tracking BatchNorm layer of ``model`` and average its statistics over the first
    ``num_batches`` inputs of ``batches`` (forward in train mode, no gradients). Returns the number of batches
    used (fewer when ``batches`` runs out; 0 leaves the statistics as they were). The model's train/eval mode
    and each layer's momentum are restored."""
    layers = batchnorm_layers(model)
    if not layers or num_batches < 1:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers]
    was_training = model.training
    forward = forward or model
    used = 0
    try:
        for m in layers:
            m.reset_running_stats()  # in place: a captured CUDA graph keeps its buffer addresses
            m.momentum = None
        model.train()
        for x in batches:
            if used >= num_batches:
                break
            forward(x)
            used += 1
    finally:
        for m, (mean, var, count, momentum) in zip(layers, saved):
            m.momentum = momentum
            if used == 0:  # nothing seen: keep the old statistics rather than the reset ones
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return used
