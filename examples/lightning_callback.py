"""DEBA as a PyTorch Lightning callback: python examples/lightning_callback.py --epochs 10

Needs Lightning: pip install 'deba[lightning]'. The datamodule exposes `batch_size` and builds its
train loader from it; DebaCallback sets that attribute after each decision and has Lightning rebuild
the loader for the next epoch; the datamodule's own batch size (32) is the start. The cosine schedule
is an ordinary per-step torch scheduler planned at that size; the callback drives it by samples seen,
so batch-size changes do not distort it. The records are also logged
(deba/batch_size, deba/conf, ...) to whatever logger the Trainer has; here they are printed.
"""
import argparse
import math

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deba.integrations.lightning import DebaCallback
from deba.policy import make_deba


class SyntheticData(pl.LightningDataModule):
    def __init__(self, samples: int):
        super().__init__()
        self.batch_size = 32  # read by train_dataloader(); DebaCallback overwrites it
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 32, generator=generator)
        logits = x @ torch.randn(32, 10, generator=generator) + 0.5 * torch.randn(samples, 10, generator=generator)
        self.train_set = TensorDataset(x, logits.argmax(dim=1))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


class Classifier(pl.LightningModule):
    def __init__(self, planned_steps: int, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
        self.planned_steps, self.base_lr = planned_steps, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.base_lr, momentum=0.9)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.planned_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4096, help="training set size")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    # A model outside the paper's Table 1 needs explicit thresholds (calibrate them with `deba profile`).
    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6, window=5, b_min=16, b_max=512,
                       epochs=args.epochs)
    deba = DebaCallback(policy)  # goes into Lightning checkpoints with the rest of the training state
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[deba], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    steps_at_start = args.epochs * math.ceil(args.samples / 32)  # the plan at the starting batch size
    trainer.fit(Classifier(steps_at_start), datamodule=SyntheticData(args.samples))
    for record in deba.records:
        print(f"epoch {record.epoch:3d}  batch {record.batch_size:4d} -> {record.next_batch_size:4d}  "
              f"loss {record.loss:.4f}  samples_seen {record.extra['samples_seen']:7d}  "
              f"{record.decision:8s} ({record.reason})")


if __name__ == "__main__":
    main()
