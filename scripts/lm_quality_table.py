"""Issue 13 quality table: deba's runs of nanoGPT's small CPU recipe beside nanoGPT's own loop (scripts/lm_reference.py).

Reads the deba run folders (their ``summary.json``: ``final_val_loss`` over the whole validation split) and the
reference result files (``lm_reference.py --out``; with ``--eval-interval`` the estimate is the one nanoGPT
prints at the last step, else a fresh 20-batch estimate), and prints a markdown table per seed, each side's mean,
standard deviation and 95% t-interval, and Welch's 95% interval for the difference of the means (deba minus
reference). Nothing is hard-coded: rerun it on the folders to regenerate the tables of docs/results/lm/README.md.

    PYTHONPATH=src python scripts/lm_quality_table.py --deba docs/results/lm/quality/seed* \
        --reference docs/results/lm/reference/current/seed*.json [--reference-label "nanoGPT loop"]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from deba.verdict import mean_ci, t975


def interval(xs: list[float]) -> tuple[float, float, float, float]:
    """mean, sd, and the 95% t-interval of the mean."""
    m, lo, hi = mean_ci(xs)
    return m, statistics.stdev(xs) if len(xs) > 1 else math.nan, lo, hi


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch 95% interval."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d = statistics.fmean(a) - statistics.fmean(b)
    h = t975(int(df)) * math.sqrt(va + vb)  # df rounded down: the interval errs wide
    return d, d - h, d + h


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deba", nargs="+", required=True, help="deba run folders (summary.json in each)")
    p.add_argument("--reference", nargs="+", required=True, help="lm_reference.py result files")
    p.add_argument("--reference-label", default="nanoGPT loop")
    a = p.parse_args()
    deba = {}
    for d in a.deba:
        s = json.loads((Path(d) / "summary.json").read_text())
        deba[int(s["seed"])] = float(s["final_val_loss"])
    ref, est = {}, {}
    for f in a.reference:
        r = json.loads(Path(f).read_text())
        ref[int(r["seed"])] = float(r["val_loss_whole_split"])
        evals = r.get("evals") or []
        # run with --eval-interval: the estimate nanoGPT itself prints at the last step; else a fresh one
        printed = evals and evals[-1]["iter"] == r["steps"]
        est[int(r["seed"])] = float(evals[-1]["val"] if printed else r["val_loss_nanogpt_estimate"])
    label = a.reference_label
    print(f"| seed | deba train, whole split | {label}, whole split | {label}, nanoGPT's 20-batch estimate at step "
          f"{r['steps']} |")
    print("| --- | --- | --- | --- |")
    for seed in sorted(set(deba) | set(ref), key=lambda s: (s != 1337, s)):
        cells = [f"{x[seed]:.4f}" if seed in x else "" for x in (deba, ref, est)]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print()
    for name, xs in (("deba train", deba), (f"{label} (whole split)", ref), (f"{label} (nanoGPT's estimate)", est)):
        v = list(xs.values())
        m, sd, lo, hi = interval(v)
        at_most = sum(x <= 1.90 for x in v)
        print(f"- {name}: {len(v)} seeds, mean **{m:.4f}** (sd {sd:.4f}, 95% interval {lo:.4f} to {hi:.4f}); "
              f"{at_most} of {len(v)} at most 1.90")
    d, lo, hi = welch(list(deba.values()), list(ref.values()))
    print(f"- deba minus {label} (whole split, Welch): **{d:+.4f}** (95% interval {lo:+.4f} to {hi:+.4f})")


if __name__ == "__main__":
    main()
