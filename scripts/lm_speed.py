"""Issue 13 speed benchmark: tokens per second of deba's training loop against a minimal hand-written
PyTorch loop, training the same GPT on the same batches, side by side in one process, interleaved.

Each round builds a fresh model from the same seed twice: once trained by `deba.training.train` (the code
behind `deba train`: TextLoader windows, the step with AdamW and clipping, signals, schedule, records; its
training time as the summary reports it, evaluation and checkpoints excluded), once by the loop below
(forward, cross-entropy, backward, clip_grad_norm_, torch.optim.AdamW with the same groups, the same lr
schedule, on the batches deba's TextLoader gives for the same epoch). The order alternates per round;
the ratio is deba tokens/s / hand tokens/s per round, reported as the median with all rounds.

    PYTHONPATH=src python scripts/lm_speed.py --rounds 7 --steps 100 [--device cpu] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch


def recipe(args):
    from deba.training.config import TrainConfig

    return TrainConfig(arch="gpt", dataset="shakespeare-char", data=args.data, block_size=64, n_layer=4, n_head=4,
                       n_embd=128, dropout=0.0, policy="fixed", start_batch=12, epochs=1,
                       max_samples=12 * args.steps, optimizer="adamw", lr=1e-3, lr_schedule="cosine", min_lr=1e-4,
                       warmup_samples=1200, beta2=0.99, weight_decay=0.1, grad_clip=1.0, seed=args.seed,
                       device=args.device, quiet=True, checkpoint_every=0, graphs="off")


def run_deba(args) -> float:
    from deba.training.trainer import Trainer

    trainer = Trainer(recipe(args))
    trainer.lm.evaluate = lambda model, amp="none": float("nan")  # evaluation is not training time
    s = trainer.fit()
    return s["samples_seen"] * 64 / s["train_time_s"]


def run_hand(args) -> float:
    from deba.data.text import TextLoader, load_text, shakespeare_path
    from deba.gpt import build_gpt
    from deba.training.optim import decay_groups
    from deba.training.schedule import learning_rate

    c = recipe(args)
    torch.manual_seed(c.seed)
    data = load_text(shakespeare_path(c.data), 64)
    dev = torch.device(args.device)
    model = build_gpt(data.vocab.size, 64, 4, 4, 128, 0.0).to(dev)
    opt = torch.optim.AdamW(decay_groups(list(model.parameters()), 0.1), lr=1e-3, betas=(0.9, 0.99))
    loader = TextLoader(data.train, 64, 12, dev, seed=c.seed)
    loader.set_epoch(1)
    batches = loader.batches()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    seen = 0
    for _ in range(args.steps):
        x, y = next(batches)
        lr = learning_rate(1e-3, schedule="cosine", scaling="none", batch_size=12, reference_batch=12,
                           samples_seen=seen, total_samples=c.max_samples, warmup_samples=1200, min_lr=1e-4)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += 12
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen * 64 / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    run_deba(args), run_hand(args)  # burn-in: imports, allocator, first-call costs
    rounds = []
    for r in range(args.rounds):
        order = ("deba", "hand") if r % 2 == 0 else ("hand", "deba")
        res = {name: (run_deba if name == "deba" else run_hand)(args) for name in order}
        res["ratio"] = res["deba"] / res["hand"]
        rounds.append(res)
        print(f"round {r + 1}: deba {res['deba']:.0f} tok/s, hand {res['hand']:.0f} tok/s, ratio {res['ratio']:.3f}",
              flush=True)
    ratios = [x["ratio"] for x in rounds]
    out = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
           "rounds": rounds, "steps_per_round": args.steps, "device": args.device,
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} thread(s)"}
    print(f"median ratio {out['median_ratio']:.3f} (min {out['min_ratio']:.3f}, max {out['max_ratio']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    assert not math.isnan(out["median_ratio"])


if __name__ == "__main__":
    main()
