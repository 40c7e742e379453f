"""The `deba` command: thin. Each subcommand lives in deba.commands.<name> with
`add_parser(subparsers)` and `run(args) -> int`; this file only dispatches and turns
DebaError into one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DebaError, on_cli

COMMANDS = ["demo", "train", "sample", "replay", "calibrate", "profile", "bench", "study", "report"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deba", description="Adaptive batch-size training for PyTorch (DEBA).")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"deba {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"deba.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"deba.commands.{name}":
                continue  # command not built yet
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    _leave_distributed_run(code)
    return code


def _leave_distributed_run(code: int) -> None:
    """Under torchrun, end the process here instead of in interpreter teardown.

    DistributedDataParallel keeps the gloo process group and its threads alive past
    destroy_process_group, and tearing them down during interpreter finalization can abort the
    process (SIGABRT, "terminate called without an active exception") after a run that completed:
    torchrun then reports a failure. Every file is written and closed by now; flush the streams and
    exit with the command's own code. Only where deba started a process group (never in-process).
    """
    if "deba.training.trainer" not in sys.modules:
        return
    from .training.trainer import process_group_started

    if not process_group_started():
        return
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    try:
        with on_cli():
            return int(args._run(args) or 0)
    except DebaError as e:
        print(f"deba {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a file that cannot be read or written, met where no earlier check caught it
        where = f"{e.filename}: " if e.filename else ""
        print(f"deba {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deba {args.command}: interrupted", file=sys.stderr)
        return 130
