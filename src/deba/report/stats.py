"""Statistics over runs: mean ± sample std, paired speedups, the bench's modelled solo time, the arms a group
is compared with, time to an accuracy, optimizer steps."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import DebaError
from ..logio import read_text_input
from ..policy import canonical_arch
from .runs import RunLog, _num, _parse_jsonl, not_worse

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


# --- arms, groups, time to accuracy, steps ----------------------------------------------------------
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


def _by_group(runs: Sequence[RunLog]) -> dict[tuple[str, str, int, str], list[RunLog]]:
    g: dict[tuple[str, str, int, str], list[RunLog]] = {}
    for r in runs:
        g.setdefault((r.dataset, r.arch, r.epochs, r.arm), []).append(r)
    return g


def _timing_label(n: int) -> str:
    return "solo" if n <= 1 else f"shared x{n}"



def _first_per_seed(runs: Sequence[RunLog], key: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in runs:
        v = r.quality if key == "final_test_acc" else _num(r.summary.get(key))  # the quality, of either kind
        if v is not None:
            out.setdefault(r.seed, v)
    return out


__all__ = [
    "mean_std",
    "paired_speedup",
    "BenchTable",
    "baseline_arms",
    "reference_arms",
    "DEFAULT_REFERENCE",
    "time_to_accuracy",
    "total_steps",
]
