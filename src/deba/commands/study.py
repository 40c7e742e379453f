"""`deba study SPEC.yaml --out DIR`: run a grid of training runs (resumable, shardable, packable)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import DebaError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "study",
        help="run a grid of training runs (resumable, shardable) and pack their logs",
        description="Expand a study spec (archs x datasets x seeds x arms x epochs) into runs, each its own "
        "`deba train` process, --parallel at once. Finished runs are never redone; interrupted ones "
        "resume from their checkpoint. An arm may take values from other arms' finished runs "
        "(start_batch: {max_batch_of: ARM}, thresholds: {calibrate_from: ARM}); such runs start after "
        "those. Exit code: 0 all done, 1 a run failed (or could not start because a run it needs "
        "failed), 3 time limit reached with runs left (run the same command again to continue), 4 runs "
        "left waiting for runs of another shard or process (run again once those are done), 2 bad input.",
    )
    p.add_argument("spec", help="study spec (YAML), e.g. studies/quick.yaml")
    p.add_argument(
        "--out", required=True, help="study folder: one sub-folder per run, dataset/arch/arm/seedN"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="runs at once on this machine; their times are labelled shared (concurrent_runs=N)",
    )
    p.add_argument(
        "--shard", metavar="i/n", help="only run k of the sorted grid with k %% n == i (0 <= i < n)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs of this shard and their status; run nothing"
    )
    p.add_argument(
        "--pack",
        metavar="FILE.tar.gz",
        help="afterwards, write every run's config/epochs/summary/run.log (no checkpoints) and the spec "
        "into one archive, for `deba report`",
    )
    p.add_argument("--pack-only", action="store_true", help="with --pack: pack what is there, run nothing")
    p.add_argument(
        "--restore",
        metavar="FILE.tar.gz",
        action="append",
        default=[],
        help="first put the finished runs of an earlier --pack archive back under --out, so they are "
        "not redone (repeatable)",
    )
    p.add_argument(
        "--data",
        metavar="DATASET=PATH",
        action="append",
        default=[],
        help="where a dataset's files are, overriding the spec's `data` (repeatable)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="start no run after this many seconds and stop running ones at it (they resume next time)",
    )
    p.add_argument(
        "--train-command",
        metavar="CMD",
        help="command that trains one run (default: this Python's `-m deba train`)",
    )
    return p


def _data_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DebaError(f"--data must look like DATASET=PATH, got {item!r}")
        out[name] = path
    return out


def run(args: argparse.Namespace) -> int:
    from .. import study

    spec = study.load_spec(args.spec, _data_overrides(args.data))
    shard = study.parse_shard(args.shard)
    if args.pack_only and not args.pack:
        raise DebaError("--pack-only needs --pack FILE")
    if args.time_limit is not None and not args.time_limit > 0:  # NaN too
        raise DebaError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DebaError(f"--out {args.out} is an existing file, not a folder")
    if args.pack:
        from ..logio import check_output_file

        check_output_file(args.pack, "--pack archive")
    try:
        command = shlex.split(args.train_command) if args.train_command else None
    except ValueError as e:  # an unclosed quote
        raise DebaError(f"--train-command {args.train_command!r}: {e}") from None
    if args.restore and not args.dry_run:
        n = study.restore_archives(args.restore, args.out)
        print(f"restored {n} finished run(s) from {len(args.restore)} archive(s)")
    if args.dry_run:
        rows = study.plan_table(spec, args.out, shard)
        width = max(len(p.run_id) for p, _, _ in rows)
        for p, status, detail in rows:
            print(f"{p.run_id:<{width}}  {status:10s} {detail}".rstrip())
        counts: dict[str, int] = {}
        for _, status, _ in rows:
            counts[status] = counts.get(status, 0) + 1
        print(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        return 0
    code = 0
    if not args.pack_only:
        result = study.run_study(
            spec,
            args.out,
            parallel=args.parallel,
            shard=shard,
            train_command=command,
            time_limit_s=args.time_limit,
        )
        counts = {}
        for o in result.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        print(f"study {spec.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for o in result.outcomes:
            if o.status == "failed":
                print(f"  FAILED {o.run_id}: {o.detail} (log: {args.out}/{o.run_id}/run.log)")
            elif o.status in ("waiting", "blocked"):
                print(f"  {o.status.upper()} {o.run_id}: {o.detail}")
        code = result.exit_code
    if args.pack:
        n = study.pack_study(spec, args.out, args.pack)
        print(f"packed {n} run(s) into {args.pack}")
    return code


__all__ = ["add_parser", "run"]
