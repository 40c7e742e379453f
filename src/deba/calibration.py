"""Profiling and calibration from fixed-batch runs (paper sections 3.6 and 5; spec section 2).

Everything here works on per-epoch logs: lists of dicts with ``epoch``, ``grad_var``, ``grad_norm``,
``loss`` (and, for DEBA runs, ``decision``), as ``deba train`` writes them to ``epochs.jsonl``.

- Thresholds: ``theta_stab`` = 75th percentile of dnorm (NumPy's default linear interpolation),
  ``theta_conf`` = median of conf, both over the epochs where dnorm, dloss and conf are all defined
  (epochs 2..T); several logs pool their epochs.
- Stability score S = 1 / (1 + CV(grad_var) + mean(dnorm) + mean(dloss)), CV with the population std;
  across logs (seeds) mu_S = mean, sigma_S = sample std (ddof=1, 0 for one log), then the taxonomy of
  Table 2 and section 5.3.1.

dnorm, dloss and conf are always recomputed from grad_var, grad_norm and loss with the policy's own
:class:`deba.policy.SignalTracker`, never read from the log: a logged conf may come from another
window or another confidence reading. Non-finite epochs are skipped exactly as the tracker skips them.

NumPy only; no torch, so a laptop can calibrate from copied logs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DebaError
from .logio import SCHEMA_VERSION, read_json, write_json
from .policy.base import CONF_MODES, MAX_WINDOW, SignalTracker
from .policy.presets import TABLE1_THRESHOLDS, canonical_arch

SIGNAL_FIELDS = ("grad_var", "grad_norm", "loss")
MIN_USABLE_EPOCHS = 3  # at least two relative changes per log, else a percentile means nothing

# Table 2 of the paper: fixed-batch profiling (B=64, 100 epochs, seeds 2, 42, 199) and DEBA's accuracy change.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "mobilenet_v3_large": {"mu_S": 0.590, "sigma_S": 0.028, "class": "overly stable", "delta_acc": 5.3},
    "vit_b_16": {"mu_S": 0.546, "sigma_S": 0.012, "class": "overly stable", "delta_acc": 0.2},
    "densenet121": {"mu_S": 0.495, "sigma_S": 0.019, "class": "moderately stable", "delta_acc": 1.9},
    "resnet18": {"mu_S": 0.487, "sigma_S": 0.015, "class": "moderately stable", "delta_acc": 2.6},
    "efficientnet_b0": {"mu_S": 0.331, "sigma_S": 0.182, "class": "dynamically stable", "delta_acc": 1.9},
    "resnet50": {"mu_S": 0.185, "sigma_S": 0.079, "class": "naturally unstable", "delta_acc": -0.3},
}

# Taxonomy bounds (spec section 2). Section 5.3.1 writes 0.55 for the upper one, but Table 2 files ViT-B-16 at
# mu_S 0.546 as overly stable; 0.54 reproduces the table.
SIGMA_DYNAMIC = 0.15
MU_OVERLY = 0.54
MU_MODERATE_LOW = 0.45
MU_UNSTABLE = 0.26

TAXONOMY_CLASSES = ("dynamically stable", "overly stable", "moderately stable", "naturally unstable", "intermediate")
PREDICTIONS = {
    "moderately stable": "benefit",
    "overly stable": "benefit-if-stagnating",
    "dynamically stable": "benefit-seed-sensitive",
    "naturally unstable": "unreliable",
    "intermediate": "unknown",
}
# Plain-language reading of section 5.3 / 5.3.1 for each class.
PREDICTION_TEXTS = {
    "moderately stable": (
        "Moderately stable (0.45 <= mu_S <= 0.54): the paper's sweet spot; DEBA is expected to speed training up "
        "and to keep or improve accuracy consistently across seeds, as for ResNet-18 and DenseNet-121 (sec. 5.3.1)."),
    "overly stable": (
        "Overly stable (mu_S > 0.54): DEBA is expected to help only if fixed-batch training stagnates (the paper: "
        "convergence stability < 0.20), where its rollbacks add useful noise, as for MobileNet-V3; otherwise expect "
        "little change, as for ViT-B-16 (sec. 5.3.1)."),
    "dynamically stable": (
        "Dynamically stable (sigma_S > 0.15): stability varies strongly between seeds; the paper expects gains "
        "through DEBA's rollbacks correcting volatile runs, as for EfficientNet-B0, but outcomes depend on the "
        "seed (sec. 5.3.1)."),
    "naturally unstable": (
        "Naturally unstable (mu_S < 0.26): the paper finds seed-dependent results, from gains to losses, because "
        "growing the batch amplifies the existing instability, as for ResNet-50; adaptive batching is an "
        "unreliable choice here (sec. 5.3.1)."),
    "intermediate": (
        "Intermediate (0.26 <= mu_S < 0.45, sigma_S <= 0.15): between the paper's classes; the paper makes no "
        "prediction for this range, so compare DEBA with fixed-batch training directly (sec. 5.3.1)."),
}


# --- reading signals ---------------------------------------------------------------------------------
def _as_logs(logs: Any) -> list[Sequence[Mapping[str, Any]]]:
    """A single log (a list of records) is accepted where a list of logs is expected."""
    if isinstance(logs, Mapping):
        raise DebaError("expected a list of per-epoch logs, got a single record")
    logs = list(logs)
    if logs and isinstance(logs[0], Mapping):
        return [logs]
    return logs


def _log_name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"log {i + 1}"


def _check_options(window: Any, conf_mode: Any) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise DebaError(f"window must be an integer >= 1, got {window!r}")
    if window > MAX_WINDOW:
        raise DebaError(f"window must be at most {MAX_WINDOW}, got {window}")
    if conf_mode not in CONF_MODES:
        raise DebaError(f"conf mode must be one of {', '.join(CONF_MODES)}, got {conf_mode!r}")


def _check_record(rec: Any, name: str, index: int) -> None:
    where = f"{name}, record {index + 1}"
    if not isinstance(rec, Mapping):
        raise DebaError(f"{where}: expected an object, got {type(rec).__name__}")
    missing = [k for k in ("epoch", *SIGNAL_FIELDS) if k not in rec]
    if missing:
        raise DebaError(f"{where}: missing field(s) {', '.join(missing)}")
    ep = rec["epoch"]
    if isinstance(ep, bool) or not isinstance(ep, int):
        raise DebaError(f"{where}: epoch must be an integer, got {ep!r}")
    for k in SIGNAL_FIELDS:
        v = rec[k]
        # null and non-finite numbers are allowed (the tracker skips the epoch); anything else is bad input
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise DebaError(f"{where} (epoch {ep}): field {k!r} must be a number, got {v!r}")
    gv = rec["grad_var"]
    if gv is not None and math.isfinite(gv) and gv < 0:
        raise DebaError(f"{where} (epoch {ep}): grad_var is a variance and cannot be negative, got {gv!r}")


def recompute_signals(log: Sequence[Mapping[str, Any]], window: int = 15, conf_mode: str = "ratio",
                      name: str = "log") -> list[dict]:
    """Per epoch: epoch, grad_var, grad_norm, loss and the recomputed dnorm, dloss, conf, non_finite.

    Uses :class:`SignalTracker` with the policy's window (including the current value) and confidence
    reading; a logged dnorm/dloss/conf is ignored. Epochs must be consecutive integers.
    """
    _check_options(window, conf_mode)
    tracker = SignalTracker(window=window, conf_mode=conf_mode)
    out: list[dict] = []
    prev_epoch = None
    for i, rec in enumerate(log):
        _check_record(rec, name, i)
        ep = rec["epoch"]
        if prev_epoch is not None and ep != prev_epoch + 1:
            raise DebaError(f"{name}, record {i + 1}: epochs must be consecutive, got epoch {ep} after {prev_epoch}")
        prev_epoch = ep
        t = tracker.update(rec["grad_var"], rec["grad_norm"], rec["loss"])
        out.append({"epoch": ep, "grad_var": rec["grad_var"], "grad_norm": rec["grad_norm"], "loss": rec["loss"],
                    "dnorm": t.dnorm, "dloss": t.dloss, "conf": t.conf, "non_finite": t.non_finite})
    return out


def _defined(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Epochs where dnorm, dloss and conf are all defined (not the first finite epoch, not non-finite ones)."""
    return [r for r in rows if r["dnorm"] is not None and r["dloss"] is not None and r["conf"] is not None]


