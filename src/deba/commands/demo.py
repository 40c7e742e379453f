"""`deba demo`: the whole idea in under two minutes on a CPU.

1. a fixed-batch run of a tiny CNN on generated data (the profiling run),
2. the calibration report of that run (paper sections 3.6 and 5: thresholds, stability score, class),
3. a DEBA run (paper-bounded) with the calibrated theta_stab, resnet18's theta_conf and a cooldown
   suited to a few epochs,
then a side-by-side table and a PNG of batch size and accuracy per epoch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO = dict(arch="tiny_cnn", dataset="synthetic", epochs=10, start_batch=32, lr=0.02, eval_every=1, device="cpu",
            graphs="off", quiet=True, checkpoint_every=0)
DEMO_DEBA = dict(policy="deba", preset="paper-bounded", cooldown=1, window=5, b_min=16, b_max=512)
# theta_conf: resnet18's Table 1 value. With the bounded reading conf sits near 0.5 in steady state; the
# calibrated median (step 2) is ~0.5 by construction, which would roll back about every other decision.
DEMO_THETA_CONF = 0.6


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="fixed vs DEBA on generated data, CPU, under two minutes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="deba-demo", help="output folder (default: deba-demo)")
    p.add_argument("--epochs", type=int, default=DEMO["epochs"], help=f"epochs per run (default {DEMO['epochs']})")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    p.add_argument("--device", default="cpu", help="one of: cpu, cuda, cuda:N, auto (default: cpu)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..calibration import calibrate
    from ..data import load_dataset
    from ..logio import read_signal_log
    from ..runfolder import CONFIG_FILE, EPOCHS_FILE, SUMMARY_FILE
    from ..training.config import TrainConfig
    from ..training.trainer import train

    from ..calibration import MIN_USABLE_EPOCHS
    from ..errors import DebaError

    if args.epochs < MIN_USABLE_EPOCHS:  # step 2 calibrates from the fixed run: refuse before training it
        raise DebaError(f"--epochs must be at least {MIN_USABLE_EPOCHS} (the calibration step needs them), "
                        f"got {args.epochs}")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out = Path(args.out)
    data = load_dataset("synthetic")
    base = dict(DEMO, epochs=args.epochs, seed=args.seed, device=args.device)
    print(f"deba demo: tiny CNN on generated 10-class images ({data.train_x.shape[0]} train / "
          f"{data.test_x.shape[0]} test), {args.epochs} epochs per run, device {args.device}")

    print(f"1/3 fixed batch size {DEMO['start_batch']} (profiling run) ...", flush=True)
    fixed = train(TrainConfig(**base, policy="fixed", out=str(out / "fixed")), dataset=data,
                  callbacks=[_Progress(args.epochs)])
    log = read_signal_log(out / "fixed" / EPOCHS_FILE)
    cal = calibrate([log], window=DEMO_DEBA["window"], conf_mode="bounded")
    print(f"2/3 calibrated from it: theta_stab {cal['theta_stab']:.3g}, theta_conf {cal['theta_conf']:.3g} "
          f"(stability S {cal['stability_scores'][0]:.3f}: {cal['taxonomy']}, prediction: {cal['prediction']})")
    print(f"3/3 DEBA (paper-bounded, cooldown {DEMO_DEBA['cooldown']}, window {DEMO_DEBA['window']}) with")
    print(f"    theta_stab {cal['theta_stab']:.3g}: calibrated, the 75th percentile of dnorm in the fixed run "
          "(paper section 3.6)")
    print(f"    theta_conf {DEMO_THETA_CONF}: resnet18's Table 1 value, not the calibrated {cal['theta_conf']:.3g}: "
          "with the bounded conf the calibrated median sits near 0.5 by construction and would roll back "
          "about every other decision", flush=True)
    deba = train(TrainConfig(**base, **DEMO_DEBA, theta_stab=cal["theta_stab"], theta_conf=DEMO_THETA_CONF,
                             out=str(out / "deba")), dataset=data, callbacks=[_Progress(args.epochs)])

    f_recs = read_signal_log(out / "fixed" / EPOCHS_FILE)
    d_recs = read_signal_log(out / "deba" / EPOCHS_FILE)
    print()
    print(f"{'epoch':>5} | {'fixed B':>7} {'acc %':>6} | {'DEBA B':>6} {'acc %':>6}  decision")
    for fr, dr in zip(f_recs, d_recs):
        print(f"{fr['epoch']:>5} | {fr['batch_size']:>7} {fr['test_acc']:>6.1f} | {dr['batch_size']:>6} "
              f"{dr['test_acc']:>6.1f}  {dr['decision']}: {dr['reason']}")
    print()
    for name, s, recs in (("fixed", fixed, f_recs), ("DEBA", deba, d_recs)):
        print(f"{name:>5}: final acc {s['final_test_acc']:.1f}%  best {s['best_test_acc']:.1f}%  "
              f"train time {s['train_time_s']:.1f}s  steps {sum(r['steps'] for r in recs)}  "
              f"batch {trained_sizes(recs)}")
    print("times: CPU time on a machine that may be shared; they are no speed claim (speed comes from GPUs, "
          "where fewer, larger steps pay: docs/findings.md)")
    if not args.no_plot:
        png = out / "demo.png"
        _plot(f_recs, d_recs, png)
        print(f"plot: {png}")
    print(f"logs: {out}/fixed and {out}/deba ({CONFIG_FILE}, {EPOCHS_FILE}, {SUMMARY_FILE})")
    return 0


class _Progress:
    """One line per trained epoch, while the run goes on (the trainer calls on_epoch_end)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, trainer, rec: dict) -> None:
        acc = "-" if rec.get("test_acc") is None else f"{rec['test_acc']:.1f}%"
        loss = "nan" if rec.get("loss") is None else f"{rec['loss']:.3f}"
        print(f"    epoch {rec['epoch']}/{self.epochs}: batch {rec['batch_size']}, loss {loss}, test acc {acc}",
              flush=True)


def trained_sizes(recs: list[dict]) -> str:
    """The batch sizes an epoch was trained at, first to last: a decision after the last epoch chose a size
    nothing trained at, so it is not counted."""
    sizes = [r["batch_size"] for r in recs]
    changes = [b for i, b in enumerate(sizes) if i == 0 or b != sizes[i - 1]]
    return " -> ".join(str(b) for b in changes)


def batch_axis(ax, sizes) -> None:
    """A log2 batch-size axis with ticks at the sizes used, and no others."""
    import matplotlib.ticker

    ticks = sorted(set(sizes))
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(b) for b in ticks]))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(ticks[0] / 1.2, ticks[-1] * 1.2)


def _plot(f_recs, d_recs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for recs, label in ((f_recs, "fixed"), (d_recs, "DEBA")):
        ep = [r["epoch"] for r in recs]
        ax1.step(ep, [r["batch_size"] for r in recs], where="post", label=label)
        ax2.plot(ep, [r["test_acc"] for r in recs], marker="o", label=label)
    ax1.set(xlabel="epoch", ylabel="batch size", title="batch size per epoch")
    batch_axis(ax1, [r["batch_size"] for r in f_recs + d_recs])
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
