"""`deba report DIR|ARCHIVE ...`: the paper's tables and figures, recomputed from run logs."""

from __future__ import annotations

import argparse

from ..errors import DebaError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="tables (markdown, CSV) and figures (PNG) from run logs, beside the paper's numbers",
        description="Read study folders and/or `deba study --pack` archives (several merge) and write report.md, "
        "CSVs and PNGs: the analogues of the paper's Tables 1-4 and Figures 1-3, and every run's "
        "batch-size trajectory. ± is the sample std over seeds (ddof=1); speedups are paired per seed.",
    )
    p.add_argument("inputs", nargs="+", metavar="DIR|ARCHIVE", help="study folders or .tar.gz packs")
    p.add_argument("--out", help="output folder (default: DIR/report, or ARCHIVE-report beside an archive)")
    p.add_argument(
        "--bench",
        metavar="FILE.json",
        help="`deba bench` output (records arch, batch_size, mode, epoch_s): adds modelled solo times "
        "and the speedups on them",
    )
    p.add_argument(
        "--bench-mode",
        metavar="MODE",
        help="which bench mode to model runs with, when the bench has several (e.g. eager, graph)",
    )
    p.add_argument(
        "--baseline", metavar="ARM", help="the fixed-batch arm to compare against (default: 'fixed')"
    )
    p.add_argument(
        "--reference",
        metavar="ARM",
        help="the arm every arm is also compared with, paired per seed (default: fixed-cosine, fixed B=64 "
        "with a cosine lr decay)",
    )
    p.add_argument("--window", type=int, default=15, help="confidence window for Tables 1-2 (default 15)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    return p


def run(args: argparse.Namespace) -> int:
    from ..report import build_report
    from ..policy.base import MAX_WINDOW

    if not 1 <= args.window <= MAX_WINDOW:
        raise DebaError(f"--window must be in [1, {MAX_WINDOW}], got {args.window}")
    if args.bench_mode and not args.bench:
        raise DebaError("--bench-mode picks a mode of the --bench file: give --bench FILE.json too")
    result = build_report(
        args.inputs,
        args.out,
        bench=args.bench,
        bench_mode=args.bench_mode,
        baseline=args.baseline,
        window=args.window,
        figures=not args.no_figures,
        reference=args.reference,
    )
    t4 = result["table4"]
    print(
        f"{len(result['runs'])} runs, {len(t4)} (dataset, arch, arm) groups; report in {result['out']}/report.md"
    )
    for note in result["notes"]:
        print(f"note: {note}")
    return 0


__all__ = ["add_parser", "run"]