def _usable_rows(log: Sequence[Mapping[str, Any]], window: int, conf_mode: str, name: str) -> list[dict]:
    rows = recompute_signals(log, window, conf_mode, name)
    finite = sum(not r["non_finite"] for r in rows)
    if finite < MIN_USABLE_EPOCHS:
        raise DebaError(
            f"{name}: too few usable epochs to calibrate: {finite} with finite grad_var, grad_norm and loss "
            f"(of {len(rows)}); need at least {MIN_USABLE_EPOCHS}")
    return rows


# --- thresholds and stability ------------------------------------------------------------------------
def calibrate_thresholds(logs: Any, window: int = 15, conf_mode: str = "ratio",
                         names: Sequence[str] | None = None) -> tuple[float, float]:
    """(theta_stab, theta_conf): 75th percentile (linear) of dnorm and median of conf, epochs of all logs pooled."""
    logs = _as_logs(logs)
    if not logs:
        raise DebaError("no logs to calibrate from")
    dnorm: list[float] = []
    conf: list[float] = []
    for i, log in enumerate(logs):
        for r in _defined(_usable_rows(log, window, conf_mode, _log_name(names, i))):
            dnorm.append(r["dnorm"])
            conf.append(r["conf"])
    return float(np.percentile(np.asarray(dnorm, dtype=np.float64), 75)), float(np.median(np.asarray(conf, dtype=np.float64)))


