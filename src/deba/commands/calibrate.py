"""`deba calibrate LOG.jsonl [...]`: thresholds, stability score and stability class from fixed-batch logs
(paper sections 3.6 and 5), optionally written as a thresholds file for `deba train --thresholds`."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import DebaError
from ..policy import PRESETS, TABLE1_THRESHOLDS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="thresholds and stability class from fixed-batch per-epoch logs",
        description="Recompute dnorm, dloss and conf from each log's grad_var, grad_norm and loss (a logged conf is "
                    "ignored), then report theta_stab (75th percentile of dnorm) and theta_conf (median of conf), "
                    "pooled over all logs, the stability score S per log, mu_S and sigma_S across logs (one log per "
                    "seed), the stability class of the paper's Table 2 and what it predicts for DEBA.")
    p.add_argument("logs", nargs="+", metavar="LOG.jsonl", help="per-epoch logs (epochs.jsonl of fixed-batch runs)")
    p.add_argument("--conf", choices=("ratio", "bounded"), default="ratio",
                   help="confidence reading: ratio (eq. 4, the default) or bounded (grad_var / (grad_var + median))")
    p.add_argument("--window", type=int, default=15, metavar="N", help="window of grad_var values for conf (default 15)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the readable report")
    p.add_argument("--arch", metavar="ARCH",
                   help="architecture: show the paper's Table 1 and Table 2 values beside ours (known: "
                        f"{', '.join(sorted(TABLE1_THRESHOLDS))}) and record it in the thresholds file")
    p.add_argument("--write-thresholds", metavar="FILE",
                   help="write a thresholds file for `deba train --thresholds FILE`")
    return p


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def format_report(report: dict) -> str:
    """The readable report of `deba calibrate` (also usable by other commands)."""
    L = [f"calibration from {report['n_logs']} log(s): {report['conf_mode']} conf, window {report['window']}"]
    names = report.get("logs") or [f"log {i + 1}" for i in range(report["n_logs"])]
    width = max(len(n) for n in names)
    agg = report.get("decision_aggressiveness")
    conv = report.get("convergence_stability")
    for i, name in enumerate(names):
        line = (f"  {name:<{width}}  {report['n_epochs'][i]:4d} epochs ({report['n_non_finite'][i]} non-finite)  "
                f"S {report['stability_scores'][i]:.3f}")
        if agg is not None:
            line += f"  aggressiveness {_fmt(agg[i], 3)}  convergence stability {_fmt(conv[i], 3)}"
        L.append(line)
    n_sig = sum(report["n_signal_epochs"])
    L.append(f"thresholds (pooled over {n_sig} epochs with dnorm, dloss and conf):")
    L.append(f"  theta_stab {_fmt(report['theta_stab'])}   (75th percentile of dnorm)")
    L.append(f"  theta_conf {_fmt(report['theta_conf'])}   (median of {report['conf_mode']} conf)")
    L.append(f"stability: mu_S {report['mu_S']:.3f}  sigma_S {report['sigma_S']:.3f}  -> {report['taxonomy']}")
    if report["n_logs"] == 1:
        L.append("  (one log: sigma_S is 0; give one log per seed to measure seed sensitivity)")
    if agg is not None:
        L.append(f"decisions: mean aggressiveness {_fmt(report['decision_aggressiveness_mean'], 3)}, "
                 f"mean convergence stability {_fmt(report['convergence_stability_mean'], 3)}")
    L.append(f"prediction: {report['prediction']}")
    L.append(f"  {report['prediction_text']}")
    paper = report.get("paper")
    if paper:
        arch = paper["arch"]
        t1, t2 = paper["table1"], paper["table2"]
        L.append(f"paper values for {arch}:")
        if t1:
            L.append(f"  Table 1: theta_stab {t1['theta_stab']:g}  theta_conf {t1['theta_conf']:g}   "
                     f"(ours: {_fmt(report['theta_stab'])}  {_fmt(report['theta_conf'])})")
        else:
            L.append("  Table 1: no thresholds for this architecture")
        if t2:
            L.append(f"  Table 2: mu_S {t2['mu_S']:.3f}  sigma_S {t2['sigma_S']:.3f}  {t2['class']}, "
                     f"DEBA accuracy change {t2['delta_acc']:+.1f} points   "
                     f"(ours: {report['mu_S']:.3f}  {report['sigma_S']:.3f}  {report['taxonomy']})")
        else:
            L.append("  Table 2: no profile for this architecture")
    return "\n".join(L)


def next_command(args: argparse.Namespace) -> str:
    """The `deba train` command that uses the thresholds just written, as it must be typed: the preset that
    reads conf the way they were calibrated (ratio: paper; bounded: paper-bounded), else train refuses them."""
    preset = next(name for name, p in PRESETS.items() if p["conf_mode"] == args.conf)
    words = ["deba", "train", "--policy", "deba", "--preset", preset, "--thresholds", args.write_thresholds]
    if args.arch:
        words += ["--arch", args.arch]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from ..calibration import calibrate, paper_values, write_thresholds_file
    from ..policy.base import MAX_WINDOW
    from ..logio import check_output_file, dumps, read_signal_log, same_file

    if not 1 <= args.window <= MAX_WINDOW:
        raise DebaError(f"--window must be in [1, {MAX_WINDOW}], got {args.window}")
    if args.write_thresholds:
        clash = [path for path in args.logs if same_file(path, args.write_thresholds)]
        if clash:
            raise DebaError(f"--write-thresholds {args.write_thresholds} is an input log: writing there would "
                            "overwrite it")
        check_output_file(args.write_thresholds, "thresholds file")
    logs = [read_signal_log(path) for path in args.logs]
    report = calibrate(logs, window=args.window, conf_mode=args.conf, names=list(args.logs))
    if args.arch:
        report["arch"] = paper_values(args.arch)["arch"]
        report["paper"] = paper_values(args.arch)
    if args.write_thresholds:
        write_thresholds_file(args.write_thresholds, report, arch=args.arch)
    if args.json:
        print(dumps(report, indent=2))
    else:
        print(format_report(report))
    if args.write_thresholds:
        # stdout stays one JSON object with --json, so the note goes to stderr there
        print(f"thresholds written to {args.write_thresholds} (use: {next_command(args)})",
              file=sys.stderr if args.json else sys.stdout)
    return 0


__all__ = ["add_parser", "format_report", "run"]
