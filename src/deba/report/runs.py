"""Loading runs: every run of study folders and `deba study --pack` archives (read through deba.runfolder), with
what its config says it is (arm, variant, preset, Table 3 ablation)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from ..errors import DebaError
from ..policy import DEFAULT_PRESET
from ..runfolder import CONFIG_FILE, EPOCHS_FILE, RUN_FILES, SUMMARY_FILE, iter_runs, summary_status
from ..verdict import quality_of
from .paper import PAPER_COOLDOWN_COLUMNS, PAPER_EPOCHS

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
        return summary_status(self.summary, "unknown")

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
    for name, d, keys in ((CONFIG_FILE, config, ("epochs", "seed", "cooldown")),
                          (SUMMARY_FILE, summary, ("epochs", "seed"))):
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
        for run_id, files in iter_runs(path):
            where = f"{path}:{run_id}"
            missing = [n for n in RUN_FILES if n not in files]
            if missing:
                notes.append(f"skipped {where}: no {', '.join(missing)}")
                continue
            summary = _parse_json(files[SUMMARY_FILE], f"{where}/{SUMMARY_FILE}")
            config = _parse_json(files[CONFIG_FILE], f"{where}/{CONFIG_FILE}")
            records = _parse_jsonl(files[EPOCHS_FILE], f"{where}/{EPOCHS_FILE}")
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


__all__ = ["RunLog", "RunSet", "load_runs", "variant_of", "RUN_FILES"]
