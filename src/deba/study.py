"""Grids of training runs: expand a study spec into runs, run them as subprocesses (several at once on one
device), resume what was interrupted, split the grid into shards, and pack the logs into one archive.

A spec is a YAML mapping::

    name: quick
    epochs: 30                      # or a list: the grid gains an epochs axis
    datasets: [cifar10]
    archs: [resnet18, mobilenet_v3_large]
    seeds: [2, 42, 199]
    common: {lr: 0.01}              # TrainConfig keys for every run
    data: {cifar10: data/cifar10-jpeg.npz}   # optional `data` per dataset
    arch_overrides: {vit_b_16: {micro_batch: 128}}
    arms:                           # arm name -> TrainConfig overrides
      fixed: {policy: fixed}
      paper: {policy: deba, preset: paper}
      universal: {policy: deba, preset: paper, universal_thresholds: true, datasets: [cifar10]}

Inside an arm, ``datasets`` / ``archs`` restrict where that arm runs (Table 3's ablations are CIFAR-10
only). Precedence, lowest first: common, data, arch_overrides, arm. Every run is a directory
``OUT/<dataset>/<arch>/<arm>/seed<seed>`` (``<arm>-<epochs>ep`` when the spec lists several epochs).

An arm may take a value from other arms' finished runs of the same dataset, architecture and epochs::

    fixed-large: {policy: fixed, start_batch: {max_batch_of: paper-bounded}}     # same seed's max_batch_size
    calibrated: {policy: deba, preset: paper-bounded, thresholds: {calibrate_from: fixed}}

``max_batch_of: ARM`` (for start_batch, b_min, b_max) is the largest batch size the run of ARM with the same
seed trained at (its summary's ``max_batch_size``). ``calibrate_from: ARM`` (for thresholds) calibrates
theta_stab / theta_conf from the epochs.jsonl of ARM's runs of every seed (deba.calibration, seeds pooled;
conf read as the arm's preset reads it, window the arm's), written to
``OUT/<dataset>/<arch>/<arm>/thresholds.json``. A run whose dependencies are not finished waits for them: it
is started after them, or, where they are in another shard or run by another process, reported as
``waiting`` and left for a later invocation.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import DebaError, option
from .policy.registry import POLICIES
from .logio import atomic_write_text, check_output_file, dumps, make_dir, read_text_input
from .runfolder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DECISIONS_FILE,
    EPOCHS_FILE,
    PACKED_FILES,
    RUN_LOG_FILE,
    RUN_OUTPUTS,  # noqa: F401 (deba.study.RUN_OUTPUTS, as before)
    SUMMARY_FILE,
    is_complete,
    is_finished,
    read_archive_runs,
    summary_status,
)
from .runlock import LOCK_FD_ENV, LOCK_NAME, RunLock
from .training.config import TrainConfig

SPEC_KEYS = (
    "name",
    "description",
    "epochs",
    "datasets",
    "archs",
    "seeds",
    "common",
    "data",
    "arch_overrides",
    "arms",
)
# keys the grid sets itself; a spec that sets them elsewhere is ambiguous
GRID_KEYS = ("arch", "dataset", "seed", "epochs", "out", "run_name", "quiet", "concurrent_runs")
ARM_FILTER_KEYS = ("datasets", "archs")
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
# arm values resolved from other arms' finished runs: kind -> the TrainConfig keys it may set
DEPENDENCY_KINDS = {"max_batch_of": ("start_batch", "b_min", "b_max"), "calibrate_from": ("thresholds",)}
THRESHOLDS_NAME = "thresholds.json"  # where calibrate_from writes, in the dependent arm's directory
# RUN_OUTPUTS, PACKED_FILES: deba.runfolder (imported above)
SPEC_COPY = "study.yaml"
RUN_CONFIG = "study-config.json"  # what the study hands to `deba train --config`
CHECKPOINT = CHECKPOINT_FILE
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# exit codes of `deba study`
EXIT_OK, EXIT_FAILED, EXIT_TIME_LIMIT, EXIT_WAITING = 0, 1, 3, 4


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "deba", "train"]


# --- the spec --------------------------------------------------------------------------------------
@dataclass
class StudySpec:
    name: str
    epochs: list[int]
    datasets: list[str]
    archs: list[str]
    seeds: list[int]
    arms: dict[str, dict[str, Any]]
    common: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    arch_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str | None = None
    source: str = "spec"
    text: str = ""
    # arm -> TrainConfig key -> (dependency kind, the arm it reads); those keys are not in ``arms``
    deps: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Dependency:
    """A config value of a run that comes from other runs once they are finished."""

    kind: str  # one of DEPENDENCY_KINDS
    arm: str  # the arm whose runs it reads
    run_ids: tuple[str, ...]  # those runs (one for max_batch_of, every seed for calibrate_from)

    def spec_form(self) -> dict[str, str]:
        return {self.kind: self.arm}


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


def _need_list(d: Mapping, key: str, source: str, kind: type) -> list:
    v = d.get(key)
    if v is None:
        raise DebaError(f"{source}: missing {key!r} (a list)")
    if not isinstance(v, list):
        v = [v]
    if not v:
        raise DebaError(f"{source}: {key!r} is empty")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, kind):
            raise DebaError(f"{source}: {key!r} entries must be {kind.__name__}s, got {x!r}")
    if len(set(v)) != len(v):
        raise DebaError(f"{source}: {key!r} lists a value twice")
    return list(v)


def _need_mapping(v: Any, what: str, source: str, options: bool = False) -> dict:
    """A mapping from the spec; ``options``: TrainConfig keys, where dashes and underscores are one."""
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise DebaError(f"{source}: {what} must be a mapping, got {type(v).__name__}")
    return {(str(k).replace("-", "_") if options else str(k)): val for k, val in v.items()}


def _check_name(name: str, what: str, source: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise DebaError(
            f"{source}: {what} name {name!r} must be letters, digits, '.', '_', '+' or '-' "
            "(it becomes a directory name)"
        )


def parse_spec(data: Any, source: str = "spec", text: str = "") -> StudySpec:
    if not isinstance(data, Mapping):
        raise DebaError(f"{source}: a study spec must be a mapping")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise DebaError(
            f"{source}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(SPEC_KEYS)})"
        )
    name = data.get("name") or Path(source).stem
    _check_name(str(name), "study", source)
    epochs = _need_list(data, "epochs", source, int)
    if any(e < 1 for e in epochs):
        raise DebaError(f"{source}: epochs must be >= 1")
    datasets = _need_list(data, "datasets", source, str)
    archs = _need_list(data, "archs", source, str)
    seeds = _need_list(data, "seeds", source, int)
    for d in datasets:
        _check_name(d, "dataset", source)
    for a in archs:
        _check_name(a, "architecture", source)
    common = _need_mapping(data.get("common"), "common", source, options=True)
    arch_overrides = _need_mapping(data.get("arch_overrides"), "arch_overrides", source)
    for a, ov in arch_overrides.items():  # overrides for archs outside this grid are kept, unused
        arch_overrides[a] = _need_mapping(ov, f"arch_overrides.{a}", source, options=True)
    data_paths = _need_mapping(data.get("data"), "data", source)
    for d, p in data_paths.items():
        if not isinstance(p, str):
            raise DebaError(f"{source}: data.{d} must be a path string")
    arms_raw = data.get("arms")
    if not arms_raw:
        raise DebaError(f"{source}: missing 'arms' (a mapping of arm name to training options)")
    arms = {}
    for arm, ov in _need_mapping(arms_raw, "arms", source).items():
        _check_name(arm, "arm", source)
        ov = _need_mapping(ov, f"arms.{arm}", source, options=True)
        for key in ARM_FILTER_KEYS:
            if key in ov:
                # names outside the grid are allowed: narrowing `archs` must not break the arms' filters
                ov[key] = _need_list(ov, key, f"{source}: arms.{arm}", str)
        arms[arm] = ov
    deps = _parse_dependencies(arms, source)
    for where, mapping in [("common", common)] + [
        (f"arch_overrides.{a}", m) for a, m in arch_overrides.items()
    ]:
        for key, v in mapping.items():
            if isinstance(v, Mapping) and set(v) & set(DEPENDENCY_KINDS):
                raise DebaError(
                    f"{source}: {where}.{key} depends on other runs; only an arm may (put it in the arm)"
                )
    for where, mapping in (
        [("common", common)]
        + [(f"arch_overrides.{a}", m) for a, m in arch_overrides.items()]
        + [(f"arms.{a}", m) for a, m in arms.items()]
    ):
        clash = [k for k in GRID_KEYS if k in mapping]
        if clash:
            raise DebaError(
                f"{source}: {where} sets {', '.join(clash)}, which the grid sets itself "
                "(use the spec's top-level epochs / datasets / archs / seeds)"
            )
    return StudySpec(
        name=str(name),
        epochs=epochs,
        datasets=datasets,
        archs=archs,
        seeds=seeds,
        arms=arms,
        common=common,
        data=data_paths,
        arch_overrides=arch_overrides,
        description=data.get("description"),
        source=source,
        text=text,
        deps=deps,
    )


def _parse_dependencies(
    arms: dict[str, dict[str, Any]], source: str
) -> dict[str, dict[str, tuple[str, str]]]:
    """Take the ``{kind: ARM}`` values out of the arms (in place), check them, and refuse cycles."""
    deps: dict[str, dict[str, tuple[str, str]]] = {}
    for arm, ov in arms.items():
        for key in list(ov):
            v = ov[key]
            if not isinstance(v, Mapping):
                continue
            where = f"{source}: arms.{arm}.{key}"
            v = {str(k).replace("-", "_"): x for k, x in v.items()}  # as for option names
            if len(v) != 1 or next(iter(v)) not in DEPENDENCY_KINDS:
                raise DebaError(
                    f"{where}: a mapping here must be one dependency, "
                    + " or ".join(f"{{{k}: ARM}}" for k in DEPENDENCY_KINDS)
                    + f", got {dict(v)!r}"
                )
            kind, other = next(iter(v.items()))
            if key not in DEPENDENCY_KINDS[kind]:
                raise DebaError(f"{where}: {kind} can set {', '.join(DEPENDENCY_KINDS[kind])}, not {key}")
            if not isinstance(other, str) or other not in arms:
                raise DebaError(
                    f"{where}: {kind} names arm {other!r}, which the spec does not define "
                    f"(arms: {', '.join(arms)})"
                )
            if other == arm:
                raise DebaError(f"{where}: an arm cannot depend on itself")
            deps.setdefault(arm, {})[key] = (kind, other)
            del ov[key]
        kinds = {k for k, _ in deps.get(arm, {}).values()}
        if "calibrate_from" in kinds:
            if not _uses_thresholds(ov.get("policy", "deba")):
                readers = " or ".join(n for n in POLICIES if _uses_thresholds(n))
                raise DebaError(f"{source}: arms.{arm}: calibrated thresholds need policy {readers}")
            explicit = [k for k in ("theta_stab", "theta_conf", "universal_thresholds") if ov.get(k)]
            if explicit:
                raise DebaError(
                    f"{source}: arms.{arm}: thresholds from calibrate_from and {', '.join(explicit)} "
                    "both set the thresholds; keep one"
                )

    def visit(arm: str, path: list[str]) -> None:
        for _, other in deps.get(arm, {}).values():
            if other in path:
                cycle = " -> ".join(path[path.index(other) :] + [other])
                raise DebaError(f"{source}: arms depend on each other in a cycle ({cycle})")
            visit(other, path + [other])

    for arm in deps:
        visit(arm, [arm])
    return deps


def arm_depths(spec: StudySpec) -> dict[str, int]:
    """0 for an arm without dependencies, else 1 + the deepest arm it depends on (the order runs start in)."""
    depth: dict[str, int] = {}

    def of(arm: str) -> int:
        if arm not in depth:
            depth[arm] = 1 + max((of(o) for _, o in spec.deps.get(arm, {}).values()), default=-1)
        return depth[arm]

    for arm in spec.arms:
        of(arm)
    return depth


def load_spec(path: str | os.PathLike, data_overrides: Mapping[str, str] | None = None) -> StudySpec:
    path = Path(path)
    import yaml

    text = read_text_input(path, "study spec", "a study spec is YAML")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DebaError(f"{path}: cannot parse YAML ({str(e).splitlines()[0]})") from None
    spec = parse_spec(data, source=str(path), text=text)
    for d, p in (data_overrides or {}).items():
        if d not in spec.datasets:
            raise DebaError(
                f"--data {d}=...: {d!r} is not one of the spec's datasets ({', '.join(spec.datasets)})"
            )
        spec.data[d] = p
    return spec


def _uses_thresholds(policy: Any) -> bool:
    spec = POLICIES.get(policy) if isinstance(policy, str) else None
    return spec is not None and spec.uses_thresholds


def _check_policy_thresholds(cfg: TrainConfig, source: str, thresholds_coming: bool = False) -> None:
    """A DEBA run on a model the presets have no thresholds for would fail only once started: fail now."""
    if cfg.policy != "deba" or cfg.thresholds or cfg.model or thresholds_coming:
        return  # the DEBA presets are what hold per-architecture thresholds
    from .policy import DEFAULT_PRESET, deba_config

    try:
        deba_config(
            cfg.preset or DEFAULT_PRESET,
            cfg.arch,
            universal_thresholds=cfg.universal_thresholds,
            theta_stab=cfg.theta_stab,
            theta_conf=cfg.theta_conf,
            cooldown=cfg.cooldown,
            window=cfg.window,
        )
    except (ValueError, TypeError) as e:
        raise DebaError(f"{source}: {e}") from None


def _arm_runs_on(spec: StudySpec, arm: str, dataset: str, arch: str) -> bool:
    ov = spec.arms[arm]
    return ("datasets" not in ov or dataset in ov["datasets"]) and ("archs" not in ov or arch in ov["archs"])


def expand(spec: StudySpec) -> list[RunPlan]:
    """Every run of the grid, validated through TrainConfig, sorted by run id (the order shards use)."""
    plans: list[RunPlan] = []
    several_epochs = len(spec.epochs) > 1
    # names checked here, before any run starts (a user's 'pkg.mod:fn' model is imported by its run)
    from .data.dataset import canonical_dataset_name
    from .models import canonical_model_name

    from .training.lm import is_text_dataset

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
    from .calibration import calibrate, write_thresholds_file
    from .logio import read_signal_log
    from .policy import DEFAULT_PRESET, PRESETS

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


def _clear_partial(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name in (LOCK_NAME, RUN_LOG_FILE):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# --- running -----------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    run_id: str
    status: (
        str  # complete, stopped, failed, interrupted, skipped-running, conflict, (and the run_status ones)
    )
    detail: str = ""
    seconds: float | None = None


@dataclass
class StudyResult:
    outcomes: list[RunOutcome]
    exit_code: int
    time_limit_hit: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


@dataclass
class _Active:
    plan: RunPlan
    proc: subprocess.Popen
    lock: RunLock
    log: io.TextIOBase
    started: float
    resumed: bool


def _launch(
    plan: RunPlan,
    out: Path,
    concurrent: int,
    train_command: Sequence[str],
    lock: RunLock,
    resume: bool,
    config: Mapping[str, Any] | None = None,
) -> _Active:
    d = plan.dir(out)
    if not resume:
        _clear_partial(d)
    conf = dict(plan.config if config is None else config, concurrent_runs=concurrent)
    atomic_write_text(d / RUN_CONFIG, dumps({"schema_version": 1, **conf}, indent=2) + "\n")
    cmd = [*train_command, "--config", str(d / RUN_CONFIG), "--out", str(d), "--quiet"]
    if resume:
        cmd.append("--resume")
    log = open(d / RUN_LOG_FILE, "a", encoding="utf-8")
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {' '.join(cmd)}\n")
    log.flush()
    # the child adopts the study's lock on the run folder (deba.runlock): one lock, not two refusing each other
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{LOCK_FD_ENV: str(lock.fd)})
    try:
        # a session of its own: the study decides when its runs stop (and stops their workers with them)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=(lock.fd,),
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    except OSError:
        log.close()
        raise
    return _Active(plan, proc, lock, log, time.monotonic(), resume)


def _die_with_parent(parent: int) -> None:
    """In the child before exec: ask Linux to SIGKILL it when the study dies (PR_SET_PDEATHSIG), so a study
    killed with SIGKILL leaves no training running that its rerun would start again beside. Elsewhere a
    no-op: the run folder's lock (held by the orphan) still keeps a rerun from starting the same run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the study died before the request took effect
        os._exit(1)


