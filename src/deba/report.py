"""Tables and figures from run logs alone: the analogues of the paper's Tables 1-4 and Figures 1-3, and every
run's batch-size trajectory, as markdown, CSV and PNG, with the paper's published numbers beside ours.

Inputs are study folders (searched recursively for run directories holding summary.json, config.json and
epochs.jsonl) or `deba study --pack` archives; several inputs merge.

Statistics (also written into report.md):
- accuracy is the final-epoch test accuracy in percent; best-epoch accuracy is shown beside it;
- "±" is the sample standard deviation over seeds (ddof=1), as the paper's "mean ± std over five seeds"
  most likely is; with one seed it is blank;
- Δacc = acc - acc_fixed paired per seed (same dataset, architecture, epochs), mean ± std over the paired
  seeds, like the speedup beside it;
- speedup = 1 - t / t_fixed paired per seed, mean ± std over the paired seeds (spec section 4); throughput =
  mean t_fixed / mean t over the same seeds (the paper's 778 s / 512 s = 1.5x); t is training time without
  evaluation; a group whose runs shared the device is labelled "shared xN" (N = concurrent_runs);
- modelled solo time (with --bench): the sum over a run's epochs of the bench's solo time per step at that
  epoch's batch size times the steps the epoch took (log-log interpolation between measured batch sizes);
- every arm is also compared with a reference arm, by default fixed-cosine (B=64 with a cosine lr decay: what
  a practitioner would run instead of a constant lr), paired per seed: Δacc = acc - acc_ref, time ratio =
  t / t_ref, each mean ± std over the paired seeds; accuracy per second = final acc / t per run, and its
  ratio to the reference's; time to the reference's accuracy = training time until the first evaluated
  epoch whose test accuracy reaches the reference arm's mean final accuracy (runs that never do are counted,
  not averaged).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .calibration import PAPER_TABLE2
from .errors import DebaError
from .logio import atomic_write_text, make_dir, read_text_input
from .policy import DEFAULT_PRESET, TABLE1_THRESHOLDS, canonical_arch
from .verdict import quality_of

# --- the paper's published numbers (arXiv 2511.03809) -------------------------------------------------
# Table 1 lives in deba.policy.TABLE1_THRESHOLDS (the presets use it); the rest is here. Architectures by
# torchvision name; accuracies in percent, times in seconds, speedups in percent. All at 100 epochs, 5 seeds.
# Table 2 lives in deba.calibration.PAPER_TABLE2 (imported above).
ABLATIONS = ("baseline", "universal", "cooldown5", "cooldown2", "full-history")
ABLATION_TITLES = {
    "baseline": "baseline (cooldown 10, window 15)",
    "universal": "universal thresholds",
    "cooldown5": "cooldown 5",
    "cooldown2": "cooldown 2",
    "full-history": "full history",
}
# Table 3 (CIFAR-10): (delta acc, speedup %) per ablation
PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "resnet18": {
        "baseline": (2.43, 34.2),
        "universal": (-0.16, -10.8),
        "cooldown2": (-2.75, 40.7),
        "cooldown5": (0.83, 21.6),
        "full-history": (1.94, 31.8),
    },
    "resnet50": {
        "baseline": (-0.59, 42.4),
        "universal": (0.43, -5.6),
        "cooldown2": (-12.62, 58.7),
        "cooldown5": (-2.35, 43.4),
        "full-history": (0.14, 11.9),
    },
    "densenet121": {
        "baseline": (1.40, 54.9),
        "universal": (-0.26, -0.05),
        "cooldown2": (-4.30, 79.0),
        "cooldown5": (0.24, 67.0),
        "full-history": (1.02, 37.1),
    },
    "efficientnet_b0": {
        "baseline": (2.37, 43.3),
        "universal": (-0.95, -25.5),
        "cooldown2": (-2.29, 65.0),
        "cooldown5": (1.97, 52.0),
        "full-history": (0.24, 7.1),
    },
    "mobilenet_v3_large": {
        "baseline": (6.98, 50.4),
        "universal": (7.02, 37.9),
        "cooldown2": (0.64, 55.4),
        "cooldown5": (5.24, 50.2),
        "full-history": (5.48, 42.0),
    },
    "vit_b_16": {
        "baseline": (-0.61, 8.3),
        "universal": (-0.02, -1.9),
        "cooldown2": (-1.80, 11.9),
        "cooldown5": (-0.59, 10.0),
        "full-history": (-0.43, 6.8),
    },
}
PAPER_TABLE3_SUMMARY = {  # the table's last two rows: architectures degraded by > 1 point, mean |delta acc|
    "baseline": ("0/6", 2.40),
    "universal": ("3/6", 1.47),
    "cooldown2": ("5/6", 4.07),
    "cooldown5": ("1/6", 1.20),
    "full-history": ("0/6", 1.54),
}


def _t4(acc, time_s, delta=None, speedup=None, throughput=1.0):
    return {"acc": acc, "delta_acc": delta, "time_s": time_s, "speedup": speedup, "throughput": throughput}


# Table 4: (arch, dataset, "fixed" | "deba") -> acc (mean, std), delta acc, time (mean, std), speedup (mean, std),
# throughput ratio
PAPER_TABLE4: dict[tuple[str, str, str], dict[str, Any]] = {
    ("resnet18", "cifar10", "fixed"): _t4((83.05, 0.51), (778, 38)),
    ("resnet18", "cifar10", "deba"): _t4((85.48, 0.66), (512, 101), 2.43, (36.6, 13.1), 1.5),
    ("resnet18", "cifar100", "fixed"): _t4((51.81, 0.56), (774, 32)),
    ("resnet18", "cifar100", "deba"): _t4((55.79, 0.77), (441, 15), 3.98, (43.0, 2.9), 1.8),
    ("resnet50", "cifar10", "fixed"): _t4((83.07, 0.62), (1858, 28)),
    ("resnet50", "cifar10", "deba"): _t4((82.48, 1.62), (1069, 120), -0.59, (43.3, 5.5), 1.7),
    ("resnet50", "cifar100", "fixed"): _t4((50.14, 0.81), (1887, 45)),
    ("resnet50", "cifar100", "deba"): _t4((51.43, 3.85), (1045, 81), 1.29, (44.7, 3.8), 1.8),
    ("densenet121", "cifar10", "fixed"): _t4((84.95, 0.57), (2906, 73)),
    ("densenet121", "cifar10", "deba"): _t4((86.35, 0.68), (1310, 197), 1.40, (55.0, 6.6), 2.2),
    ("densenet121", "cifar100", "fixed"): _t4((56.18, 0.70), (2923, 46)),
    ("densenet121", "cifar100", "deba"): _t4((59.42, 0.08), (1097, 23), 3.24, (62.4, 1.1), 2.7),
    ("efficientnet_b0", "cifar10", "fixed"): _t4((83.18, 0.65), (1443, 61)),
    ("efficientnet_b0", "cifar10", "deba"): _t4((85.55, 0.63), (818, 210), 2.37, (47.7, 13.1), 1.8),
    ("efficientnet_b0", "cifar100", "fixed"): _t4((56.29, 0.52), (1434, 56)),
    ("efficientnet_b0", "cifar100", "deba"): _t4((56.72, 0.85), (618, 7), 0.43, (56.8, 1.5), 2.3),
    ("mobilenet_v3_large", "cifar10", "fixed"): _t4((69.54, 3.18), (882, 45)),
    ("mobilenet_v3_large", "cifar10", "deba"): _t4((76.52, 0.45), (438, 9), 6.98, (50.3, 3.4), 2.0),
    ("mobilenet_v3_large", "cifar100", "fixed"): _t4((41.36, 0.76), (899, 61)),
    ("mobilenet_v3_large", "cifar100", "deba"): _t4((45.37, 1.03), (439, 3), 4.01, (51.0, 3.3), 2.0),
    ("vit_b_16", "cifar10", "fixed"): _t4((68.84, 1.2), (16720.31, 139.3)),
    ("vit_b_16", "cifar10", "deba"): _t4((68.23, 0.56), (15331.05, 479.71), -0.61, (8.3, 2.89), 1.01),
    ("vit_b_16", "cifar100", "fixed"): _t4((38.57, 1.1), (16719.13, 293.1)),
    ("vit_b_16", "cifar100", "deba"): _t4((39.62, 2.34), (15859.8, 331.02), 1.05, (5.1, 2.96), 1.05),
}
PAPER_EPOCHS = 100
PAPER_COOLDOWN_COLUMNS = {2: "cooldown2", 5: "cooldown5", 10: "baseline"}  # the paper's cooldowns, 100 epochs

RUN_FILES = ("summary.json", "config.json", "epochs.jsonl")


# --- reading runs -------------------------------------------------------------------------------------
@dataclass
class RunLog:
    run_id: str  # the run's directory relative to its input (posix)
    source: str
    config: dict
    summary: dict
    records: list[dict]
    arm: str = ""
    variant: str = ""
    preset: str | None = None
    ablation: str | None = None  # Table 3 column (ABLATIONS) or None
    setting: str = ""  # what the ablation is, in this run's terms (e.g. "cooldown 2 of 30 epochs")

    @property
    def dataset(self) -> str:
        return str(self.summary.get("dataset") or self.config.get("dataset"))

    @property
    def arch(self) -> str:
        return str(self.summary.get("arch") or self.config.get("model") or self.config.get("arch"))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", self.config.get("seed")))

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs") or self.summary.get("epochs"))

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete" and self.quality is not None

    @property
    def metric(self) -> str:
        """The run's quality metric: final_test_acc (higher better) or, for a language model, final_val_loss."""
        return quality_of(self.summary)[1]

    @property
    def quality(self) -> float | None:
        return quality_of(self.summary)[0]

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "final_val_loss"

    @property
    def concurrent_runs(self) -> int:
        v = self.summary.get("concurrent_runs", self.config.get("concurrent_runs", 1))
        return int(v) if isinstance(v, (int, float)) and v >= 1 else 1


