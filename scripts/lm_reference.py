"""Issue 13 reference: nanoGPT's own training loop, written out here, on the recipe of the quality benchmark.

This is the loop of nanoGPT's ``train.py`` (karpathy/nanoGPT) for ``config/train_shakespeare_char.py`` with
the README's CPU overrides, written independently of deba's training code, so that deba's validation loss
can be compared with what the reference recipe itself gives on this machine and this torch:

- data as nanoGPT's ``data/shakespeare_char/prepare.py``: sorted characters of the whole file (65), the first
  90% of characters for training, the rest for validation;
- batches as its ``get_batch``: ``torch.randint(len(data) - block_size, (batch_size,))`` offsets from the
  global torch generator (seeded with ``--seed`` before the model is built, as ``torch.manual_seed(1337)``);
- its optimiser: ``torch.optim.AdamW`` with decay on every >= 2-D parameter, betas (0.9, 0.99), weight
  decay 0.1; its ``get_lr`` (warm-up ``lr * (it + 1) / (warmup + 1)``, cosine to ``min_lr`` at
  ``lr_decay_iters``), set before every step; ``clip_grad_norm_(1.0)``; fp32 on the CPU;
- 2,000 updates, then the evaluation nanoGPT prints at ``step 2000``.

With ``--eval-interval 250`` it also evaluates as nanoGPT does during training (``estimate_loss`` every 250
iterations, its batches drawn from the same global generator), so a seed gives nanoGPT's own sequence of
batches: ``--seed 1337`` then prints nanoGPT's published CPU run, ``step 2000: train loss 1.7648, val loss
1.8857``, the line that runs of nanoGPT's README command on other machines report.

The model is ``deba.gpt.GPT`` (its structure, construction order and initialisation are nanoGPT's ``model.py``
with ``bias=False``, so a seed gives nanoGPT's initial weights; the training loop, data and optimiser here use
nothing of deba). The validation loss is reported two ways: the mean cross-entropy over every token of the
validation split (disjoint windows, as ``deba train`` reports it), and nanoGPT's own estimate (``eval_iters``
random batches of 12 windows, from a generator seeded with the seed).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/lm_reference.py --seed 1337 [--eval-interval 250] --out FILE.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

BLOCK, BATCH = 64, 12


def prepare(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    with open(path, encoding="utf-8") as f:
        data = f.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    return train, val, len(chars)


def get_batch(data: np.ndarray, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - BLOCK, (BATCH,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in ix])
    return x, y


def get_lr(it: int, a) -> float:
    if it < a.warmup_iters:
        return a.lr * (it + 1) / (a.warmup_iters + 1)
    if it > a.max_iters:
        return a.min_lr
    ratio = (it - a.warmup_iters) / (a.max_iters - a.warmup_iters)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


def loss_of(model, x, y) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def whole_split_loss(model, val: np.ndarray) -> float:
    """Mean cross-entropy over every validation token: disjoint windows, the last one shorter."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(val) - 1, BLOCK):
        n = min(BLOCK, len(val) - 1 - i)
        x = torch.from_numpy(val[i:i + n].astype(np.int64))[None]
        y = torch.from_numpy(val[i + 1:i + 1 + n].astype(np.int64))[None]
        logits = model(x)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += n
    model.train()
    return total / count


@torch.no_grad()
def nanogpt_estimate(model, val: np.ndarray, eval_iters: int, generator: torch.Generator) -> float:
    model.eval()
    losses = [loss_of(model, *get_batch(val, generator)).item() for _ in range(eval_iters)]
    model.train()
    return float(np.mean(losses))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/tinyshakespeare.txt")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--eval-interval", type=int, default=0,
                   help="as nanoGPT: estimate the train and val losses every N iterations and at the end, drawing "
                        "the batches from the global generator the training batches come from (its config: 250), so "
                        "that a seed gives nanoGPT's own sequence of batches; 0: no evaluation during training")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from deba.gpt import build_gpt

    train, val, vocab = prepare(a.data)
    torch.manual_seed(a.seed)
    model = build_gpt(vocab, BLOCK, 4, 4, 128, 0.0)
    params = [q for q in model.parameters() if q.requires_grad]
    groups = [{"params": [q for q in params if q.dim() >= 2], "weight_decay": 0.1},
              {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.99))
    t0 = time.perf_counter()
    evals = []
    x, y = get_batch(train)
    for it in range(a.max_iters + 1):
        for g in opt.param_groups:
            g["lr"] = get_lr(it, a)
        if a.eval_interval and it % a.eval_interval == 0:
            with torch.no_grad():  # nanoGPT's estimate_loss: train, then val, from the global generator
                model.eval()
                tr, va = ([loss_of(model, *get_batch(d)).item() for _ in range(a.eval_iters)] for d in (train, val))
                model.train()
            evals.append({"iter": it, "train": float(np.mean(tr)), "val": float(np.mean(va))})
            print(f"step {it}: train loss {evals[-1]['train']:.4f}, val loss {evals[-1]['val']:.4f}", flush=True)
        if it == a.max_iters:
            break
        loss = loss_of(model, x, y)
        x, y = get_batch(train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if it % 200 == 0:
            print(f"iter {it}: loss {loss.item():.4f}", flush=True)
    train_s = time.perf_counter() - t0
    whole = whole_split_loss(model, val)
    estimate = nanogpt_estimate(model, val, a.eval_iters, torch.Generator().manual_seed(a.seed))
    out = {"seed": a.seed, "eval_interval": a.eval_interval, "evals": evals, "steps": a.max_iters, "val_loss_whole_split": whole, "val_loss_nanogpt_estimate": estimate,
           "eval_iters": a.eval_iters, "vocab_size": vocab, "train_tokens": int(len(train)),
           "val_tokens": int(len(val)), "train_time_s": train_s,
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} thread(s)"}
    print(json.dumps(out, indent=2))
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
