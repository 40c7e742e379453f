"""A model for `deba train --arch oom_on_rank1:mlp` in the DDP out-of-memory test: `tiny_mlp` whose forward
raises torch.OutOfMemoryError on rank 1 only, above 30 samples (per process), as a GPU would whose
neighbour process holds memory. Not a test module (no test_ prefix)."""
import os

import torch

from deba.models import tiny_mlp

LIMIT = 30


class _Rank1Limited(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = tiny_mlp(num_classes)

    def forward(self, x):
        if os.environ.get("RANK") == "1" and x.shape[0] > LIMIT:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: rank 1, {x.shape[0]} > {LIMIT} samples)")
        return self.net(x)


def mlp(num_classes: int = 10) -> torch.nn.Module:
    return _Rank1Limited(num_classes)