def _stop(active: _Active, grace_s: float = 30.0) -> None:
    """Stop a run we started (its whole process group: workers too), politely first."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if active.proc.poll() is not None:
            return
        try:
            os.killpg(active.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            active.proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _finish(active: _Active, out: Path, interrupted: bool = False) -> RunOutcome:
    rc = active.proc.wait()
    secs = time.monotonic() - active.started
    active.log.write(f"# exit code {rc}\n")
    active.log.close()
    active.lock.release()
    summary = _read_json_quiet(active.plan.dir(out) / SUMMARY_FILE) or {}
    status = summary_status(summary)
    if status == "complete":
        return RunOutcome(active.plan.run_id, "complete", _result_text(summary), secs)
    if status.startswith(("stopped", "diverged")):
        return RunOutcome(active.plan.run_id, "stopped", status, secs)
    if interrupted:
        return RunOutcome(active.plan.run_id, "interrupted", "time limit: resumes next time", secs)
    tail = _log_tail(active.plan.dir(out) / RUN_LOG_FILE)
    return RunOutcome(active.plan.run_id, "failed", f"exit code {rc}" + (f": {tail}" if tail else ""), secs)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("# ")]
    return lines[-1][:200] if lines else ""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    *,
    parallel: int = 1,
    shard: tuple[int, int] | None = None,
    train_command: Sequence[str] | None = None,
    time_limit_s: float | None = None,
    poll_s: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run every unfinished run of (this shard of) the grid, ``parallel`` at a time.

    Finished runs (summary status complete, or stopped by the trainer) are never redone; a run with a
    checkpoint resumes from it; any other started run restarts from scratch. Runs locked by another study
    process are left to it. A failed run is reported and does not stop the others. With ``time_limit_s``,
    no run starts after the limit and running ones are stopped at it (they resume next time).

    A run with dependencies (see the module docstring) starts once the runs it needs are finished; runs
    without dependencies go first. Where a needed run is not in this invocation (another shard, another
    process) and not finished, the run is ``waiting`` (exit code EXIT_WAITING: run again later); where a
    needed run failed here, it is ``blocked``.
    """
    if parallel < 1:
        raise DebaError(f"{option('parallel')} must be >= 1, got {parallel}")
    log = log or (lambda s: print(s, flush=True))
    out = Path(out)
    train_command = list(train_command or default_train_command())
    plans = shard_plans(expand(spec), shard)
    conflicts = [(p, run_status(p, out, check_lock=False)) for p in plans]
    conflicts = [(p, st) for p, st in conflicts if st[0] == "conflict"]
    if conflicts:
        p, (_, detail) = conflicts[0]
        raise DebaError(
            f"run {p.run_id} in {out} was made with another config ({detail}); use another --out "
            f"or delete that run" + (f" ({len(conflicts)} runs conflict)" if len(conflicts) > 1 else "")
        )
    for d, path in spec.data.items():
        if d in spec.datasets and not Path(os.path.expandvars(os.path.expanduser(path))).exists():
            raise DebaError(f"data for {d} not found: {path} (set it with --data {d}=PATH)")
    make_dir(out, "study folder")
    if spec.text:
        atomic_write_text(out / SPEC_COPY, spec.text)

    outcomes: dict[str, RunOutcome] = {}
    queue: list[RunPlan] = []
    for p in plans:
        st, detail = run_status(p, out)
        if st in ("complete", "stopped"):
            outcomes[p.run_id] = RunOutcome(p.run_id, st, detail)
        else:
            queue.append(p)
    depth = arm_depths(spec)
    # arms first that others read from; within a depth, the runs some queued run needs first, so the
    # dependent runs can start as soon as possible (and a --time-limit shard ends with fewer left waiting)
    needed = {rid for p in queue for rid in p.needs}
    queue.sort(key=lambda p: (depth[p.arm], p.run_id not in needed))  # stable: run-id order within
    concurrent = max(1, min(parallel, len(queue)))
    log(
        f"study {spec.name}: {len(plans)} runs in this {'shard' if shard else 'grid'}, "
        f"{len(plans) - len(queue)} finished, {len(queue)} to run, {concurrent} at a time"
    )
    active: list[_Active] = []
    started = time.monotonic()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # `kill` or a job scheduler's SIGTERM must not orphan the runs: turn it into the Ctrl-C path below
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    time_limit_hit = False
    n_started = 0
    try:
        while queue or active:
            over = time_limit_s is not None and time.monotonic() - started >= time_limit_s
            if over and not time_limit_hit:
                time_limit_hit = True
                log(
                    f"time limit of {time_limit_s:.0f}s reached: stopping {len(active)} running run(s), "
                    f"{len(queue)} not started"
                )
                for a in active:
                    _stop(a)
                for a in active:
                    o = _finish(a, out, interrupted=True)
                    outcomes[o.run_id] = o
                    log(f"  {o.status:11s} {o.run_id}  {o.detail}")
                active = []
                for p in queue:
                    outcomes[p.run_id] = RunOutcome(p.run_id, "not-started", "time limit")
                queue = []
                break
            while queue and len(active) < parallel:
                p, held = _next_startable(queue, active, outcomes, out)
                if p is None:
                    break
                if held is not None:
                    outcomes[p.run_id] = held
                    log(f"  {held.status:11s} {p.run_id}  {held.detail}")
                    continue
                d = p.dir(out)
                lock = RunLock(d)
                if not lock.acquire():
                    outcomes[p.run_id] = RunOutcome(p.run_id, "skipped-running", f"locked by {lock.holder()}")
                    log(f"  skip        {p.run_id}  (another process runs it: {lock.holder()})")
                    continue
                st, detail = run_status(p, out, check_lock=False)  # another process may have finished it
                if st in ("complete", "stopped"):
                    lock.release()
                    outcomes[p.run_id] = RunOutcome(p.run_id, st, detail)
                    continue
                resume = st == "resumable"
                try:
                    config = resolve_config(p, out) if p.deps else None
                except DebaError as e:
                    lock.release()
                    outcomes[p.run_id] = RunOutcome(p.run_id, "failed", f"cannot resolve dependencies: {e}")
                    log(f"  failed      {p.run_id}  cannot resolve dependencies: {e}")
                    continue
                try:
                    a = _launch(p, out, concurrent, train_command, lock, resume, config)
                except OSError as e:
                    lock.release()
                    outcomes[p.run_id] = RunOutcome(p.run_id, "failed", f"cannot start: {e}")
                    log(f"  failed      {p.run_id}  cannot start: {e}")
                    continue
                active.append(a)
                n_started += 1
                log(f"  {'resume' if resume else 'start':11s} {p.run_id}")
            if not active:
                if queue:  # every run left waits for a run that cannot start here (guard; cycles are refused)
                    for p in queue:
                        outcomes[p.run_id] = RunOutcome(p.run_id, "waiting", "dependencies cannot start here")
                    queue = []
                continue
            time.sleep(poll_s)
            still = []
            for a in active:
                if a.proc.poll() is None:
                    still.append(a)
                    continue
                o = _finish(a, out)
                outcomes[o.run_id] = o
                log(f"  {o.status:11s} {o.run_id}  {o.detail}")
            active = still
    except BaseException:
        for (
            a
        ) in active:  # Ctrl-C, SIGTERM or an error of ours: leave no run of ours behind, each one resumable
            _stop(a, grace_s=10.0)
            a.log.close()
            a.lock.release()
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    ordered = [outcomes[p.run_id] for p in plans if p.run_id in outcomes]
    failed = sum(o.status in ("failed", "blocked") for o in ordered)
    waiting = sum(o.status == "waiting" for o in ordered)
    code = (
        EXIT_FAILED if failed else EXIT_TIME_LIMIT if time_limit_hit else EXIT_WAITING if waiting else EXIT_OK
    )
    return StudyResult(ordered, code, time_limit_hit)


