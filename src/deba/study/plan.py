"""The runs of a study: expand a spec into RunPlans, shards, each run's status on disk, and the values a run
takes from other runs' finished results (max_batch_of, calibrate_from)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DebaError
from ..runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DECISIONS_FILE,
    EPOCHS_FILE,
    RUN_LOG_FILE,
    SUMMARY_FILE,
    is_finished,
    summary_status,
)
from ..runlock import LOCK_NAME, RunLock
from ..training.config import TrainConfig
from .spec import ARM_FILTER_KEYS, Dependency, StudySpec, _check_policy_thresholds

# keys that may differ between a run's saved config.json and the spec without making it another run:
# where it runs and how it reports, not what it computes
NON_IDENTITY_KEYS = {
    "schema_version",
    "out",
    "quiet",
    "concurrent_runs",
    "device",
    "tensorboard",
    "checkpoint_every",
    "data",
    "download",
    "run_name",
}
THRESHOLDS_NAME = "thresholds.json"  # where calibrate_from writes, in the dependent arm's directory
CHECKPOINT = CHECKPOINT_FILE


@dataclass
class RunPlan:
    run_id: str  # "dataset/arch/arm/seedN", also the run's directory under the study's --out
    dataset: str
    arch: str
    arm: str
    seed: int
    epochs: int
    # TrainConfig.to_dict() of the run, without out/quiet/concurrent_runs; a key set by a dependency holds
    # its spec form ({"max_batch_of": ARM}) until resolve_config() puts the value in
    config: dict[str, Any]
    deps: dict[str, Dependency] = field(default_factory=dict)

    def dir(self, out: Path) -> Path:
        return Path(out, *self.run_id.split("/"))

    @property
    def needs(self) -> list[str]:
        """Run ids this run waits for, each once, in order."""
        return list(dict.fromkeys(r for d in self.deps.values() for r in d.run_ids))

    def identity(self) -> dict[str, Any]:
        """The config keys that say what the run computes, as far as the spec fixes them (a dependency's value
        is fixed by the runs it reads, which are never redone)."""
        return {k: v for k, v in self.config.items() if k not in self.deps}


def _arm_runs_on(spec: StudySpec, arm: str, dataset: str, arch: str) -> bool:
    ov = spec.arms[arm]
    return ("datasets" not in ov or dataset in ov["datasets"]) and ("archs" not in ov or arch in ov["archs"])


def expand(spec: StudySpec) -> list[RunPlan]:
    """Every run of the grid, validated through TrainConfig, sorted by run id (the order shards use)."""
    plans: list[RunPlan] = []
    several_epochs = len(spec.epochs) > 1
    # names checked here, before any run starts (a user's 'pkg.mod:fn' model is imported by its run)
    from ..data.dataset import canonical_dataset_name
    from ..models import canonical_model_name

    from ..training.lm import is_text_dataset

    def dataset_name(name: str) -> str:  # text and shakespeare-char: language models (deba.training.lm)
        return name if is_text_dataset(name) else canonical_dataset_name(name)

    for what, names, check in (("datasets", spec.datasets, dataset_name),
                               ("archs", spec.archs, canonical_model_name)):
        for name in names:
            try:
                check(name)
            except DebaError as e:
                raise DebaError(f"{spec.source}: {what}: {e}") from None

    def arm_dir(arm: str, epochs: int) -> str:
        return f"{arm}-{epochs}ep" if several_epochs else arm

    for dataset in spec.datasets:
        for arch in spec.archs:
            for arm, ov in spec.arms.items():
                if not _arm_runs_on(spec, arm, dataset, arch):
                    continue
                arm_deps = spec.deps.get(arm, {})
                for key, (_kind, other) in arm_deps.items():
                    if not _arm_runs_on(spec, other, dataset, arch):
                        raise DebaError(
                            f"{spec.source}: arms.{arm}.{key} needs arm {other!r} on {dataset}/{arch}, "
                            "where that arm's datasets/archs filter leaves it out"
                        )
                arm_opts = {k: v for k, v in ov.items() if k not in ARM_FILTER_KEYS}
                for epochs in spec.epochs:
                    for seed in spec.seeds:
                        run_id = f"{dataset}/{arch}/{arm_dir(arm, epochs)}/seed{seed}"
                        d: dict[str, Any] = dict(spec.common)
                        if dataset in spec.data:
                            d["data"] = os.path.expandvars(os.path.expanduser(spec.data[dataset]))
                        d.update(spec.arch_overrides.get(arch, {}))
                        d.update(arm_opts)
                        d.update(arch=arch, dataset=dataset, seed=seed, epochs=epochs, run_name=run_id)
                        source = f"{spec.source}: run {run_id}"
                        # a dependency's key is validated with the value it would have without it; the
                        # resolved value is validated again before the run starts
                        cfg = TrainConfig.from_dict(d, source=source)
                        _check_policy_thresholds(cfg, source, thresholds_coming="thresholds" in arm_deps)
                        conf = cfg.to_dict()
                        for k in ("out", "quiet", "concurrent_runs"):
                            conf.pop(k, None)
                        deps = {}
                        for key, (kind, other) in arm_deps.items():
                            base = f"{dataset}/{arch}/{arm_dir(other, epochs)}"
                            seeds = [seed] if kind == "max_batch_of" else spec.seeds
                            deps[key] = Dependency(kind, other, tuple(f"{base}/seed{s}" for s in seeds))
                            conf[key] = deps[key].spec_form()
                        plans.append(RunPlan(run_id, dataset, arch, arm, seed, epochs, conf, deps))
    plans.sort(key=lambda p: p.run_id)
    if not plans:
        raise DebaError(f"{spec.source}: the grid is empty (every arm is restricted away)")
    return plans


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise DebaError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise DebaError(f"--shard {text}: need n >= 1 and 0 <= i <= n-1")
    return i, n


def shard_plans(plans: Sequence[RunPlan], shard: tuple[int, int] | None) -> list[RunPlan]:
    """Run k of the sorted list goes to shard k % n: every run in exactly one shard, archs interleaved."""
    if shard is None:
        return list(plans)
    i, n = shard
    return [p for k, p in enumerate(plans) if k % n == i]


# --- per-run state on disk -------------------------------------------------------------------------
def _read_json_quiet(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def config_conflicts(saved: Mapping[str, Any], planned: Mapping[str, Any]) -> list[str]:
    """Keys where a run's saved config.json says something else than the spec now does."""
    return sorted(
        k for k, v in planned.items() if k not in NON_IDENTITY_KEYS and k in saved and saved[k] != v
    )