def not_worse(value: float, reference: float, higher_is_better: bool) -> bool:
    """value at least as good as reference: >= for accuracy, <= for a loss."""
    return value >= reference if higher_is_better else value <= reference


def quality_label(metrics: Sequence[str]) -> str:
    """Column label for the final quality of the runs listed (their ``metric`` values)."""
    kinds = set(metrics)
    if kinds == {"final_val_loss"}:
        return "val loss (lower better)"
    if "final_val_loss" in kinds:
        return "acc % / val loss"
    return "acc %"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _iter_folder(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    for summary in sorted(root.rglob("summary.json")):
        d = summary.parent
        rel = d.relative_to(root).as_posix()
        run_id = rel if rel != "." else root.name
        files = {}
        for name in RUN_FILES:
            if (d / name).is_file():
                files[name] = (d / name).read_text(encoding="utf-8", errors="replace")
        yield run_id, files


def _iter_input(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if path.is_dir():
        yield from _iter_folder(path)
    elif path.is_file():
        from .study import read_archive_runs

        for run_id, files in sorted(read_archive_runs(path).items()):
            if "summary.json" in files:
                yield run_id, {k: v for k, v in files.items() if k in RUN_FILES}
    else:
        raise DebaError(f"{path}: no such folder or archive")


def _parse_json(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise DebaError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DebaError(f"{where}: expected a JSON object")
    return obj


def _parse_jsonl(text: str, where: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DebaError(f"{where}:{lineno}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DebaError(f"{where}:{lineno}: expected a JSON object")
        rows.append(obj)
    return rows


def variant_of(config: Mapping[str, Any]) -> tuple[str, str | None, str | None, str]:
    """(label, preset, Table 3 ablation or None, setting) describing a run's policy from its config alone.

    A DEBA run is a Table 3 column when it differs from its preset in at most one of the paper's ablations
    (universal thresholds, cooldown, full history) and in nothing else that changes the algorithm. A cooldown
    of c epochs in an E-epoch run stands for c * 100 / E of the paper's 100 epochs; the nearest of the paper's
    cooldowns (2, 5, 10) names its column.
    """
    policy = config.get("policy", "deba")
    epochs = int(config.get("epochs") or PAPER_EPOCHS)
    other = []
    if config.get("lr_schedule", "constant") != "constant":
        other.append(str(config["lr_schedule"]))
    if config.get("lr_scaling", "none") != "none":
        other.append(f"lr-{config['lr_scaling']}")
    if config.get("start_batch", 64) != 64:
        other.append(f"b{config['start_batch']}")
    if policy != "deba":
        return "-".join([str(policy), *other]), None, None, ""
    preset = config.get("preset") or DEFAULT_PRESET
    label = [preset]
    ablations: list[tuple[str, str]] = []
    if config.get("universal_thresholds"):
        label.append("universal")
        ablations.append(("universal", "universal thresholds"))
    cooldown = config.get("cooldown")
    if cooldown is not None:
        if cooldown != 10:
            label.append(f"cooldown{cooldown}")
        nearest = min(PAPER_COOLDOWN_COLUMNS, key=lambda k: abs(cooldown * PAPER_EPOCHS / epochs - k))
        if PAPER_COOLDOWN_COLUMNS[nearest] != "baseline":
            ablations.append((PAPER_COOLDOWN_COLUMNS[nearest], f"cooldown {cooldown} of {epochs} epochs"))
    if config.get("full_history"):
        label.append("full-history")
        ablations.append(("full-history", "full history"))
    for key, tag in (
        ("theta_stab", "theta"),
        ("theta_conf", "theta"),
        ("thresholds", "thresholds-file"),
        ("grow_factor", "grow"),
        ("rollback_factor", "rollback"),
        ("b_min", "bmin"),
        ("b_max", "bmax"),
        ("decision_interval", "interval"),
    ):
        if config.get(key) is not None and tag not in other:
            other.append(tag)
    if config.get("window") not in (None, 15):
        other.append(f"window{config['window']}")
    if config.get("signals_mode", "last") != "last":
        other.append(str(config["signals_mode"]))
    name = "+".join(label + other)
    if other or len(ablations) > 1:
        return name, preset, None, ""
    if ablations:
        return name, preset, ablations[0][0], ablations[0][1]
    return name, preset, "baseline", f"cooldown {10 if cooldown is None else cooldown} of {epochs} epochs"


def _arm_from_path(run_id: str, epochs: int) -> str | None:
    parts = PurePosixPath(run_id).parts
    if len(parts) >= 4 and re.fullmatch(r"seed-?\d+", parts[-1]):
        arm = parts[-2]
        return arm.removesuffix(f"-{epochs}ep")
    return None


@dataclass
class RunSet:
    runs: list[RunLog]
    sources: list[str]
    notes: list[str] = field(default_factory=list)


def _check_run_fields(config: Mapping[str, Any], summary: Mapping[str, Any], where: str) -> None:
    """The keys the report computes with (run identity, cooldown column) must be integers: a hand-edited or
    foreign log is named in one line instead of failing deep inside a table."""
    for name, d, keys in (("config.json", config, ("epochs", "seed", "cooldown")),
                          ("summary.json", summary, ("epochs", "seed"))):
        for key in keys:
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise DebaError(f"{where}/{name}: {key} must be an integer, got {json.dumps(v)}")
    for key in ("epochs", "seed"):
        if config.get(key) is None and summary.get(key) is None:
            raise DebaError(f"{where}: neither config.json nor summary.json gives {key}")
    if not (config.get("epochs") or summary.get("epochs") or 0) >= 1:
        raise DebaError(f"{where}: epochs must be >= 1")


def load_runs(inputs: Sequence[str | os.PathLike]) -> RunSet:
    """Every run in the given folders and archives. A run found twice (e.g. in two packs of one study) is kept
    once: a complete copy wins over an incomplete one; between two complete ones, the later input wins."""
    if not inputs:
        raise DebaError("no inputs: give study folders or --pack archives")
    found: dict[str, RunLog] = {}
    notes: list[str] = []
    for inp in inputs:
        path = Path(inp)
        for run_id, files in _iter_input(path):
            where = f"{path}:{run_id}"
            missing = [n for n in RUN_FILES if n not in files]
            if missing:
                notes.append(f"skipped {where}: no {', '.join(missing)}")
                continue
            summary = _parse_json(files["summary.json"], f"{where}/summary.json")
            config = _parse_json(files["config.json"], f"{where}/config.json")
            records = _parse_jsonl(files["epochs.jsonl"], f"{where}/epochs.jsonl")
            _check_run_fields(config, summary, where)
            run = RunLog(run_id, str(path), config, summary, records)
            run.variant, run.preset, run.ablation, run.setting = variant_of(config)
            run.arm = _arm_from_path(run_id, run.epochs) or run.variant
            old = found.get(run_id)
            if old is not None:
                same = (old.summary, old.records) == (run.summary, run.records)
                if same:
                    continue
                if old.complete and not run.complete:
                    notes.append(f"{run_id}: kept the complete copy from {old.source}, not the one in {path}")
                    continue
                notes.append(f"{run_id}: found in {old.source} and {path}; kept the one in {path}")
            found[run_id] = run
    runs = sorted(found.values(), key=lambda r: (r.dataset, r.arch, r.epochs, r.arm, r.seed, r.run_id))
    if not runs:
        raise DebaError(
            f"no runs found in {', '.join(map(str, inputs))} (looked for summary.json, config.json "
            "and epochs.jsonl side by side)"
        )
    return RunSet(runs, [str(p) for p in inputs], notes)


# --- statistics --------------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def paired_speedup(times: Mapping[int, float], base_times: Mapping[int, float]) -> dict[str, Any]:
    """Per-seed 1 - t / t_fixed (percent) over the seeds both have; throughput = mean t_fixed / mean t."""
    seeds = sorted(set(times) & set(base_times))
    s = [100.0 * (1.0 - times[k] / base_times[k]) for k in seeds if base_times[k] > 0]
    m, sd = mean_std(s)
    t = np.mean([times[k] for k in seeds]) if seeds else math.nan
    tb = np.mean([base_times[k] for k in seeds]) if seeds else math.nan
    return {
        "n_pairs": len(seeds),
        "speedup_pct": m,
        "speedup_pct_std": sd,
        "throughput": float(tb / t) if seeds and t > 0 else math.nan,
    }


# --- bench: modelled solo time -------------------------------------------------------------------------
@dataclass
class BenchTable:
    """Solo seconds per step by (arch, mode) and batch size, from `deba bench`."""

    step_s: dict[tuple[str, str], dict[int, float]]
    source: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BenchTable":
        path = Path(path)
        text = read_text_input(path, "bench file", "expected `deba bench --out` JSON")
        try:
            obj = json.loads(text)
            records = obj.get("records") if isinstance(obj, dict) else obj
        except ValueError:
            records = _parse_jsonl(text, str(path))
        if not isinstance(records, list) or not records:
            raise DebaError(f"{path}: expected bench records (a list, or an object with 'records')")
        table: dict[tuple[str, str], dict[int, float]] = {}
        for i, r in enumerate(records, 1):
            if not isinstance(r, dict):
                raise DebaError(f"{path}: record {i} is not an object")
            missing = [k for k in ("arch", "batch_size", "epoch_s") if k not in r]
            if missing:
                raise DebaError(f"{path}: record {i} lacks {', '.join(missing)}")
            b, epoch_s = r["batch_size"], _num(r["epoch_s"])
            if isinstance(b, bool) or not isinstance(b, int) or b < 1 or epoch_s is None or epoch_s <= 0:
                raise DebaError(
                    f"{path}: record {i}: batch_size must be an integer >= 1 and epoch_s a number > 0"
                )
            steps = r.get("steps") or (int(r.get("samples") or 50_000) // b)
            if not steps:
                continue
            key = (canonical_arch(str(r["arch"])), str(r.get("mode", "default")))
            table.setdefault(key, {})[b] = epoch_s / steps
        return cls(table, str(path))

    def modes(self, arch: str) -> list[str]:
        return sorted(m for a, m in self.step_s if a == canonical_arch(arch))

    def step_time(self, arch: str, mode: str, batch_size: int) -> float:
        pts = self.step_s.get((canonical_arch(arch), mode))
        if not pts:
            return math.nan
        if batch_size in pts:
            return pts[batch_size]
        bs = sorted(pts)
        if batch_size < bs[0] or batch_size > bs[-1]:
            return math.nan  # no extrapolation: outside what was measured
        x = np.log([float(b) for b in bs])
        y = np.log([pts[b] for b in bs])
        return float(np.exp(np.interp(math.log(batch_size), x, y)))

    def modelled_time(self, run: RunLog, mode: str | None) -> tuple[float, str]:
        """(seconds, note): the run's training time had it run alone, epoch by epoch."""
        modes = self.modes(run.arch)
        if not modes:
            return math.nan, f"no bench records for {run.arch}"
        if mode is None:
            graphs = run.summary.get("graphs")
            if len(modes) == 1:
                mode = modes[0]
            elif isinstance(graphs, str) and graphs in modes:
                mode = graphs
            else:
                return (
                    math.nan,
                    f"bench has modes {', '.join(modes)} for {run.arch}: choose one with --bench-mode",
                )
        elif mode not in modes:
            return math.nan, f"bench has no mode {mode!r} for {run.arch}"
        total = 0.0
        for rec in run.records:
            # batch_steps lists every (batch size, steps) the epoch trained at: more than one pair after an
            # out-of-memory cap or a mid-epoch decision (decision_interval)
            pairs = rec.get("batch_steps")
            if not pairs:
                b = rec.get("batch_size")
                steps = rec.get("steps")
                if steps is None and rec.get("samples") is not None and b:
                    steps = int(rec["samples"]) // int(b)
                pairs = [[b, steps]]
            for b, steps in pairs:
                if not isinstance(b, int) or steps is None:
                    return math.nan, f"{run.run_id}: epochs.jsonl lacks batch_size/steps"
                t = self.step_time(run.arch, mode, b)
                if math.isnan(t):
                    return math.nan, f"{run.arch} batch {b} is outside the bench's batch sizes"
                total += t * steps
        return total, ""


# --- tables -----------------------------------------------------------------------------------------
def _arm_per_group(runs: Sequence[RunLog], named: str | None, default: str) -> dict[tuple[str, str, int], str]:
    """One arm per (dataset, arch, epochs) group: ``named`` where given (groups without it get none), else
    the arm called ``default``, else the first arm (by name) whose config is the ``default`` variant."""
    groups: dict[tuple[str, str, int], set[str]] = {}
    by_variant: dict[tuple[str, str, int], set[str]] = {}
    for r in runs:
        key = (r.dataset, r.arch, r.epochs)
        groups.setdefault(key, set()).add(r.arm)
        if r.variant == default:
            by_variant.setdefault(key, set()).add(r.arm)
    out = {}
    for key, arms in groups.items():
        if named is not None:
            if named in arms:
                out[key] = named
        elif default in arms:
            out[key] = default
        elif by_variant.get(key):
            out[key] = min(by_variant[key])
    return out


def baseline_arms(runs: Sequence[RunLog], baseline: str | None = None) -> dict[tuple[str, str, int], str]:
    """The fixed-batch arm each (dataset, arch, epochs) group compares against: ``baseline`` where given, else
    the arm named fixed, else an arm whose config is plain fixed B=64."""
    return _arm_per_group(runs, baseline, "fixed")


DEFAULT_REFERENCE = "fixed-cosine"


def reference_arms(runs: Sequence[RunLog], reference: str | None = None) -> dict[tuple[str, str, int], str]:
    """The arm each (dataset, arch, epochs) group is compared with besides fixed: ``reference`` where given,
    else the arm named fixed-cosine, else an arm whose config is plain fixed B=64 with a cosine lr decay."""
    return _arm_per_group(runs, reference, DEFAULT_REFERENCE)


def time_to_accuracy(run: RunLog, target: float) -> float | None:
    """Training seconds (evaluation excluded) until the end of the first evaluated epoch whose test
    accuracy is at least ``target``; None if no epoch reaches it."""
    elapsed = 0.0
    key = "test_acc" if run.higher_is_better else "val_loss"
    for rec in run.records:
        t = _num(rec.get("train_time_s"))
        if t is None:
            return None
        elapsed += t
        acc = _num(rec.get(key))
        if acc is not None and not_worse(acc, target, run.higher_is_better):
            return elapsed
    return None


def total_steps(run: RunLog) -> int | None:
    """Optimizer steps the run took (per process), summed over its epochs; None if an epoch lacks the count."""
    steps = [rec.get("steps") for rec in run.records]
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) for n in steps):
        return None
    return sum(steps)


def _steps_per_seed(runs: Sequence[RunLog]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in runs:
        n = total_steps(r)
        if n is not None and r.seed not in out:
            out[r.seed] = n
    return out


def table_vs_reference(runset: RunSet, reference: str | None = None) -> pd.DataFrame:
    """Every arm against the reference arm (default fixed-cosine) of its (dataset, arch, epochs), paired per
    seed over complete runs. Empty where no group has a reference arm."""
    ref_of = reference_arms(runset.runs, reference)
    groups = _by_group(runset.runs)
    rows = []
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] != ref_of.get(k[:3]), k[3]))
    for dataset, arch, epochs, arm in order:
        ref_arm = ref_of.get((dataset, arch, epochs))
        if ref_arm is None:
            continue
        done = [r for r in groups[(dataset, arch, epochs, arm)] if r.complete]
        ref = [r for r in groups.get((dataset, arch, epochs, ref_arm), []) if r.complete]
        acc = _first_per_seed(done, "final_test_acc")
        ref_acc = _first_per_seed(ref, "final_test_acc")
        t = _first_per_seed(done, "train_time_s")
        ref_t = _first_per_seed(ref, "train_time_s")
        seeds = sorted(set(acc) & set(ref_acc) & set(t) & set(ref_t))
        d_acc = mean_std(acc[k] - ref_acc[k] for k in seeds)
        ratio = mean_std(t[k] / ref_t[k] for k in seeds if ref_t[k] > 0)
        st, ref_st = _steps_per_seed(done), _steps_per_seed(ref)
        steps_ratio = mean_std(st[k] / ref_st[k] for k in seeds if k in st and ref_st.get(k))
        aps = mean_std(acc[k] / t[k] for k in acc if k in t and t[k] > 0)[0]
        ref_aps = mean_std(ref_acc[k] / ref_t[k] for k in ref_acc if k in ref_t and ref_t[k] > 0)[0]
        target = mean_std(ref_acc.values())[0]
        reach = [time_to_accuracy(r, target) for r in done] if not math.isnan(target) else []
        reached = [x for x in reach if x is not None]
        shared = max([r.concurrent_runs for r in done + ref] or [1])
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "arm": arm,
                "reference_arm": ref_arm,
                "n": len(done),
                "n_pairs": len(seeds),
                "acc_mean": mean_std(acc.values())[0],
                "reference_acc_mean": target,
                "delta_acc": d_acc[0],
                "delta_acc_std": d_acc[1],
                "time_ratio": ratio[0],
                "time_ratio_std": ratio[1],
                "steps_ratio": steps_ratio[0],
                "steps_ratio_std": steps_ratio[1],
                "acc_per_s": aps,
                "reference_acc_per_s": ref_aps,
                "acc_per_s_ratio": aps / ref_aps if ref_aps and not math.isnan(ref_aps) else math.nan,
                "reached_reference_acc": len(reached),
                "time_to_reference_acc_s": mean_std(reached)[0] if reached else math.nan,
                "timing": _timing_label(shared),
            }
        )
    return pd.DataFrame(rows)