# statuses of runs of this invocation that will not finish in it
_NOT_FINISHING = ("failed", "blocked", "waiting", "conflict", "interrupted", "not-started")


def _next_startable(
    queue: list[RunPlan], active: Sequence[_Active], outcomes: Mapping[str, RunOutcome], out: Path
) -> tuple[RunPlan | None, RunOutcome | None]:
    """Take the first queued run that can be decided now: (run, None) to start it, (run, outcome) for a run
    that cannot run in this invocation (removed from the queue either way), (None, None) when every queued
    run waits for a queued or running one."""
    pending = {p.run_id for p in queue} | {a.plan.run_id for a in active}
    for i, p in enumerate(queue):
        held: RunOutcome | None = None
        wait_here = False
        for rid in unfinished_dependencies(p, out):
            if rid in pending:
                wait_here = True
                continue
            o = outcomes.get(rid)
            if o is not None and o.status in ("failed", "blocked", "conflict"):
                held = RunOutcome(p.run_id, "blocked", f"needs {rid}, which {o.status} here")
            elif o is not None and o.status == "skipped-running":
                held = RunOutcome(p.run_id, "waiting", f"needs {rid}, which another process is running")
            elif o is not None and o.status in _NOT_FINISHING:
                held = RunOutcome(p.run_id, "waiting", f"needs {rid}, which {o.status} here")
            else:
                held = RunOutcome(
                    p.run_id,
                    "waiting",
                    f"needs {rid}, which is not finished and not in this invocation (another shard?)",
                )
            break
        if held is not None:
            queue.pop(i)
            return p, held
        if not wait_here:
            queue.pop(i)
            return p, None
    return None, None


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


