"""`deba bench`: per-step and per-epoch training time by architecture, batch size and step kind."""
from __future__ import annotations

import argparse
import sys

from ..errors import DebaError
from ..models import MODEL_NAMES


def _split(values: list[str] | None) -> list[str] | None:
    """Accept `--arch a b`, `--arch a,b` and repeated flags alike."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if not out:
        raise DebaError("empty list")
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="time the training step (eager and CUDA graph) per architecture and batch size",
        description="Time one SGD training step on random data already on the device, per architecture, batch "
        "size and mode (eager, graph), and model the epoch as step time x (50000 // B). Also measures DEBA's "
        "overhead (signal accumulation every step plus the end-of-epoch read) as % of the epoch (below zero: timing noise). Defaults on "
        "CUDA: the paper's six models at B 64..2048, eager and graph; on the CPU: tiny_cnn and resnet18 at B 8, "
        "16, eager only.",
    )
    p.add_argument("--arch", nargs="+", metavar="ARCH", help="architectures, space or comma separated: "
                   f"{', '.join(MODEL_NAMES)}, or package.module:function")
    p.add_argument("--batch-sizes", nargs="+", metavar="B", help="batch sizes, space or comma separated")
    p.add_argument("--device", default="auto", help="one of: auto (CUDA when available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--modes", nargs="+", metavar="MODE", help="one or more of: eager, graph (graph needs CUDA; skipped elsewhere)")
    p.add_argument("--steps", type=int, metavar="N", help="timed steps per measurement (default 50 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed steps first (default 10 on CUDA, 2 on CPU)")
    p.add_argument("--amp", default="none", choices=["none", "bf16"],
                   help="one of: none, bf16 (autocast around forward and loss; default: none)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last memory format")
    p.add_argument("--epoch-samples", type=int, default=50_000, metavar="N",
                   help="images per epoch for the modelled epoch time (default: CIFAR's 50000)")
    p.add_argument("--no-overhead", action="store_true", help="skip the signals-overhead measurement")
    p.add_argument("--out", metavar="FILE.json", help="write the records as JSON")
    p.add_argument("--markdown", metavar="FILE.md", help="write the tables as markdown")
    p.add_argument("--plot", metavar="FILE.png", help="plot epoch time against batch size (the paper's Figure 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--check", action="store_true",
                   help="instead of timing: run the same SGD steps with the eager and the CUDA-graph step from "
                   "identical models (per arch, signals modes last and epoch-avg; --steps per batch size, default "
                   "3; --batch-sizes default 64 256, then the first again) and compare loss, signals, parameters "
                   "and BatchNorm statistics with dropout off; exit code 1 when a difference exceeds --check-rtol. "
                   "Then, for models with dropout, with dropout on: the graph's masks must change at every replay "
                   "and its run must track the eager run as closely as other eager runs do. Needs CUDA")
    p.add_argument("--check-rtol", type=float, default=None, metavar="R",
                   help="largest relative difference --check accepts (default 1e-3)")
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before measuring, not after."""
    from ..logio import check_output_file

    for flag, path in (("--out", args.out), ("--markdown", args.markdown), ("--plot", getattr(args, "plot", None))):
        if path:
            check_output_file(path, flag)


CHECK_ARCHS = ("resnet18", "mobilenet_v3_large", "densenet121")


def _run_check(args: argparse.Namespace) -> int:
    from .. import bench, graph_check

    if args.modes or args.plot:
        raise DebaError("--check compares eager with graph itself: it takes no --modes or --plot")
    device = bench.resolve_device(args.device)
    _check_outputs(args)
    if device.type != "cuda":
        raise DebaError(f"--check compares the CUDA-graph step with the eager step: it needs a CUDA device, "
                        f"this is {device.type}")
    rtol = graph_check.CHECK_RTOL if args.check_rtol is None else args.check_rtol
    if not rtol > 0:
        raise DebaError(f"--check-rtol must be > 0, got {args.check_rtol}")
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    result = graph_check.check_graph_numerics(
        _split(args.arch) or CHECK_ARCHS, device=device,
        batch_sizes=_split(args.batch_sizes) or graph_check.CHECK_BATCH_SIZES, steps=args.steps or graph_check.CHECK_STEPS, amp=args.amp, channels_last=args.channels_last, rtol=rtol,
        progress=progress)
    text = graph_check.check_markdown(result)
    if args.out:
        bench.write_json(args.out, result)
    if args.markdown:
        bench.atomic_write_text(args.markdown, text)
    print(text, end="")
    return 0 if result["ok"] else 1


def run(args: argparse.Namespace) -> int:
    from .. import bench

    if args.check:
        return _run_check(args)
    if args.check_rtol is not None:
        raise DebaError("--check-rtol goes with --check")
    _check_outputs(args)
    settings = bench.make_settings(
        archs=_split(args.arch), batch_sizes=_split(args.batch_sizes), device=args.device, modes=_split(args.modes),
        steps=args.steps, warmup=args.warmup, amp=args.amp, channels_last=args.channels_last,
        epoch_samples=args.epoch_samples, overhead=not args.no_overhead,
    )
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    for note in settings.notes:
        if progress:
            progress(note)
    result = bench.run_bench(settings, progress=progress)
    bench.write_outputs(result, out=args.out, markdown_path=args.markdown, plot_path=args.plot)
    print(bench.markdown(result), end="")
    return 0