def stability_score(log: Sequence[Mapping[str, Any]], window: int = 15, name: str = "log") -> float:
    """S = 1 / (1 + CV(grad_var) + mean(dnorm) + mean(dloss)) (eq. 9 as spec section 2 reads it).

    CV is the population std over the mean of grad_var over the finite epochs 1..T; the means of dnorm and
    dloss are over epochs 2..T (where they are defined). The window only matters for which epochs count
    as defined, which it does not change; it is accepted for symmetry with the other functions.
    """
    rows = _usable_rows(log, window, "ratio", name)
    gv = np.asarray([r["grad_var"] for r in rows if not r["non_finite"]], dtype=np.float64)
    mean_gv = gv.mean()
    if mean_gv <= 0:
        raise DebaError(f"{name}: grad_var is zero in every epoch; its coefficient of variation is undefined")
    gv = gv / gv.max()  # CV is scale-free; scaling first keeps std from overflowing on huge grad_var
    cv = gv.std(ddof=0) / gv.mean()
    defined = _defined(rows)
    mean_dnorm = np.mean(np.asarray([r["dnorm"] for r in defined], dtype=np.float64))
    mean_dloss = np.mean(np.asarray([r["dloss"] for r in defined], dtype=np.float64))
    return float(1.0 / (1.0 + cv + mean_dnorm + mean_dloss))


