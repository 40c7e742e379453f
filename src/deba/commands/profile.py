"""`deba profile`: fixed-batch runs (one per seed), then the calibration report and a thresholds file
that `deba train --thresholds FILE` accepts (paper sections 3.6 and 5)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DebaError
from .train import add_train_options, config_from_args


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="fixed-batch profiling runs, calibrated thresholds and stability class",
                       description="Train the architecture at a fixed batch size for each seed, then calibrate DEBA's "
                                   "thresholds and the stability score S from those runs. Finished seeds are reused.")
    add_train_options(p, skip=("seed", "policy", "out"))
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 42, 199], help="seeds (default: 2 42 199, as the paper)")
    p.add_argument("--out", required=True, help="folder for the runs (OUT/seedN) and the profile")
    p.add_argument("--conf", choices=("ratio", "bounded"), default="bounded",
                   help="confidence reading to calibrate theta_conf in (default bounded, the reading deba uses)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..calibration import MIN_USABLE_EPOCHS, calibrate, write_thresholds_file
    from ..logio import make_dir, read_json, read_signal_log, write_json
    from ..runfolder import EPOCHS_FILE, SUMMARY_FILE, is_complete
    from ..training.trainer import train

    out = Path(args.out)
    dup = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if dup:
        raise DebaError(f"--seeds lists seed {dup[0]} twice: each seed is one profiling run")
    epochs = config_from_args(args, seed=args.seeds[0], policy="fixed").epochs
    if epochs < MIN_USABLE_EPOCHS:
        raise DebaError(f"--epochs {epochs}: calibration needs at least {MIN_USABLE_EPOCHS} epochs per run")
    make_dir(out)
    logs, names = [], []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        config = config_from_args(args, seed=seed, policy="fixed", out=str(run_dir))
        done = run_dir / SUMMARY_FILE
        if not (done.exists() and is_complete(read_json(done))):
            train(config, resume=True)
        logs.append(read_signal_log(run_dir / EPOCHS_FILE))
        names.append(str(run_dir / EPOCHS_FILE))
    window = args.window or 15
    report = calibrate(logs, window=window, conf_mode=args.conf, names=names)
    report["logs"] = names
    report["arch"] = args.model or args.arch or "resnet18"
    write_json(out / "profile.json", report)
    write_thresholds_file(out / "thresholds.json", report, arch=report["arch"])
    print(f"profile of {report['arch']} over seeds {' '.join(map(str, args.seeds))}:")
    print(f"  theta_stab {report['theta_stab']:.4g}  theta_conf {report['theta_conf']:.4g}  ({args.conf} conf)")
    print(f"  stability S per seed: {', '.join(f'{s:.3f}' for s in report['stability_scores'])}")
    print(f"  mu_S {report['mu_S']:.3f}  sigma_S {report['sigma_S']:.3f}  -> {report['taxonomy']}: {report['prediction']}")
    print(f"  {report['prediction_text']}")
    print(f"  thresholds written to {out / 'thresholds.json'} (use: deba train --thresholds {out / 'thresholds.json'})")
    return 0


__all__ = ["add_parser", "run", "DebaError"]