def run_status(plan: RunPlan, out: Path, check_lock: bool = True) -> tuple[str, str]:
    """(status, detail). Status: complete, stopped (ended by the trainer, e.g. non-finite), running (locked by
    another process), conflict (made with another config), resumable (has a checkpoint), partial (files but no
    checkpoint: restarts from scratch), pending."""
    d = plan.dir(out)
    saved = _read_json_quiet(d / CONFIG_FILE)
    if saved is not None:
        diff = config_conflicts(saved, plan.identity())
        if diff:
            k = diff[0]
            return "conflict", f"{k}: {saved[k]!r} in {d / CONFIG_FILE}, {plan.config[k]!r} in the spec" + (
                f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            )
    summary = _read_json_quiet(d / SUMMARY_FILE) or {}
    status = summary_status(summary)
    if status == "complete":
        return "complete", _result_text(summary)
    if status.startswith(("stopped", "diverged")):
        return "stopped", status
    if check_lock and RunLock(d).is_held_elsewhere():
        return "running", f"locked by {RunLock(d).holder()}"
    if (d / CHECKPOINT).exists():
        done = summary.get("epochs_completed")
        return "resumable", f"checkpoint after epoch {done}" if done is not None else "checkpoint"
    if d.exists() and any(p.name not in (LOCK_NAME, RUN_LOG_FILE) for p in d.iterdir()):
        return "partial", "no checkpoint: restarts from scratch"
    return "pending", ""


# --- dependencies between runs ------------------------------------------------------------------------
def _run_dir(out: Path, run_id: str) -> Path:
    return Path(out, *run_id.split("/"))


def finished_summary(out: str | os.PathLike, run_id: str) -> dict | None:
    """The summary of a run that will not run again (complete, or stopped by the trainer), else None."""
    summary = _read_json_quiet(_run_dir(Path(out), run_id) / SUMMARY_FILE)
    if summary is None:
        return None
    return summary if is_finished(summary) else None


def unfinished_dependencies(plan: RunPlan, out: str | os.PathLike) -> list[str]:
    return [r for r in plan.needs if finished_summary(out, r) is None]