def classify(mu_S: float, sigma_S: float) -> str:
    """The stability class of Table 2 / section 5.3.1, rules applied in the spec's order."""
    for label, v in (("mu_S", mu_S), ("sigma_S", sigma_S)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DebaError(f"{label} must be a finite number, got {v!r}")
    if sigma_S > SIGMA_DYNAMIC:
        return "dynamically stable"
    if mu_S > MU_OVERLY:
        return "overly stable"
    if MU_MODERATE_LOW <= mu_S <= MU_OVERLY:
        return "moderately stable"
    if mu_S < MU_UNSTABLE:
        return "naturally unstable"
    return "intermediate"


def prediction(taxonomy: str) -> tuple[str, str]:
    """(prediction, prediction_text) for a stability class."""
    if taxonomy not in PREDICTIONS:
        raise DebaError(f"unknown stability class {taxonomy!r}; known: {', '.join(TAXONOMY_CLASSES)}")
    return PREDICTIONS[taxonomy], PREDICTION_TEXTS[taxonomy]


def has_decisions(log: Sequence[Mapping[str, Any]]) -> bool:
    return any(isinstance(r, Mapping) and r.get("decision") is not None for r in log)


def decision_aggressiveness(log: Sequence[Mapping[str, Any]], name: str = "log") -> float | None:
    """(increases - rollbacks) / max(1, increases + rollbacks); None when the log holds no decisions."""
    if not has_decisions(log):
        return None
    inc = rb = 0
    for i, r in enumerate(log):
        d = r.get("decision")
        if d is None:
            continue
        if not isinstance(d, str):
            raise DebaError(f"{name}, record {i + 1}: decision must be a string, got {d!r}")
        inc += d == "increase"
        rb += d == "rollback"
    return (inc - rb) / max(1, inc + rb)


def convergence_stability(log: Sequence[Mapping[str, Any]], name: str = "log") -> float:
    """Population std (ddof=0) of the per-epoch loss over the epochs whose loss is a finite number."""
    losses = []
    for i, r in enumerate(log):
        v = r.get("loss")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DebaError(f"{name}, record {i + 1}: field 'loss' must be a number, got {v!r}")
        if math.isfinite(v):
            losses.append(v)
    if not losses:
        raise DebaError(f"{name}: no finite loss values")
    return float(np.std(np.asarray(losses, dtype=np.float64), ddof=0))


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def calibrate(logs: Any, window: int = 15, conf_mode: str = "ratio", names: Sequence[str] | None = None) -> dict:
    """The calibration report of one architecture's fixed-batch runs (one log per seed).

    Keys: schema_version, theta_stab, theta_conf, conf_mode, window, n_logs, n_epochs, n_non_finite,
    n_signal_epochs (per log), stability_scores (per log, in order), mu_S, sigma_S, taxonomy, prediction,
    prediction_text; ``logs`` when ``names`` is given; and where the logs hold decisions,
    decision_aggressiveness / convergence_stability (per log, None for a log without decisions) with their
    ``_mean``.
    """
    _check_options(window, conf_mode)
    logs = _as_logs(logs)
    if not logs:
        raise DebaError("no logs to calibrate from")
    if names is not None and len(names) != len(logs):
        raise DebaError(f"{len(names)} log names for {len(logs)} logs")
    theta_stab, theta_conf = calibrate_thresholds(logs, window, conf_mode, names)
    scores, n_epochs, n_nonfinite, n_signal = [], [], [], []
    for i, log in enumerate(logs):
        name = _log_name(names, i)
        rows = recompute_signals(log, window, conf_mode, name)
        n_epochs.append(len(rows))
        n_nonfinite.append(sum(r["non_finite"] for r in rows))
        n_signal.append(len(_defined(rows)))
        scores.append(stability_score(log, window, name))
    mu_S = float(np.mean(scores))
    sigma_S = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    taxonomy = classify(mu_S, sigma_S)
    pred, text = prediction(taxonomy)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "theta_stab": theta_stab,
        "theta_conf": theta_conf,
        "conf_mode": conf_mode,
        "window": window,
        "n_logs": len(logs),
        "n_epochs": n_epochs,
        "n_non_finite": n_nonfinite,
        "n_signal_epochs": n_signal,
        "stability_scores": scores,
        "mu_S": mu_S,
        "sigma_S": sigma_S,
        "taxonomy": taxonomy,
        "prediction": pred,
        "prediction_text": text,
    }
    if names is not None:
        report["logs"] = [str(n) for n in names]
    if any(has_decisions(log) for log in logs):
        agg = [decision_aggressiveness(log, _log_name(names, i)) for i, log in enumerate(logs)]
        conv = [convergence_stability(log, _log_name(names, i)) if has_decisions(log) else None
                for i, log in enumerate(logs)]
        report["decision_aggressiveness"] = agg
        report["decision_aggressiveness_mean"] = _mean(agg)
        report["convergence_stability"] = conv
        report["convergence_stability_mean"] = _mean(conv)
    return report