# --- packing --------------------------------------------------------------------------------------
def pack_study(spec: StudySpec, out: str | os.PathLike, archive: str | os.PathLike) -> int:
    """Write the logs of every run of the grid found under ``out`` (all shards; no checkpoints) and the spec
    into one .tar.gz, paths relative to ``out`` (so `--restore` or `tar -C OUT -x` puts them back). Returns
    the number of runs packed."""
    out, archive = Path(out), Path(archive)
    check_output_file(archive, "--pack archive")
    make_dir(archive.parent, "folder for the --pack archive")
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            spec_text = (
                (out / SPEC_COPY).read_text(encoding="utf-8") if (out / SPEC_COPY).is_file() else spec.text
            )
            if spec_text:
                _add_bytes(tar, SPEC_COPY, spec_text.encode("utf-8"))
            thresholds_done: set[Path] = set()
            for p in expand(spec):
                d = p.dir(out)
                files = [d / f for f in PACKED_FILES if (d / f).is_file()]
                if not any(f.name == SUMMARY_FILE for f in files):
                    continue
                n += 1
                for f in files:
                    tar.add(f, arcname=f"{p.run_id}/{f.name}", recursive=False)
                th = thresholds_path(p, out)
                if "thresholds" in p.deps and th not in thresholds_done and th.is_file():
                    # what the calibrated arm's runs were given (restore recomputes it from the packed logs)
                    thresholds_done.add(th)
                    tar.add(th, arcname=th.relative_to(out).as_posix(), recursive=False)
        os.replace(tmp, archive)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def restore_archives(archives: Iterable[str | os.PathLike], out: str | os.PathLike) -> int:
    """Put the finished runs of earlier packs back under ``out`` so this study skips them (results from
    earlier sessions accumulate). Runs already complete here are left alone. Returns runs restored."""
    out = Path(out)
    restored = 0
    for archive in archives:
        runs = read_archive_runs(archive)
        for run_id, files in runs.items():
            summary = json.loads(files[SUMMARY_FILE]) if SUMMARY_FILE in files else {}
            if not is_complete(summary):
                continue
            d = Path(out, *PurePosixPath(run_id).parts)
            local = _read_json_quiet(d / SUMMARY_FILE) or {}
            if is_complete(local):
                continue
            d.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                if name in PACKED_FILES:
                    atomic_write_text(d / name, text)
            restored += 1
    return restored


__all__ = [
    "StudySpec",
    "Dependency",
    "DEPENDENCY_KINDS",
    "RunPlan",
    "RunLock",
    "RunOutcome",
    "StudyResult",
    "load_spec",
    "parse_spec",
    "expand",
    "parse_shard",
    "shard_plans",
    "run_status",
    "run_study",
    "plan_table",
    "pack_study",
    "restore_archives",
    "read_archive_runs",
    "default_train_command",
    "config_conflicts",
    "arm_depths",
    "finished_summary",
    "unfinished_dependencies",
    "resolve_config",
    "thresholds_path",
    "EXIT_WAITING",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_TIME_LIMIT",
]
