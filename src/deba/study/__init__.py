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

The package, one job per module: ``spec`` (parse and check a spec), ``plan`` (expand it into runs, shards,
each run's status on disk, values from other runs), ``runner`` (run_study: the `deba train` children, locks,
time limit, outcomes), ``pack`` (pack and restore archives). Every name is re-exported here as
``deba.study.X``.
"""

from __future__ import annotations

from ..runfolder import PACKED_FILES, RUN_OUTPUTS, read_archive_runs
from ..runlock import RunLock
from .pack import pack_study, restore_archives
from .plan import (
    CHECKPOINT,
    NON_IDENTITY_KEYS,
    THRESHOLDS_NAME,
    RunPlan,
    _result_text,
    config_conflicts,
    expand,
    finished_summary,
    parse_shard,
    plan_table,
    resolve_config,
    run_status,
    shard_plans,
    thresholds_path,
    unfinished_dependencies,
)
from .runner import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIME_LIMIT,
    EXIT_WAITING,
    RUN_CONFIG,
    RunOutcome,
    StudyResult,
    default_train_command,
    run_study,
)
from .spec import (
    ARM_FILTER_KEYS,
    DEPENDENCY_KINDS,
    GRID_KEYS,
    SPEC_COPY,
    SPEC_KEYS,
    Dependency,
    StudySpec,
    arm_depths,
    load_spec,
    parse_spec,
)

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
    # also deba.study.X, as before the split
    "SPEC_KEYS",
    "GRID_KEYS",
    "ARM_FILTER_KEYS",
    "NON_IDENTITY_KEYS",
    "THRESHOLDS_NAME",
    "SPEC_COPY",
    "RUN_CONFIG",
    "CHECKPOINT",
    "PACKED_FILES",
    "RUN_OUTPUTS",
    "_result_text",
]