def paper_values(arch: str) -> dict[str, Any]:
    """The paper's Table 1 thresholds and Table 2 profile for a torchvision architecture name (None where absent)."""
    a = canonical_arch(arch)
    t1 = TABLE1_THRESHOLDS.get(a)
    return {
        "arch": a,
        "table1": {"theta_stab": t1[0], "theta_conf": t1[1]} if t1 else None,
        "table2": dict(PAPER_TABLE2[a]) if a in PAPER_TABLE2 else None,
    }


# --- thresholds files --------------------------------------------------------------------------------
THRESHOLDS_KIND = "deba-thresholds"


def write_thresholds_file(path: str | os.PathLike, report: Mapping[str, Any], arch: str | None = None) -> None:
    """Write the thresholds ``deba train --thresholds FILE`` reads (atomic, with schema_version)."""
    missing = [k for k in ("theta_stab", "theta_conf", "conf_mode", "window") if k not in report]
    if missing:
        raise DebaError(f"calibration report lacks {', '.join(missing)}")
    arch = arch if arch is not None else report.get("arch")
    obj = {
        "kind": THRESHOLDS_KIND,
        "theta_stab": report["theta_stab"],
        "theta_conf": report["theta_conf"],
        "conf_mode": report["conf_mode"],
        "window": report["window"],
        "arch": canonical_arch(arch) if arch else None,
        "logs": list(report.get("logs") or []),
    }
    _validate_thresholds(obj, str(path))  # never write a file we would refuse to read
    write_json(path, obj)


def _validate_thresholds(obj: Mapping[str, Any], where: str) -> dict:
    def number(key: str) -> float:
        if key not in obj:
            raise DebaError(f"{where}: missing {key!r}")
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DebaError(f"{where}: {key} must be a finite number >= 0, got {v!r}")
        return float(v)

    theta_stab, theta_conf = number("theta_stab"), number("theta_conf")
    conf_mode = obj.get("conf_mode")
    if conf_mode not in CONF_MODES:
        raise DebaError(f"{where}: conf_mode must be one of {', '.join(CONF_MODES)}, got {conf_mode!r}")
    if conf_mode == "bounded" and theta_conf > 1:
        raise DebaError(f"{where}: theta_conf {theta_conf} is above 1, impossible for the bounded conf")
    window = obj.get("window")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise DebaError(f"{where}: window must be an integer >= 1, got {window!r}")
    arch = obj.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise DebaError(f"{where}: arch must be a string or null, got {arch!r}")
    logs = obj.get("logs") or []
    if not isinstance(logs, list) or not all(isinstance(x, str) for x in logs):
        raise DebaError(f"{where}: logs must be a list of file names")
    return {"theta_stab": theta_stab, "theta_conf": theta_conf, "conf_mode": conf_mode, "window": window,
            "arch": arch, "logs": list(logs)}


def read_thresholds_file(path: str | os.PathLike) -> dict:
    """Read and validate a thresholds file (or the full output of ``deba calibrate --json``).

    Returns theta_stab, theta_conf, conf_mode, window, arch, logs. Bad content raises DebaError.
    """
    obj = read_json(path)
    where = str(Path(path))
    sv = obj.get("schema_version")
    if sv is None:
        raise DebaError(f"{where}: missing 'schema_version' (not a deba thresholds file?)")
    if isinstance(sv, bool) or not isinstance(sv, int) or sv < 1 or sv > SCHEMA_VERSION:
        raise DebaError(f"{where}: unsupported schema_version {sv!r} (this deba reads up to {SCHEMA_VERSION})")
    return _validate_thresholds(obj, where)


__all__ = [
    "MIN_USABLE_EPOCHS", "PAPER_TABLE2", "PREDICTIONS", "PREDICTION_TEXTS", "TAXONOMY_CLASSES", "calibrate",
    "calibrate_thresholds", "classify", "convergence_stability", "decision_aggressiveness", "has_decisions",
    "paper_values", "prediction", "read_thresholds_file", "recompute_signals", "stability_score",
    "write_thresholds_file",
]
