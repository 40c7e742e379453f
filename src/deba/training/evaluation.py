"""Evaluation: test accuracy and loss on the held-out set (or a language model's validation loss), with
``--precise-bn`` BatchNorm statistics recomputed first."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import DebaError

if TYPE_CHECKING:
    from .trainer import Trainer


class null_context:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@torch.no_grad()
def evaluate(tr: Trainer) -> tuple[float | None, float]:
    """Test accuracy (percent) and mean test loss; one host read. Language models: (None, validation loss)."""
    if tr.lm is not None:
        return None, tr.lm.evaluate(tr.model, tr.config.amp)
    model = tr.model
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=tr.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=tr.device)
    n = 0
    amp = torch.autocast(tr.device.type, dtype=torch.bfloat16) if tr.config.amp == "bf16" else null_context()
    if tr.config.precise_bn:
        recompute_batchnorm(tr, amp)
    for x, y in eval_batches(tr):
        if tr.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            out = model(x)
        loss_sum += torch.nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum().double()
        n += int(y.shape[0])
    model.train(was_training)
    vals = torch.stack([correct, loss_sum]).tolist()
    return 100.0 * vals[0] / max(1, n), vals[1] / max(1, n)


def recompute_batchnorm(tr: Trainer, amp) -> None:
    """--precise-bn N: BatchNorm statistics averaged over N training batches of the current epoch's order
    before the evaluation (deba.training.precise_bn says why)."""
    from .precise_bn import recompute_batchnorm_stats

    def inputs():
        for x, _ in tr.loader.batches(start_sample=0):
            yield x.contiguous(memory_format=torch.channels_last) if tr.config.channels_last else x

    def forward(x):
        with amp:
            tr.model(x)

    recompute_batchnorm_stats(tr.model, inputs(), tr.config.precise_bn, forward)


def eval_batches(tr: Trainer):
    if isinstance(tr.test_loader, torch.utils.data.DataLoader):  # a user's test Dataset
        non_blocking = tr.device.type == "cuda"
        for batch in tr.test_loader:
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise DebaError("test_dataset items must be (input, label) pairs")
            yield (batch[0].to(tr.device, non_blocking=non_blocking),
                   batch[1].to(tr.device, non_blocking=non_blocking))
        return
    tr.test_loader.set_epoch(0)
    yield from tr.test_loader.batches(start_sample=0, drop_last=False)
