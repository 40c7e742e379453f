"""DEBA in a plain PyTorch training loop: python examples/custom_loop.py --epochs 10

A small MLP on a synthetic classification task, on the CPU in a few seconds. DebaController
measures the gradient signals, steps the policy once per epoch and resizes the DataLoader in place;
the loader's own batch size (32) is the start. The cosine schedule is an ordinary torch scheduler,
planned in steps at that size and stepped as usual: given to the controller, it is driven by samples
seen, so it ends where it should whatever batch sizes the policy picks.
"""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deba.integrations import DebaController
from deba.policy import make_deba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4096, help="training set size")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.samples, 32)
    y = (x @ torch.randn(32, 10) + 0.5 * torch.randn(args.samples, 10)).argmax(dim=1)  # noisy linear labels
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))

    # A model outside the paper's Table 1 needs explicit thresholds (calibrate them with `deba profile`);
    # epochs= scales the paper's cooldown (10 of 100 epochs) to this run.
    policy = make_deba("paper-bounded", theta_stab=0.3, theta_conf=0.6, window=5, b_min=16, b_max=512,
                       epochs=args.epochs)
    # resizes `loader` after each decision; sets the scheduler's lr from samples seen before each step
    deba = DebaController(policy, model.parameters(), loader=loader, scheduler=scheduler)

    for epoch in range(args.epochs):
        for xb, yb in loader:  # each epoch iterates at the batch size the policy chose
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            deba.after_backward(loss, samples=len(xb))  # device-side accumulation, no host sync
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
        record = deba.end_epoch(epoch)  # the one host read of the epoch
        print(f"epoch {epoch:3d}  batch {record.batch_size:4d} -> {record.next_batch_size:4d}  "
              f"loss {record.loss:.4f}  samples_seen {record.extra['samples_seen']:7d}  lr {lr:.4f}  "
              f"{record.decision:8s} ({record.reason})")


if __name__ == "__main__":
    main()