# issue 5's goal: "at least 40% less training time than fixed B=64 over the same epochs with accuracy equal or
# better, on at least 2 seeds" (on at least three architectures, counted in report.md)
GOAL_MAX_RATIO = 0.6
GOAL_MIN_SEEDS = 2


def _first_complete_per_seed(runs: Sequence[RunLog]) -> dict[int, RunLog]:
    out: dict[int, RunLog] = {}
    for r in runs:
        if r.complete:
            out.setdefault(r.seed, r)
    return out


def table_goal(
    runset: RunSet,
    baseline: str | None = None,
    modelled: Mapping[str, float] | None = None,
    max_ratio: float = GOAL_MAX_RATIO,
    min_seeds: int = GOAL_MIN_SEEDS,
) -> pd.DataFrame:
    """Seed by seed against the fixed-batch baseline of the group: does the arm reach at least the baseline's
    final accuracy with at most ``max_ratio`` of its training time (and, separately, of its optimizer steps)?

    Time is compared only where it is comparable: both runs solo, or both with a modelled solo time from
    ``deba bench`` (``modelled``, by run id). Pairs of runs that shared the device count for accuracy and steps
    but not for time. ``goal_time`` / ``goal_steps``: at least ``min_seeds`` seeds pass (None for time where
    no pair is comparable)."""
    base_of = baseline_arms(runset.runs, baseline)
    groups = _by_group(runset.runs)
    modelled = modelled or {}
    rows = []
    for dataset, arch, epochs, arm in sorted(groups):
        base_arm = base_of.get((dataset, arch, epochs))
        if base_arm is None or arm == base_arm:
            continue
        done = _first_complete_per_seed(groups[(dataset, arch, epochs, arm)])
        base = _first_complete_per_seed(groups.get((dataset, arch, epochs, base_arm), []))
        seeds = sorted(set(done) & set(base))
        n_acc = n_time_cmp = n_time = n_steps = 0
        bases, per_seed = set(), []
        for k in seeds:
            r, b = done[k], base[k]
            acc_ok = not_worse(r.quality, b.quality, r.higher_is_better)
            mt, mb = modelled.get(r.run_id, math.nan), modelled.get(b.run_id, math.nan)
            t, tb = _num(r.summary.get("train_time_s")), _num(b.summary.get("train_time_s"))
            if not (math.isnan(mt) or math.isnan(mb)) and mb > 0:
                time_ratio, basis = mt / mb, "modelled solo"
            elif t is not None and tb and max(r.concurrent_runs, b.concurrent_runs) <= 1:
                time_ratio, basis = t / tb, "solo"
            else:
                time_ratio, basis = None, f"shared x{max(r.concurrent_runs, b.concurrent_runs)}"
            st, stb = total_steps(r), total_steps(b)
            steps_ratio = st / stb if st is not None and stb else None
            n_acc += acc_ok
            if time_ratio is not None:
                n_time_cmp += 1
                n_time += acc_ok and time_ratio <= max_ratio
            n_steps += acc_ok and steps_ratio is not None and steps_ratio <= max_ratio
            bases.add(basis)
            d = r.quality - b.quality
            per_seed.append(
                f"{k}: {d:+.2f}, time {'-' if time_ratio is None else f'{time_ratio:.2f}x'}, "
                f"steps {'-' if steps_ratio is None else f'{steps_ratio:.2f}x'}"
            )
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "arm": arm,
                "baseline_arm": base_arm,
                "n_pairs": len(seeds),
                "seeds_acc_at_least_baseline": n_acc,
                "pairs_time_comparable": n_time_cmp,
                "seeds_goal_time": n_time,
                "seeds_goal_steps": n_steps,
                "goal_time": None if n_time_cmp == 0 else n_time >= min_seeds,
                "goal_steps": n_steps >= min_seeds,
                "timing": ", ".join(sorted(bases)),
                "per_seed": "; ".join(per_seed),
            }
        )
    return pd.DataFrame(rows)


