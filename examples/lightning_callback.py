"""DEBA as a PyTorch Lightning callback: python examples/lightning_callback.py --epochs 10

Needs Lightning: pip install 'deba[lightning]'. The datamodule exposes `batch_size` and builds its
train loader from it; DebaCallback sets that attribute after each decision and has Lightning rebuild
the loader for the next epoch. The learning rate follows a cosine schedule over samples seen (the
callback counts them), which batch-size changes do not distort. The records are also logged
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
    def __init__(self, deba: DebaCallback, total_samples: int, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
        self.deba, self.total_samples, self.base_lr = deba, total_samples, lr

    def on_train_batch_start(self, batch, batch_idx):
        lr = self.base_lr * 0.5 * (1 + math.cos(math.pi * self.deba.progress(self.total_samples)))
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.base_lr, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4096, help="training set size")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    # A model outside the paper's Table 1 needs explicit thresholds (calibrate them with `deba profile`).
    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6, window=5, cooldown=1,
                       start_batch=32, b_min=16, b_max=512)
    deba = DebaCallback(policy)  # goes into Lightning checkpoints with the rest of the training state
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[deba], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Classifier(deba, total_samples=args.epochs * args.samples), datamodule=SyntheticData(args.samples))
    for record in deba.records:
        print(f"epoch {record.epoch:3d}  batch {record.batch_size:4d} -> {record.next_batch_size:4d}  "
              f"loss {record.loss:.4f}  samples_seen {record.extra['samples_seen']:7d}  "
              f"{record.decision:8s} ({record.reason})")


if __name__ == "__main__":
    main()
