"""`deba replay LOG.jsonl --arch ARCH [policy options] [--out DECISIONS.jsonl]`: run the DEBA policy over a
recorded per-epoch log and show (or write) the decision it makes at every epoch.

The log needs `epoch`, `grad_var`, `grad_norm` and `loss` per line; any batch size or decision already in it
is ignored, and the batch size is simulated afresh from the start batch. This is how one asks "what would
DEBA with these thresholds have done on that run?" without training again (the signals of a fixed-batch
run do not depend on the policy)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from ..errors import DebaError
from ..logio import read_signal_log, same_file, write_jsonl
from ..policy import TABLE1_THRESHOLDS, BatchSizePolicy, DecisionRecord, EpochSignals
from ._policy_args import add_policy_options, describe_policy, policy_from_args


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "replay",
        help="run the batch-size policy over a recorded per-epoch log",
        description="Feed each epoch's grad_var, grad_norm and loss from LOG.jsonl to the DEBA policy and report "
        "the decision and the batch size it gives at every epoch (the log's own batch sizes and "
        "decisions are ignored). Without --out, print a table and a summary.",
    )
    p.add_argument(
        "log",
        metavar="LOG.jsonl",
        help="per-epoch log, one JSON object per line with at least epoch, grad_var, grad_norm and loss",
    )
    p.add_argument(
        "--arch",
        metavar="ARCH",
        help="architecture for the paper's Table 1 thresholds, one of: "
        f"{', '.join(sorted(TABLE1_THRESHOLDS))}, mobilenet_v3 (not needed when --theta-stab and "
        "--theta-conf are both given)",
    )
    p.add_argument("--out", metavar="DECISIONS.jsonl", help="write one decision record per epoch as JSONL")
    add_policy_options(p)
    return p


def replay_rows(rows: Iterable[dict], policy: BatchSizePolicy) -> list[DecisionRecord]:
    """Step ``policy`` through the log rows in order; policy errors become DebaError."""
    records = []
    for row in rows:
        signals = EpochSignals(
            epoch=row["epoch"], grad_var=row["grad_var"], grad_norm=row["grad_norm"], loss=row["loss"]
        )
        try:
            records.append(policy.step(signals))
        except ValueError as e:
            raise DebaError(str(e)) from None
    return records


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(records: Sequence[DecisionRecord]) -> str:
    head = f"{'epoch':>5}  {'batch':>5}  {'conf':>9}  {'dnorm':>9}  {'dloss':>9}  {'decision':<8}  {'next':>5}  reason"
    lines = [head]
    for r in records:
        lines.append(
            f"{r.epoch:>5}  {r.batch_size:>5}  {_num(r.conf):>9}  {_num(r.dnorm):>9}  {_num(r.dloss):>9}  "
            f"{r.decision:<8}  {r.next_batch_size:>5}  {r.reason}"
        )
    return "\n".join(lines)


def summary_line(records: Sequence[DecisionRecord], policy: BatchSizePolicy) -> str:
    c = policy.counts
    return (
        f"{len(records)} epochs: {c['increase']} increases, {c['rollback']} rollbacks, {c['hold']} holds "
        f"({c['non_finite']} non-finite); final batch size {policy.batch_size}"
    )


def run(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    if args.out and same_file(args.out, args.log):
        raise DebaError(f"--out {args.out} is the input log: writing decisions there would overwrite it")
    rows = read_signal_log(args.log)
    records = replay_rows(rows, policy)
    if args.out:
        write_jsonl(args.out, [r.to_dict() for r in records])  # an unwritable path is a one-line DebaError
        print(f"{summary_line(records, policy)}; decisions written to {args.out}")
    else:
        print(describe_policy(policy))
        print(format_table(records))
        print(summary_line(records, policy))
    return 0