def _by_group(runs: Sequence[RunLog]) -> dict[tuple[str, str, int, str], list[RunLog]]:
    g: dict[tuple[str, str, int, str], list[RunLog]] = {}
    for r in runs:
        g.setdefault((r.dataset, r.arch, r.epochs, r.arm), []).append(r)
    return g


def _timing_label(n: int) -> str:
    return "solo" if n <= 1 else f"shared x{n}"


def _paper_kind(run: RunLog, is_baseline: bool) -> str | None:
    if is_baseline:
        return "fixed"
    if run.ablation == "baseline":
        return "deba"
    return None


def _first_per_seed(runs: Sequence[RunLog], key: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in runs:
        v = r.quality if key == "final_test_acc" else _num(r.summary.get(key))  # the quality, of either kind
        if v is not None:
            out.setdefault(r.seed, v)
    return out


def table4(
    runset: RunSet,
    baseline: str | None = None,
    bench: BenchTable | None = None,
    bench_mode: str | None = None,
) -> pd.DataFrame:
    """One row per (dataset, arch, epochs, arm) over its complete runs."""
    runs = runset.runs
    base_of = baseline_arms(runs, baseline)
    groups = _by_group(runs)
    modelled: dict[str, float] = {}
    if bench is not None:
        for r in runs:
            if r.complete:
                t, note = bench.modelled_time(r, bench_mode)
                modelled[r.run_id] = t
                if note and note not in runset.notes:
                    runset.notes.append(note)
    rows = []
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] != base_of.get(k[:3]), k[3]))
    for dataset, arch, epochs, arm in order:
        members = groups[(dataset, arch, epochs, arm)]
        done = sorted((r for r in members if r.complete), key=lambda r: r.seed)
        seen: dict[int, str] = {}
        for r in done:
            if r.seed in seen:
                note = (
                    f"{dataset}/{arch}/{arm}: seed {r.seed} appears twice ({seen[r.seed]}, {r.run_id}); both count "
                    "in accuracy and time, the first pairs for speedup (report one study at a time?)"
                )
                if note not in runset.notes:
                    runset.notes.append(note)
            seen.setdefault(r.seed, r.run_id)
        base_arm = base_of.get((dataset, arch, epochs))
        base = (
            [r for r in groups.get((dataset, arch, epochs, base_arm), []) if r.complete] if base_arm else []
        )
        acc = [r.quality for r in done]
        best = [_num(r.summary.get("best_test_acc" if r.higher_is_better else "best_val_loss")) for r in done]
        times = _first_per_seed(done, "train_time_s")
        base_times = _first_per_seed(base, "train_time_s")
        all_times = [
            float(r.summary["train_time_s"]) for r in done if _num(r.summary.get("train_time_s")) is not None
        ]
        acc_m, acc_s = mean_std(acc)
        best_m, best_s = mean_std(best)
        t_m, t_s = mean_std(all_times)
        is_base = arm == base_arm
        acc_seed, base_acc_seed = _first_per_seed(done, "final_test_acc"), _first_per_seed(base, "final_test_acc")
        d_acc = mean_std(acc_seed[k] - base_acc_seed[k] for k in sorted(set(acc_seed) & set(base_acc_seed)))
        pair = paired_speedup(times, base_times) if base and not is_base else {}
        shared = max([r.concurrent_runs for r in done] or [1])
        shared_pair = max([shared] + [r.concurrent_runs for r in base])
        row = {
            "dataset": dataset,
            "arch": arch,
            "epochs": epochs,
            "arm": arm,
            "variant": members[0].variant,
            "baseline_arm": base_arm or "",
            "n": len(done),
            "n_incomplete": len(members) - len(done),
            "seeds": " ".join(str(r.seed) for r in done),
            "acc_mean": acc_m,
            "acc_std": acc_s,
            "best_acc_mean": best_m,
            "best_acc_std": best_s,
            "delta_acc": math.nan if is_base or not base else d_acc[0],
            "delta_acc_std": math.nan if is_base or not base else d_acc[1],
            "time_s_mean": t_m,
            "time_s_std": t_s,
            "speedup_pct": pair.get("speedup_pct", math.nan),
            "speedup_pct_std": pair.get("speedup_pct_std", math.nan),
            "n_pairs": pair.get("n_pairs", 0),
            "throughput": 1.0 if is_base and done else pair.get("throughput", math.nan),
            "acc_per_s": mean_std(
                r.quality / float(r.summary["train_time_s"])
                for r in done
                if (_num(r.summary.get("train_time_s")) or 0) > 0 and r.higher_is_better  # a loss per s means nothing
            )[0],
            "metric": members[0].metric,
            "concurrent_runs": shared,
            "timing": _timing_label(shared_pair if not is_base else shared),
            "devices": ", ".join(
                sorted({str(r.summary.get("device_name")) for r in done if r.summary.get("device_name")})
            ),
        }
        if bench is not None:
            mt = {r.seed: modelled.get(r.run_id, math.nan) for r in done}
            mt = {k: v for k, v in mt.items() if not math.isnan(v)}
            mbt = {r.seed: modelled.get(r.run_id, math.nan) for r in base}
            mbt = {k: v for k, v in mbt.items() if not math.isnan(v)}
            mm, ms = mean_std(mt.values())
            mp = paired_speedup(mt, mbt) if base and not is_base else {}
            row.update(
                {
                    "model_time_s_mean": mm,
                    "model_time_s_std": ms,
                    "model_speedup_pct": mp.get("speedup_pct", math.nan),
                    "model_speedup_pct_std": mp.get("speedup_pct_std", math.nan),
                    "model_throughput": 1.0 if is_base and mt else mp.get("throughput", math.nan),
                }
            )
        kind = _paper_kind(members[0], is_base)
        paper = PAPER_TABLE4.get((canonical_arch(arch), dataset, kind)) if kind else None
        row.update(
            {
                "paper_acc": paper["acc"][0] if paper else math.nan,
                "paper_acc_std": paper["acc"][1] if paper else math.nan,
                "paper_delta_acc": (
                    paper["delta_acc"] if paper and paper["delta_acc"] is not None else math.nan
                ),
                "paper_time_s": paper["time_s"][0] if paper else math.nan,
                "paper_time_s_std": paper["time_s"][1] if paper else math.nan,
                "paper_speedup_pct": paper["speedup"][0] if paper and paper["speedup"] else math.nan,
                "paper_speedup_pct_std": paper["speedup"][1] if paper and paper["speedup"] else math.nan,
                "paper_throughput": paper["throughput"] if paper else math.nan,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def table3(runset: RunSet, t4: pd.DataFrame) -> pd.DataFrame:
    """The Table 3 analogue: each DEBA arm that is the baseline or one ablation of it, vs fixed, per arch."""
    rows = []
    first = {}
    for r in runset.runs:
        first.setdefault((r.dataset, r.arch, r.epochs, r.arm), r)
    for _, row in t4.iterrows():
        r = first[(row["dataset"], row["arch"], row["epochs"], row["arm"])]
        if r.ablation is None or not row["baseline_arm"]:
            continue
        paper = (
            PAPER_TABLE3.get(canonical_arch(r.arch), {}).get(r.ablation) if r.dataset == "cifar10" else None
        )
        rows.append(
            {
                "dataset": r.dataset,
                "epochs": r.epochs,
                "preset": r.preset,
                "arch": r.arch,
                "ablation": r.ablation,
                "setting": r.setting,
                "arm": r.arm,
                "n": row["n"],
                "delta_acc": row["delta_acc"],
                "speedup_pct": row["speedup_pct"],
                "speedup_pct_std": row["speedup_pct_std"],
                "timing": row["timing"],
                "model_speedup_pct": row.get("model_speedup_pct", math.nan),
                "paper_delta_acc": paper[0] if paper else math.nan,
                "paper_speedup_pct": paper[1] if paper else math.nan,
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        order = {k: i for i, k in enumerate(ABLATIONS)}
        df = df.sort_values(
            ["dataset", "epochs", "preset", "arch", "ablation"],
            key=lambda s: s.map(order) if s.name == "ablation" else s,
        ).reset_index(drop=True)
    return df


def table3_summary(t3: pd.DataFrame) -> pd.DataFrame:
    """The paper's two summary rows per ablation: archs degraded by more than one point, mean |delta acc|."""
    rows = []
    if t3.empty:
        return pd.DataFrame(rows)
    for (dataset, epochs, preset, abl), g in t3.groupby(
        ["dataset", "epochs", "preset", "ablation"], sort=False
    ):
        d = g.groupby("arch")["delta_acc"].mean().dropna()
        paper = PAPER_TABLE3_SUMMARY.get(abl) if dataset == "cifar10" else None
        rows.append(
            {
                "dataset": dataset,
                "epochs": epochs,
                "preset": preset,
                "ablation": abl,
                "degraded_gt_1pt": f"{int((d < -1).sum())}/{len(d)}",
                "mean_abs_delta_acc": float(d.abs().mean()) if len(d) else math.nan,
                "paper_degraded_gt_1pt": paper[0] if paper else "",
                "paper_mean_abs_delta_acc": paper[1] if paper else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _calibrate(runs: Sequence[RunLog], window: int, conf_mode: str, notes: list[str]) -> dict | None:
    """deba.calibration on these runs' logs (seeds pooled); None, with a note, where it cannot."""
    try:
        from .calibration import calibrate
    except ImportError:
        note = "Tables 1 and 2 need deba.calibration, which is not available"
        if note not in notes:
            notes.append(note)
        return None
    try:
        return calibrate(
            [r.records for r in runs],
            window=window,
            conf_mode=conf_mode,
            names=[f"{r.source}:{r.run_id}" for r in runs],
        )
    except DebaError as e:
        notes.append(f"calibration ({conf_mode}) skipped: {e}")
        return None


def tables_1_2(
    runset: RunSet, t4: pd.DataFrame, baseline: str | None = None, window: int = 15
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 (calibrated thresholds) and Table 2 (stability taxonomy) from the fixed arm's runs, seeds pooled,
    through deba.calibration (conf recomputed from grad_var, never read from the log). A group that cannot be
    calibrated (too few epochs, say) is left out with a note; empty frames without deba.calibration."""
    base_of = baseline_arms(runset.runs, baseline)
    t1, t2 = [], []
    groups = _by_group(runset.runs)
    for (dataset, arch, epochs), arm in sorted(base_of.items()):
        fixed = [r for r in groups.get((dataset, arch, epochs, arm), []) if r.complete]
        if not fixed:
            continue
        ratio = _calibrate(fixed, window, "ratio", runset.notes)
        if ratio is None:
            continue
        bounded = _calibrate(fixed, window, "bounded", runset.notes) or {}
        paper1 = TABLE1_THRESHOLDS.get(canonical_arch(arch))
        t1.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "n_runs": len(fixed),
                "theta_stab": ratio.get("theta_stab"),
                "theta_conf": ratio.get("theta_conf"),
                "theta_conf_bounded": bounded.get("theta_conf"),
                "paper_theta_stab": paper1[0] if paper1 else math.nan,
                "paper_theta_conf": paper1[1] if paper1 else math.nan,
            }
        )
        paper2 = PAPER_TABLE2.get(canonical_arch(arch), {})
        row = {
            "dataset": dataset,
            "arch": arch,
            "epochs": epochs,
            "n_runs": len(fixed),
            "mu_S": ratio.get("mu_S"),
            "sigma_S": ratio.get("sigma_S"),
            "class": ratio.get("taxonomy"),
            "prediction": ratio.get("prediction"),
            "paper_mu_S": paper2.get("mu_S", math.nan),
            "paper_sigma_S": paper2.get("sigma_S", math.nan),
            "paper_class": paper2.get("class", ""),
            "paper_delta_acc": paper2.get("delta_acc", math.nan),
        }
        sel = t4[(t4.dataset == dataset) & (t4.arch == arch) & (t4.epochs == epochs)]
        for _, a in sel.iterrows():
            r = groups[(dataset, arch, epochs, a["arm"])][0]
            if r.ablation == "baseline":
                row[f"delta_acc[{a['arm']}]"] = a["delta_acc"]
        t2.append(row)
    return pd.DataFrame(t1), pd.DataFrame(t2)


def runs_table(runset: RunSet, modelled: Mapping[str, float] | None = None) -> pd.DataFrame:
    rows = []
    for r in runset.runs:
        s = r.summary
        bs = [rec.get("batch_size") for rec in r.records]
        rows.append(
            {
                "run_id": r.run_id,
                "source": r.source,
                "dataset": r.dataset,
                "arch": r.arch,
                "arm": r.arm,
                "variant": r.variant,
                "seed": r.seed,
                "epochs": r.epochs,
                "epochs_logged": len(r.records),
                "status": r.status,
                "final_test_acc": _num(s.get("final_test_acc")),
                "best_test_acc": _num(s.get("best_test_acc")),
                "metric": r.metric,
                "quality": r.quality,
                "best_quality": _num(s.get("best_test_acc" if r.higher_is_better else "best_val_loss")),
                "final_val_loss": _num(s.get("final_val_loss")),
                "final_val_bpc": _num(s.get("final_val_bpc")),
                "best_epoch": s.get("best_epoch"),
                "train_time_s": _num(s.get("train_time_s")),
                "eval_time_s": _num(s.get("eval_time_s")),
                "steps": total_steps(r),
                "increases": s.get("increases"),
                "rollbacks": s.get("rollbacks"),
                "holds": s.get("holds"),
                "start_batch_size": bs[0] if bs else None,
                "final_batch_size": s.get("final_batch_size"),
                "max_batch_size": s.get(
                    "max_batch_size", max((b for b in bs if isinstance(b, int)), default=None)
                ),
                "concurrent_runs": r.concurrent_runs,
                "device_name": s.get("device_name"),
                "torch_version": s.get("torch_version"),
                "modelled_time_s": (modelled or {}).get(r.run_id, math.nan),
            }
        )
    return pd.DataFrame(rows)


def trajectories(runset: RunSet) -> pd.DataFrame:
    cols = (
        "epoch",
        "batch_size",
        "decision",
        "next_batch_size",
        "grad_var",
        "grad_norm",
        "loss",
        "conf",
        "train_time_s",
        "test_acc",
    )
    rows = []
    for r in runset.runs:
        for rec in r.records:
            rows.append(
                {
                    "run_id": r.run_id,
                    "dataset": r.dataset,
                    "arch": r.arch,
                    "arm": r.arm,
                    "seed": r.seed,
                    **{c: rec.get(c) for c in cols},
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "dataset", "arch", "arm", "seed", *cols])


def by_batch_size(traj: pd.DataFrame, value: str) -> pd.DataFrame:
    """Median (and count) of a per-epoch value at each batch size, per dataset and arch (figure data)."""
    d = traj.dropna(subset=["batch_size", value])
    d = d[pd.to_numeric(d[value], errors="coerce").notna()]
    if d.empty:
        return pd.DataFrame(columns=["dataset", "arch", "batch_size", f"{value}_median", "epochs"])
    d = d.assign(**{value: d[value].astype(float), "batch_size": d["batch_size"].astype(int)})
    g = d.groupby(["dataset", "arch", "batch_size"])[value]
    return pd.DataFrame({f"{value}_median": g.median(), "epochs": g.size()}).reset_index()


# --- formatting -------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 2) -> str:
    v = _num(v)
    return "" if v is None else f"{v:.{digits}f}"


def _pm(m: Any, s: Any, digits: int = 2) -> str:
    if _num(m) is None:
        return ""
    return _f(m, digits) + (f" ± {_f(s, digits)}" if _num(s) is not None else "")


def _signed(v: Any, digits: int = 2) -> str:
    v = _num(v)
    return "" if v is None else f"{v:+.{digits}f}"


def _x(v: Any) -> str:
    v = _num(v)
    return "" if v is None else f"{v:.2f}x"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --- figures ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fig_by_batch(
    data: pd.DataFrame,
    value: str,
    ylabel: str,
    title: str,
    path: Path,
    bench: pd.DataFrame | None = None,
    logy: bool = True,
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (dataset, arch), g in data.groupby(["dataset", "arch"]):
        g = g.sort_values("batch_size")
        label = arch if data["dataset"].nunique() == 1 else f"{arch} ({dataset})"
        ax.plot(g["batch_size"], g[f"{value}_median"], marker="o", label=f"{label}, in runs")
    if bench is not None and not bench.empty:
        for (arch, mode), g in bench.groupby(["arch", "mode"]):
            g = g.sort_values("batch_size")
            ax.plot(
                g["batch_size"],
                g["epoch_s"],
                linestyle="--",
                marker="x",
                label=f"{arch}, bench {mode} (solo)",
            )
    ax.set_xscale("log", base=2)
    bs = list(data["batch_size"]) + (
        list(bench["batch_size"]) if bench is not None and not bench.empty else []
    )
    if bs:
        _pow2_ticks(ax, "x", float(min(bs)), float(max(bs)))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pow2_ticks(ax, axis: str, lo: float, hi: float) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = [2**k for k in range(16) if lo / 1.5 <= 2**k <= hi * 1.5]
    target = ax.yaxis if axis == "y" else ax.xaxis
    if ticks:
        (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks)
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())


def _fig_trajectories(traj: pd.DataFrame, dataset: str, arch: str, path: Path) -> None:
    """One panel per arm, one line per seed: with many arms one shared panel is unreadable."""
    plt = _pyplot()
    d = traj[(traj.dataset == dataset) & (traj.arch == arch)].dropna(subset=["batch_size"])
    arms = sorted(d["arm"].unique())
    ncols = min(3, max(1, len(arms)))
    nrows = math.ceil(len(arms) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharex=True, sharey=True, squeeze=False
    )
    lo, hi = float(d["batch_size"].min()), float(d["batch_size"].max())
    for ax, arm in zip(axes.flat, arms):
        for (seed, _run_id), g in d[d.arm == arm].groupby(["seed", "run_id"]):
            g = g.sort_values("epoch")
            ax.step(g["epoch"], g["batch_size"], where="post", alpha=0.85, label=f"seed {seed}")
        ax.set_yscale("log", base=2)
        _pow2_ticks(ax, "y", lo, hi)
        ax.set_title(arm, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(arms) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("batch size")
    fig.suptitle(f"batch size per epoch, {arch} on {dataset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the report ---------------------------------------------------------------------------------------
def default_out(inputs: Sequence[str | os.PathLike]) -> Path:
    first = Path(inputs[0])
    if first.is_dir():
        return first / "report"
    name = re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", first.name)
    return first.with_name(f"{name}-report")


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def build_report(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    bench: str | os.PathLike | None = None,
    bench_mode: str | None = None,
    baseline: str | None = None,
    window: int = 15,
    figures: bool = True,
    reference: str | None = None,
) -> dict[str, Any]:
    """Read the runs, write report.md, the CSVs and the PNGs into ``out``; return the tables and paths."""
    runset = load_runs(inputs)
    out = make_dir(Path(out) if out is not None else default_out(inputs), "report folder")
    bench_table = BenchTable.load(bench) if bench else None
    t4 = table4(runset, baseline, bench_table, bench_mode)
    t3 = table3(runset, t4)
    t3s = table3_summary(t3)
    t1, t2 = tables_1_2(runset, t4, baseline, window)
    t4ref = table_vs_reference(runset, reference)
    if baseline is not None and not any(r.arm == baseline for r in runset.runs):
        runset.notes.append(f"no arm named {baseline!r} in any group: no comparison with a baseline arm")
    if reference is not None and t4ref.empty:
        runset.notes.append(f"no arm named {reference!r} in any group: no comparison with a reference arm")
    modelled = {}
    if bench_table is not None:
        for r in runset.runs:
            if r.complete:
                modelled[r.run_id] = bench_table.modelled_time(r, bench_mode)[0]
    runs_df = runs_table(runset, modelled)
    goal = table_goal(runset, baseline, modelled)
    from . import verdict

    paired = verdict.paired_table(runset.runs)
    traj = trajectories(runset)
    epoch_time = by_batch_size(traj, "train_time_s")
    grad_var = by_batch_size(traj, "grad_var")
    files = {}
    for name, df in (
        ("table1_thresholds.csv", t1),
        ("table2_taxonomy.csv", t2),
        ("table3_ablations.csv", t3),
        ("table3_summary.csv", t3s),
        ("table4_performance.csv", t4),
        ("table4_vs_reference.csv", t4ref),
        ("goal_check.csv", goal),
        ("paired_vs_baselines.csv", paired),
        ("runs.csv", runs_df),
        ("trajectories.csv", traj),
        ("epoch_time_by_batch.csv", epoch_time),
        ("grad_var_by_batch.csv", grad_var),
    ):
        _write_csv(df, out / name)
        files[name] = out / name
    figs: list[tuple[str, str]] = []
    if figures:
        bench_df = None
        if bench_table is not None:
            bench_df = pd.DataFrame(
                [
                    {"arch": a, "mode": m, "batch_size": b, "epoch_s": s * (50_000 // b)}
                    for (a, m), pts in bench_table.step_s.items()
                    for b, s in pts.items()
                ]
            )
        if not epoch_time.empty or bench_df is not None:
            p = out / "fig1_epoch_time_vs_batch.png"
            shared = max((r.concurrent_runs for r in runset.runs), default=1)
            _fig_by_batch(
                epoch_time,
                "train_time_s",
                "training seconds per epoch (median over epochs)",
                "Figure 1: epoch time vs batch size"
                + (f" (runs shared the device, up to x{shared})" if shared > 1 else ""),
                p,
                bench_df,
            )
            figs.append(("Figure 1: epoch time vs batch size", p.name))
        for dataset, g in grad_var.groupby("dataset"):
            num = {"cifar10": "2", "cifar100": "3"}.get(dataset)
            p = out / (f"fig{num}_grad_var_{dataset}.png" if num else f"fig_grad_var_{dataset}.png")
            _fig_by_batch(
                g,
                "grad_var",
                "gradient variance (median over epochs)",
                f"Figure {num or ''}: gradient variance vs batch size, {dataset}".replace(
                    "Figure :", "Figure:"
                ),
                p,
            )
            figs.append((f"gradient variance vs batch size, {dataset}", p.name))
        for (dataset, arch), _ in traj.groupby(["dataset", "arch"]):
            p = out / f"trajectory_{dataset}_{arch}.png"
            _fig_trajectories(traj, dataset, arch, p)
            figs.append((f"batch-size trajectories, {arch} on {dataset}", p.name))
    for _, name in figs:
        files[name] = out / name
    md = render_markdown(runset, t1, t2, t3, t3s, t4, runs_df, figs, bench_table, window, t4ref, goal)
    md = md.rstrip("\n") + "\n\n" + "\n".join(verdict.render(paired)) + "\n" if not paired.empty else md
    atomic_write_text(out / "report.md", md)
    files["report.md"] = out / "report.md"
    return {
        "out": out,
        "files": files,
        "table1": t1,
        "table2": t2,
        "table3": t3,
        "table3_summary": t3s,
        "table4": t4,
        "table4_vs_reference": t4ref,
        "goal": goal,
        "paired": paired,
        "runs": runs_df,
        "trajectories": traj,
        "notes": runset.notes,
    }


def render_markdown(runset: RunSet, t1, t2, t3, t3s, t4, runs_df, figs, bench, window, t4ref=None, goal=None) -> str:
    statuses = runs_df["status"].value_counts().to_dict()
    epochs = sorted(runs_df["epochs"].unique().tolist())
    shared = sorted({int(c) for c in runs_df["concurrent_runs"]})
    L = [
        "# Study report",
        "",
        f"{len(runset.runs)} runs from {', '.join(runset.sources)}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
        + ".",
        f"Epochs per run: {', '.join(map(str, epochs))} (the paper's numbers, shown beside ours, are for "
        f"{PAPER_EPOCHS} epochs on its own H100 setup).",
        "Devices: "
        + (", ".join(sorted({str(d) for d in runs_df["device_name"].dropna()})) or "not recorded")
        + ".",
        "",
        "## Conventions",
        "",
        "- Accuracy: final-epoch test accuracy (%); the best epoch's accuracy is shown beside it, never instead.",
        "- `±`: sample standard deviation over seeds (ddof=1); blank with one seed.",
        "- Δacc: mean final accuracy of the arm minus that of the fixed-batch arm of the same dataset, "
        "architecture and epochs.",
        "- Speedup: 1 - t / t_fixed paired per seed, mean ± std over the paired seeds (%). Throughput: mean "
        "t_fixed / mean t over the same seeds. t = training time, evaluation excluded.",
        "- Timing `shared xN`: the runs shared the device with N-1 other runs, so their times (and the "
        "speedups from them) are not solo speeds. "
        + (
            "All runs here ran solo."
            if shared == [1]
            else f"Concurrency seen here: {', '.join(map(str, shared))}."
        ),
        (
            "- Modelled solo time: per-step solo time from `deba bench` "
            f"({bench.source}) at each epoch's batch size (log-log interpolation) times the epoch's steps, summed."
            if bench is not None
            else "- No `--bench` file given: no modelled solo times."
        ),
        "",
    ]
    # Table 1 and 2
    L += ["## Table 1: calibrated thresholds (from the fixed-batch runs, seeds pooled)", ""]
    if t1.empty:
        L += ["Not available (needs deba.calibration and complete fixed-batch runs).", ""]
    else:
        L += [
            f"theta_stab = 75th percentile of dnorm, theta_conf = median of conf (window {window}), epochs 2..T; "
            "paper = its Table 1.",
            "",
            markdown_table(
                [
                    "dataset",
                    "arch",
                    "epochs",
                    "runs",
                    "theta_stab",
                    "paper",
                    "theta_conf (ratio)",
                    "paper",
                    "theta_conf (bounded)",
                ],
                [
                    [
                        r.dataset,
                        r.arch,
                        r.epochs,
                        r.n_runs,
                        _f(r.theta_stab, 3),
                        _f(r.paper_theta_stab, 2),
                        _f(r.theta_conf, 3),
                        _f(r.paper_theta_conf, 2),
                        _f(r.theta_conf_bounded, 3),
                    ]
                    for r in t1.itertuples()
                ],
            ),
            "",
        ]
    L += ["## Table 2: stability taxonomy (fixed-batch profiling)", ""]
    if t2.empty:
        L += ["Not available (needs deba.calibration and complete fixed-batch runs).", ""]
    else:
        dcols = [c for c in t2.columns if c.startswith("delta_acc[")]
        L += [
            "mu_S, sigma_S: mean and sample std (ddof=1) of the stability score S over the fixed runs' seeds; "
            "the paper profiled seeds 2, 42, 199.",
            "",
            markdown_table(
                [
                    "dataset",
                    "arch",
                    "runs",
                    "mu_S",
                    "paper",
                    "sigma_S",
                    "paper",
                    "class",
                    "paper class",
                    "prediction",
                    *[f"Δacc {c[10:-1]}" for c in dcols],
                    "paper Δacc",
                ],
                [
                    [
                        r["dataset"],
                        r["arch"],
                        r["n_runs"],
                        _f(r["mu_S"], 3),
                        _f(r["paper_mu_S"], 3),
                        _f(r["sigma_S"], 3),
                        _f(r["paper_sigma_S"], 3),
                        r["class"] or "",
                        r["paper_class"],
                        r["prediction"] or "",
                        *[_signed(r[c]) for c in dcols],
                        _signed(r["paper_delta_acc"], 1),
                    ]
                    for _, r in t2.iterrows()
                ],
            ),
            "",
        ]
    # Table 3
    L += ["## Table 3: ablations (Δacc and speedup vs fixed batch)", ""]
    if t3.empty:
        L += ["No DEBA arm that is the baseline or a single ablation of it, with a fixed arm to compare.", ""]
    else:
        L += [
            "Ablation columns as in the paper; a cooldown of c epochs in an E-epoch run is matched to the paper's "
            "column by c x 100 / E. Paper values: its Table 3 (CIFAR-10).",
            "",
            markdown_table(
                [
                    "dataset",
                    "epochs",
                    "preset",
                    "arch",
                    "ablation",
                    "setting",
                    "arm",
                    "n",
                    "Δacc",
                    "paper",
                    "speedup %",
                    "paper",
                    "timing",
                ]
                + (["modelled speedup %"] if bench is not None else []),
                [
                    [
                        r["dataset"],
                        r["epochs"],
                        r["preset"],
                        r["arch"],
                        ABLATION_TITLES[r["ablation"]],
                        r["setting"],
                        r["arm"],
                        r["n"],
                        _signed(r["delta_acc"]),
                        _signed(r["paper_delta_acc"]),
                        _pm(r["speedup_pct"], r["speedup_pct_std"], 1),
                        _f(r["paper_speedup_pct"], 1),
                        r["timing"],
                    ]
                    + ([_f(r["model_speedup_pct"], 1)] if bench is not None else [])
                    for _, r in t3.iterrows()
                ],
            ),
            "",
            markdown_table(
                [
                    "dataset",
                    "epochs",
                    "preset",
                    "ablation",
                    "degraded > 1 pt",
                    "paper",
                    "mean |Δacc|",
                    "paper",
                ],
                [
                    [
                        r["dataset"],
                        r["epochs"],
                        r["preset"],
                        ABLATION_TITLES[r["ablation"]],
                        r["degraded_gt_1pt"],
                        r["paper_degraded_gt_1pt"],
                        _f(r["mean_abs_delta_acc"]),
                        _f(r["paper_mean_abs_delta_acc"]),
                    ]
                    for _, r in t3s.iterrows()
                ],
            ),
            "",
        ]
    # Table 4
    L += [
        "## Table 4: accuracy and training time, every arm vs fixed batch",
        "",
        *(["Language models: the quality is the final validation loss in nats per token (lower is better); Δ is "
           "loss minus the baseline's, so negative is better; best-epoch is the lowest validation loss.", ""]
          if "metric" in t4.columns and "final_val_loss" in set(t4["metric"]) else []),
        "n counts complete runs; stopped or unfinished runs are listed under Runs and left out of the means. "
        "Paper values (beside ours, in the `paper` columns) are its Table 4: `Fixed` beside our fixed arm, `DEBA` "
        "beside each DEBA arm without ablation.",
        "",
    ]
    heads = [
        "dataset",
        "arch",
        "arm",
        "n",
        quality_label(list(t4["metric"]) if "metric" in t4.columns else []),
        "paper",
        "best-epoch " + quality_label(list(t4["metric"]) if "metric" in t4.columns else []),
        "Δacc" if "metric" not in t4.columns or "final_val_loss" not in set(t4["metric"]) else "Δ",
        "paper",
        "time s",
        "paper",
        "speedup %",
        "paper",
        "throughput",
        "paper",
        "acc %/s",
        "timing",
    ]
    if bench is not None:
        heads += ["modelled solo time s", "modelled speedup %", "modelled throughput"]
    rows = []
    for _, r in t4.iterrows():
        row = [
            r["dataset"],
            r["arch"],
            r["arm"],
            f"{r['n']}" + (f" (+{r['n_incomplete']} not complete)" if r["n_incomplete"] else ""),
            _pm(r["acc_mean"], r["acc_std"]),
            _pm(r["paper_acc"], r["paper_acc_std"]),
            _pm(r["best_acc_mean"], r["best_acc_std"]),
            _signed(r["delta_acc"]),
            _signed(r["paper_delta_acc"]),
            _pm(r["time_s_mean"], r["time_s_std"], 0),
            _pm(r["paper_time_s"], r["paper_time_s_std"], 0),
            _pm(r["speedup_pct"], r["speedup_pct_std"], 1),
            _pm(r["paper_speedup_pct"], r["paper_speedup_pct_std"], 1),
            _x(r["throughput"]),
            _x(r["paper_throughput"]),
            _f(r["acc_per_s"], 4),
            r["timing"],
        ]
        if bench is not None:
            row += [
                _pm(r["model_time_s_mean"], r["model_time_s_std"], 0),
                _pm(r["model_speedup_pct"], r["model_speedup_pct_std"], 1),
                _x(r["model_throughput"]),
            ]
        rows.append(row)
    L += [markdown_table(heads, rows), ""]
    L += _render_vs_reference(t4ref)
    L += _render_goal(goal)
    # figures
    if figs:
        L += ["## Figures", ""]
        for title, name in figs:
            L += [f"### {title}", "", f"![{title}]({name})", ""]
        L += [
            "Per-epoch values behind the figures: `epoch_time_by_batch.csv`, `grad_var_by_batch.csv`; every run's "
            "trajectory, epoch by epoch: `trajectories.csv`.",
            "",
        ]
    # runs
    L += [
        "## Runs",
        "",
        markdown_table(
            ["run", "status", quality_label(list(runs_df["metric"]) if "metric" in runs_df.columns else []),
             "best", "train s", "batch sizes", "up/down", "shared"],
            [
                [
                    r.run_id,
                    r.status,
                    _f(r.quality if hasattr(r, "quality") else r.final_test_acc),
                    _f(r.best_quality if hasattr(r, "best_quality") else r.best_test_acc),
                    _f(r.train_time_s, 0),
                    f"{r.start_batch_size} -> {r.final_batch_size} (max {r.max_batch_size})",
                    f"{r.increases}/{r.rollbacks}",
                    _timing_label(int(r.concurrent_runs)),
                ]
                for r in runs_df.itertuples()
            ],
        ),
        "",
    ]
    if runset.notes:
        L += ["## Notes", ""] + [f"- {n}" for n in runset.notes] + [""]
    return "\n".join(L)


def _render_vs_reference(t: pd.DataFrame | None) -> list[str]:
    L = ["## Every arm vs fixed-cosine (the baseline a practitioner would run)", ""]
    if t is None or t.empty:
        return L + ["No fixed-cosine arm (fixed B=64, cosine lr decay) to compare with.", ""]
    refs = sorted(set(t["reference_arm"]))
    L += [
        f"Reference arm: {', '.join(refs)}. Paired per seed over complete runs: Δacc = acc - acc_ref and "
        "time ratio = t / t_ref (below 1: faster), mean ± std over the paired seeds; steps ratio the same for the "
        "optimizer steps taken, which is what the time ratio becomes where a step takes the same time at every "
        "batch size (a launch-bound GPU, spec section 3), and does not depend on the machine. acc %/s = final accuracy "
        "/ training seconds, per run, averaged; it rewards any short run, so read it beside Δacc. Time to ref "
        "acc: training seconds until the first evaluated epoch at or above the reference's mean final "
        "accuracy (mean over the runs that got there; `reached` counts them).",
        "",
        markdown_table(
            [
                "dataset",
                "arch",
                "arm",
                "pairs",
                "acc %",
                "ref acc %",
                "Δacc vs ref",
                "time ratio",
                "steps ratio",
                "acc %/s",
                "ref acc %/s",
                "acc/s ratio",
                "reached",
                "time to ref acc s",
                "timing",
            ],
            [
                [
                    r["dataset"],
                    r["arch"],
                    r["arm"],
                    r["n_pairs"],
                    _f(r["acc_mean"]),
                    _f(r["reference_acc_mean"]),
                    ""
                    if r["arm"] == r["reference_arm"]
                    else _signed(r["delta_acc"])
                    + (f" ± {_f(r['delta_acc_std'])}" if _num(r["delta_acc_std"]) is not None else ""),
                    "" if r["arm"] == r["reference_arm"] else _pm(r["time_ratio"], r["time_ratio_std"], 3),
                    "" if r["arm"] == r["reference_arm"] else _pm(r["steps_ratio"], r["steps_ratio_std"], 3),
                    _f(r["acc_per_s"], 4),
                    _f(r["reference_acc_per_s"], 4),
                    _x(r["acc_per_s_ratio"]),
                    f"{r['reached_reference_acc']}/{r['n']}",
                    _f(r["time_to_reference_acc_s"], 0),
                    r["timing"],
                ]
                for _, r in t.iterrows()
            ],
        ),
        "",
    ]
    return L


def _render_goal(t: pd.DataFrame | None) -> list[str]:
    pct = round(100 * (1 - GOAL_MAX_RATIO))
    L = [
        f"## Goal check: at least {pct}% less training time than fixed B=64, accuracy equal or better",
        "",
    ]
    if t is None or t.empty:
        return L + ["No arm has a fixed-batch baseline to pair with.", ""]
    L += [
        f"Seed by seed against the baseline arm of the same architecture and epochs (goal_check.csv): a seed "
        f"passes when its final accuracy is at least the baseline's and its training time is at most "
        f"{GOAL_MAX_RATIO:g}x the baseline's; an arm meets the goal on an architecture with at least "
        f"{GOAL_MIN_SEEDS} passing seeds. Time counts only where it is comparable (both runs solo, or a "
        "modelled solo time from `deba bench` for both); runs that shared the device are judged on optimizer "
        "steps only, the machine-independent part of the time.",
        "",
        markdown_table(
            ["dataset", "arch", "arm", "vs", "pairs", "acc ≥ baseline", "time: seeds passing",
             "steps: seeds passing", "goal (time)", "goal (steps)", "per seed: Δacc, time ratio, steps ratio"],
            [
                [
                    r["dataset"],
                    r["arch"],
                    r["arm"],
                    r["baseline_arm"],
                    r["n_pairs"],
                    r["seeds_acc_at_least_baseline"],
                    f"{r['seeds_goal_time']}/{r['pairs_time_comparable']}"
                    if r["pairs_time_comparable"] else f"not comparable ({r['timing']})",
                    f"{r['seeds_goal_steps']}/{r['n_pairs']}",
                    "-" if r["goal_time"] is None else ("met" if r["goal_time"] else "no"),
                    "met" if r["goal_steps"] else "no",
                    r["per_seed"],
                ]
                for _, r in t.iterrows()
            ],
        ),
        "",
    ]
    for key, what in (("goal_time", "training time"), ("goal_steps", "optimizer steps")):
        met = t[t[key] == True]  # noqa: E712 (None, True, False)
        for arm in sorted(set(t["arm"])):
            archs = sorted(set(met.loc[met["arm"] == arm, "arch"]))
            judged = t[(t["arm"] == arm) & t[key].notna()]
            if len(judged):
                L.append(f"- {arm}, by {what}: meets the goal on {len(archs)} of {len(set(judged['arch']))} "
                         f"architecture(s){': ' + ', '.join(archs) if archs else ''} (the issue asks for three).")
    L.append("")
    return L


__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "PAPER_TABLE3_SUMMARY",
    "PAPER_TABLE4",
    "ABLATIONS",
    "RunLog",
    "RunSet",
    "BenchTable",
    "load_runs",
    "variant_of",
    "mean_std",
    "paired_speedup",
    "baseline_arms",
    "table4",
    "table_vs_reference",
    "table_goal",
    "GOAL_MAX_RATIO",
    "GOAL_MIN_SEEDS",
    "reference_arms",
    "time_to_accuracy",
    "total_steps",
    "DEFAULT_REFERENCE",
    "table3",
    "table3_summary",
    "tables_1_2",
    "runs_table",
    "trajectories",
    "build_report",
    "default_out",
    "markdown_table",
]
