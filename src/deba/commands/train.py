"""`deba train`: one training run. Every TrainConfig key is a flag (underscores become dashes);
a YAML/JSON --config file supplies defaults that explicit flags override."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import DebaError
from ..models import MODEL_NAMES
from ..policy import PRESETS
from ..runfolder import TRAIN_OUTPUTS
from ._policy_args import policy_help
from ..training import config as cfg
from ..training.config import TrainConfig, load_config_file

# the values a closed option accepts, listed in its --help
CHOICES = {
    "lr_schedule": cfg.LR_SCHEDULES, "lr_scaling": cfg.LR_SCALINGS, "graphs": cfg.GRAPH_MODES, "amp": cfg.AMP_MODES,
    "signals_mode": cfg.SIGNAL_MODES, "nonfinite_action": cfg.NONFINITE_ACTIONS,
    "decision_interval_unit": cfg.INTERVAL_UNITS, "var_scaling": ("none", "batch"), "preset": tuple(PRESETS),
    "dataset": ("cifar10", "cifar100", "synthetic", "text", "shakespeare-char"), "device": ("auto", "cpu", "cuda", "cuda:N"),
    "arch": MODEL_NAMES, "vocab": ("char", "byte"), "optimizer": ("auto", "sgd", "adamw"),
}

HELP = {
    "var_scaling": "DEBA: none (the paper) or batch: the confidence sees grad_var x B / start batch, so a change "
                   "of batch size does not by itself push the next decision the same way (ours)",
    "arch": "torchvision architecture, or tiny_cnn / tiny_mlp (small models for tests and CPU runs)",
    "model": "a user's own model constructor, package.module:function (called with num_classes=...)",
    "dataset": "synthetic is generated data; text (a UTF-8 file, --data) and shakespeare-char train a language model",
    "data": "folder holding cifar-10-batches-py / cifar-100-python, or the offline cifar10-jpeg.npz; "
            "a UTF-8 text file for --dataset text / shakespeare-char",
    "block_size": "language models: tokens per training window and the GPT's context",
    "vocab": "language models: char (the file's characters) or byte (256 byte values); saved as vocab.json",
    "n_layer": "GPT: transformer blocks", "n_head": "GPT: attention heads", "n_embd": "GPT: embedding width",
    "dropout": "GPT: dropout probability",
    "optimizer": "auto (adamw for --arch gpt, sgd otherwise), sgd or adamw (weight decay on >= 2-D tensors only)",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2",
    "grad_clip": "clip the gradient's 2-norm to this before the update (any model; signals read it unclipped)",
    "warmup_samples": "linear learning-rate warm-up over this many samples",
    "min_lr": "the cosine schedule decays to this learning rate",
    "max_samples": "stop after this many training samples (sequences for text), mid-epoch if need be; "
                   "the schedule ends there",
    "gns": "measure the gradient noise scale (gns_g2, gns_trace, b_simple in every period record); on for "
           "--policy gns",
    "precise_bn": "before each evaluation, recompute BatchNorm running statistics over N training batches "
                  "(0: off; for BatchNorm models with slow running averages, e.g. mobilenet_v3_large)",
    "gns_every": "noise scale: train every k-th step of a period as two micro-batches to read two gradient sizes",
    "target_factor": "gns: target batch = this x the smoothed noise scale B_noise (default 0.5)",
    "noise_smoothing": "gns: weight of the newest period in the moving averages of |G|^2 and tr(Sigma) "
                       "(1 = none; default 0.5)",
    "preset": "DEBA preset: paper (literal) or paper-bounded",
    "lr_schedule": "learning rate over training progress counted in samples (cosine decays to 0)",
    "signals_mode": "last: the gradient of each epoch's last step (the paper); epoch-avg: averaged over steps",
    "amp": "bf16 autocast around forward and loss",
    "device": "auto is CUDA when available",
    "epochs": "epochs to train; DEBA's cooldown (10, set for 100 epochs) is scaled to c x epochs/100, rounded up, "
              "unless --cooldown is given",
    "thresholds": "thresholds JSON from `deba profile` or `deba calibrate --write-thresholds`",
    "graphs": "capture the training step in CUDA graphs (auto: on for CUDA)",
    "decision_interval": "decide every N steps (or samples) instead of every epoch (window and cooldown count "
                         "periods; a period may straddle epochs)",
    "decision_interval_unit": "what --decision-interval counts: steps or samples (summed over processes)",
    "micro_batch": "reach large batches by gradient accumulation over micro-batches of this size (per process)",
    "accumulate": "on out of memory keep the policy's batch size and halve the micro-batch until a step fits "
                  "(remembered for the run) instead of capping B_max",
    "lr_scaling": "scale the learning rate with (batch size / start batch)^p: none (p=0), sqrt (1/2), linear (1)",
    "nonfinite_action": "on a non-finite epoch: skip (discard the epoch, go on) or stop",
    "dist_timeout": "multi-process runs: seconds a collective waits for a rank that stopped responding before "
                    "the job ends (so torchrun --max-restarts can restart it)",
    "seed": "0 to 2**32-1",
}


def _field_type(f: dataclasses.Field):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if t.startswith("bool"):
        return "bool"
    if t.startswith("list"):
        return "list"
    for name, typ in (("int", int), ("float", float), ("str", str)):
        if t.startswith(name):
            return typ
    return str


def add_train_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", help="YAML or JSON file of training options (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = HELP.get(f.name, "")
        if f.name == "policy":  # read at parser build, so a policy registered later is listed too
            help_text = policy_help()
        if f.name in CHOICES:
            help_text = f"{help_text}; one of: {', '.join(CHOICES[f.name])}".lstrip("; ")
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=(help_text + f" (default: {default})").strip())
        elif kind == "list":
            p.add_argument(flag, type=int, nargs="+", default=None, help=help_text or None)
        else:
            p.add_argument(flag, type=kind, default=None, help=(help_text + f" (default: {default})").strip())


def config_from_args(args: argparse.Namespace, **forced) -> TrainConfig:
    data = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            data[name] = v
    data.update(forced)
    return TrainConfig.from_dict(data, source=getattr(args, "config", None) or "options")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one model with a batch-size policy",
                       description="Train one model: the paper's protocol by default (SGD lr 0.01, momentum 0.9, "
                                   "wd 5e-4, 100 epochs, start batch 64). Writes config.json, epochs.jsonl, "
                                   "summary.json and checkpoint.pt (the previous one kept as checkpoint.prev.pt) "
                                   "into --out, which one run at a time may write (OUT/.lock). Exit code: 0 done, "
                                   "2 bad input (a damaged or unfitting checkpoint, an --out another run is "
                                   "writing), 3 stopped after --max-nonfinite non-finite epochs or diverged "
                                   "(nothing finite left), 74 a file could not be written or read (disk full, "
                                   "read-only, permission: --resume once fixed), 75 out of memory on one rank "
                                   "of a multi-process run (start it again with --resume; torchrun "
                                   "--max-restarts N does that), 130 SIGINT / 143 SIGTERM: stopped at the next "
                                   "step with a checkpoint (--resume goes on from that step). A run under a "
                                   "cosine schedule cannot be extended: --resume with other --epochs is refused.")
    add_train_options(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--resume-fallback", action="store_true",
                   help="with --resume: if checkpoint.pt is damaged, resume from checkpoint.prev.pt (one epoch "
                        "earlier) instead of stopping")
    return p


# what a run writes into --out; any of them there means another run's results would be overwritten
RUN_OUTPUTS = TRAIN_OUTPUTS


def check_out_folder(out: str | None, resume: bool) -> None:
    """--out must be a folder (or not exist yet) and, without --resume, hold no earlier run's files."""
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DebaError(f"--out {out} is an existing file, not a folder")
    if not resume and path.is_dir():
        found = [name for name in RUN_OUTPUTS if (path / name).exists()]
        if found:
            raise DebaError(f"--out {out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                            "or choose another --out")


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train

    config = config_from_args(args)
    check_out_folder(config.out, args.resume)
    if args.resume_fallback and not args.resume:
        raise DebaError("--resume-fallback needs --resume")
    summary = train(config, resume=args.resume, resume_fallback=args.resume_fallback)
    if summary.get("task") == "language-model":
        from .sample import after_training

        after_training(config, summary)
        return 0
    if not config.quiet:
        acc = summary["final_test_acc"]
        print(f"{summary['arch']} {summary['policy']}: final test acc "
              f"{acc:.2f}% " if acc is not None else "final test acc n/a ", end="", file=sys.stdout)
        print(f"train {summary['train_time_s']:.1f}s, batch sizes {summary['batch_sizes'][0]} -> "
              f"{summary['final_batch_size']} ({summary['increases']} up, {summary['rollbacks']} down)"
              + (f", outputs in {config.out}" if config.out else ""))
    return 0


__all__ = ["add_parser", "run", "add_train_options", "config_from_args", "DebaError"]