def _max_batch_size(out: Path, run_id: str) -> int:
    summary = finished_summary(out, run_id)
    if summary is None:
        raise DebaError(f"dependency {run_id} is not finished")
    value = summary.get("max_batch_size")
    if value is None and isinstance(summary.get("batch_sizes"), list):
        value = max((b for b in summary["batch_sizes"] if isinstance(b, int)), default=None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DebaError(f"{_run_dir(out, run_id) / SUMMARY_FILE}: no max_batch_size to start from")
    return value


def thresholds_path(plan: RunPlan, out: str | os.PathLike) -> Path:
    """Where the calibrated thresholds of a plan's arm (this dataset, arch, epochs) are written."""
    return plan.dir(Path(out)).parent / THRESHOLDS_NAME


def _signal_log_name(run_dir: Path) -> str:
    """Where a finished run's per-period signals are: decisions.jsonl for a run with decision periods (its
    epochs.jsonl then sums the periods up without signals), epochs.jsonl otherwise."""
    config = _read_json_quiet(run_dir / CONFIG_FILE) or {}
    return DECISIONS_FILE if config.get("decision_interval") else EPOCHS_FILE


def _calibrated_thresholds(plan: RunPlan, dep: Dependency, out: Path) -> Path:
    from ..calibration import calibrate, write_thresholds_file
    from ..logio import read_signal_log
    from ..policy import DEFAULT_PRESET, PRESETS

    for run_id in dep.run_ids:
        if finished_summary(out, run_id) is None:
            raise DebaError(f"dependency {run_id} is not finished")
    preset = plan.config.get("preset") or DEFAULT_PRESET
    conf_mode = PRESETS[preset]["conf_mode"]
    window = plan.config.get("window") or 15
    names = [f"{r}/{_signal_log_name(_run_dir(out, r))}" for r in dep.run_ids]
    logs = [read_signal_log(out / name) for name in names]
    report = calibrate(logs, window=window, conf_mode=conf_mode, names=names)
    path = thresholds_path(plan, out).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_thresholds_file(path, report, arch=plan.config.get("model") or plan.arch)
    return path


def resolve_config(plan: RunPlan, out: str | os.PathLike) -> dict[str, Any]:
    """The plan's config with each dependency's value put in; its dependencies must be finished. Writes the
    calibrated thresholds file where the arm asks for one. Bad or missing inputs raise DebaError."""
    out = Path(out)
    conf = dict(plan.config)
    for key, dep in plan.deps.items():
        if dep.kind == "max_batch_of":
            conf[key] = _max_batch_size(out, dep.run_ids[0])
        elif dep.kind == "calibrate_from":
            conf[key] = str(_calibrated_thresholds(plan, dep, out))
        else:  # pragma: no cover - parse_spec admits only DEPENDENCY_KINDS
            raise DebaError(f"unknown dependency kind {dep.kind!r}")
    if plan.deps:
        source = (
            f"run {plan.run_id} (with values from {', '.join(sorted({d.arm for d in plan.deps.values()}))})"
        )
        cfg = TrainConfig.from_dict(conf, source=source)
        _check_policy_thresholds(cfg, source)
    return conf


def _result_text(summary: Mapping[str, Any]) -> str:
    acc, t = summary.get("final_test_acc"), summary.get("train_time_s")
    loss = summary.get("final_val_loss")
    parts = []
    if isinstance(acc, (int, float)):
        parts.append(f"acc {acc:.2f}%")
    elif isinstance(loss, (int, float)):  # a language model: lower is better
        parts.append(f"val loss {loss:.4f}")
    if isinstance(t, (int, float)):
        parts.append(f"train {t:.0f}s")
    if summary.get("final_batch_size") is not None:
        parts.append(f"B {summary.get('batch_sizes', [None])[0]}->{summary['final_batch_size']}")
    return ", ".join(parts)


def plan_table(
    spec: StudySpec, out: str | os.PathLike, shard: tuple[int, int] | None = None
) -> list[tuple[RunPlan, str, str]]:
    """(run, status, detail) for the runs of a shard; a pending run whose dependencies are not finished is
    ``waiting``, naming the first such dependency and whether this shard runs it."""
    out = Path(out)
    plans = shard_plans(expand(spec), shard)
    here = {p.run_id for p in plans}
    rows = []
    for p in plans:
        status, detail = run_status(p, out)
        if status == "pending":
            missing = unfinished_dependencies(p, out)
            if missing:
                missing.sort(key=lambda r: r in here)  # the ones this shard will not run first
                named = [f"{r} ({'this shard' if r in here else 'another shard'})" for r in missing[:2]]
                more = f" and {len(missing) - 2} more" if len(missing) > 2 else ""
                status, detail = "waiting", "needs " + ", ".join(named) + more
        rows.append((p, status, detail))
    return rows
