"""From a TrainConfig to the objects of the lower layers: the batch-size policy, the device."""
from __future__ import annotations

import torch

from ..errors import DebaError, option
from ..policy import DEFAULT_PRESET, PRESETS, BatchSizePolicy, canonical_arch
from ..policy.registry import build_policy as registry_build
from ..policy.registry import get_policy
from .config import TrainConfig


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DebaError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise DebaError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DebaError(f"device {name!r} requested but CUDA is not available here (use {option('device')} cpu)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise DebaError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0")
    return dev


def build_policy(config: TrainConfig, arch: str | None, train_size: int) -> BatchSizePolicy:
    """The policy the config asks for, through the registry (:mod:`deba.policy.registry`).

    ``train_size`` clamps B_max: no batch can exceed the training set. For DEBA, a thresholds file fills in
    the thresholds (and window) not given, and without an explicit cooldown or decision interval the
    preset's cooldown is scaled to ``config.epochs`` (``make_deba(epochs=...)``)."""
    if config.start_batch > train_size:
        raise DebaError(f"start_batch {config.start_batch} exceeds the training set ({train_size} images)")
    options = config.to_dict()
    b_min = config.b_min if config.b_min is not None else min(16, config.start_batch)
    if b_min > train_size:
        raise DebaError(f"b_min {b_min} exceeds the training set ({train_size} images)")
    options.update(b_min=b_min, b_max=min(config.b_max if config.b_max is not None else 2048, train_size))
    options["epochs"] = config.epochs if config.decision_interval is None else None  # cooldown counts periods then
    options.update(run_epochs=config.epochs, train_size=train_size)  # seesaw: the periods of the run
    try:
        if config.thresholds and get_policy(config.policy).uses_thresholds:
            options.update(_thresholds_from_file(config))
        return registry_build(config.policy, options, arch)
    except ValueError as e:
        raise DebaError(str(e)) from None


def _thresholds_from_file(config: TrainConfig) -> dict:
    from ..calibration import read_thresholds_file

    preset = config.preset or DEFAULT_PRESET
    th = read_thresholds_file(config.thresholds)
    if th.get("conf_mode") and th["conf_mode"] != PRESETS[preset]["conf_mode"]:
        raise DebaError(f"{config.thresholds}: theta_conf was calibrated on {th['conf_mode']} conf, but preset "
                        f"{preset!r} reads conf as {PRESETS[preset]['conf_mode']}; recalibrate with --conf "
                        f"{PRESETS[preset]['conf_mode']} or pick the matching preset")
    out = {}
    if config.theta_stab is None:
        out["theta_stab"] = th["theta_stab"]
    if config.theta_conf is None:
        out["theta_conf"] = th["theta_conf"]
    # theta_conf is a median of conf over a window: it only means the same thing with the same window
    file_window = th.get("window")
    if file_window is not None:
        if config.window is None:
            out["window"] = file_window
        elif config.window != file_window:
            raise DebaError(f"{config.thresholds}: thresholds were calibrated with window {file_window}, "
                            f"but this run uses window {config.window}")
    return out


def policy_arch_name(config: TrainConfig) -> str | None:
    """The architecture name the presets look thresholds up by (None for a user's own model)."""
    if config.model:
        return None
    return canonical_arch(config.arch)
