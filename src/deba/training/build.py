"""From a TrainConfig to the objects of the lower layers: the batch-size policy, the device."""
from __future__ import annotations

import torch

from ..errors import DebaError
from ..policy import (
    DEFAULT_PRESET,
    PRESETS,
    BatchSizePolicy,
    FixedPolicy,
    GnsPolicy,
    SeesawPolicy,
    StepGrowPolicy,
    canonical_arch,
    make_deba,
)
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
        raise DebaError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise DebaError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0")
    return dev


def seesaw_periods(config: TrainConfig, train_size: int) -> int:
    """How many decision periods the run has: epochs, or the sample budget over a samples interval."""
    if config.decision_interval:
        return max(1, (config.epochs * train_size) // config.decision_interval)
    return config.epochs


def build_policy(config: TrainConfig, arch: str | None, train_size: int) -> BatchSizePolicy:
    """The policy the config asks for. ``train_size`` clamps B_max: no batch can exceed the training set."""
    if config.start_batch > train_size:
        raise DebaError(f"start_batch {config.start_batch} exceeds the training set ({train_size} images)")
    conf_window = config.window or 15
    try:
        if config.policy == "fixed":
            return FixedPolicy(config.start_batch, window=conf_window)
        b_min = config.b_min if config.b_min is not None else min(16, config.start_batch)
        b_max = min(config.b_max if config.b_max is not None else 2048, train_size)
        if config.policy == "step-grow":
            return StepGrowPolicy(config.milestones, grow_factor=config.grow_factor or 2.0,
                                  start_batch=config.start_batch, b_min=b_min, b_max=b_max, window=conf_window)
        if config.policy == "seesaw":
            return SeesawPolicy(seesaw_periods(config, train_size), start_batch=config.start_batch, b_min=b_min,
                                b_max=max(b_max, config.start_batch), window=conf_window)
        if config.policy == "gns":
            options = {k: v for k, v in (("target_factor", config.target_factor),
                                         ("smoothing", config.noise_smoothing), ("cooldown", config.cooldown),
                                         ("grow_factor", config.grow_factor),
                                         ("rollback_factor", config.rollback_factor)) if v is not None}
            return GnsPolicy(config.start_batch, b_min, max(b_max, config.start_batch), window=conf_window,
                             **options)
        preset = config.preset or DEFAULT_PRESET
        overrides = dict(
            theta_stab=config.theta_stab, theta_conf=config.theta_conf, cooldown=config.cooldown,
            window=config.window, grow_factor=config.grow_factor, rollback_factor=config.rollback_factor,
            start_batch=config.start_batch, b_min=b_min, b_max=max(b_max, b_min),
        )
        if config.full_history:
            overrides["full_history"] = True
        if config.var_scaling != "none":
            overrides["var_scaling"] = config.var_scaling
        if config.thresholds:
            from ..calibration import read_thresholds_file

            th = read_thresholds_file(config.thresholds)
            if th.get("conf_mode") and th["conf_mode"] != PRESETS[preset]["conf_mode"]:
                raise DebaError(f"{config.thresholds}: theta_conf was calibrated on {th['conf_mode']} conf, but preset "
                                f"{preset!r} reads conf as {PRESETS[preset]['conf_mode']}; recalibrate with --conf "
                                f"{PRESETS[preset]['conf_mode']} or pick the matching preset")
            if config.theta_stab is None:
                overrides["theta_stab"] = th["theta_stab"]
            if config.theta_conf is None:
                overrides["theta_conf"] = th["theta_conf"]
            # theta_conf is a median of conf over a window: it only means the same thing with the same window
            file_window = th.get("window")
            if file_window is not None:
                if config.window is None:
                    overrides["window"] = file_window
                elif config.window != file_window:
                    raise DebaError(f"{config.thresholds}: thresholds were calibrated with window {file_window}, "
                                    f"but this run uses window {config.window}")
        return make_deba(preset, arch, universal_thresholds=config.universal_thresholds, **overrides)
    except ValueError as e:
        raise DebaError(str(e)) from None


def policy_arch_name(config: TrainConfig) -> str | None:
    """The architecture name the presets look thresholds up by (None for a user's own model)."""
    if config.model:
        return None
    return canonical_arch(config.arch)
