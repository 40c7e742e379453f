"""How noisy is nanoGPT's validation estimate? For a trained run, draw `--estimates` independent estimates the
way nanoGPT's estimate_loss does (eval_iters batches of 12 windows at uniform random offsets of the validation
split, block 64) and compare their spread with the loss over the whole split (what deba reports).

    PYTHONPATH=src python scripts/lm_eval_noise.py RUN_DIR [--eval-iters 20] [--estimates 200]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--estimates", type=int, default=200)
    p.add_argument("--batch", type=int, default=12)
    args = p.parse_args()
    from deba.data.text import load_text
    from deba.training.sample import load_run_model

    model, vocab, config = load_run_model(args.run)
    val = load_text(config.data, config.block_size).val.long()
    block = config.block_size
    g = torch.Generator().manual_seed(0)
    model.eval()
    ests = []
    with torch.no_grad():
        for _ in range(args.estimates):
            losses = []
            for _ in range(args.eval_iters):
                ix = torch.randint(val.numel() - block, (args.batch,), generator=g)
                x = torch.stack([val[i:i + block] for i in ix])
                y = torch.stack([val[i + 1:i + 1 + block] for i in ix])
                logits = model(x)
                losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
            ests.append(sum(losses) / len(losses))
    summary = json.load(open(f"{args.run}/summary.json"))
    out = {"run": args.run, "whole_split_val_loss": summary["final_val_loss"], "eval_iters": args.eval_iters,
           "estimates": args.estimates, "mean": statistics.mean(ests), "sd": statistics.stdev(ests),
           "min": min(ests), "max": max(ests), "share_at_most_1.88": sum(e <= 1.88 for e in ests) / len(ests),
           "share_at_most_1.90": sum(e <= 1.90 for e in ests) / len(ests)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
