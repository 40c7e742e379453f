"""Named presets of the DEBA rule and the Table 3 ablations (spec section 1)."""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import option
from .deba import DebaConfig, DebaPolicy

# Table 1 of the paper: (theta_stab, theta_conf) per torchvision architecture name.
TABLE1_THRESHOLDS: dict[str, tuple[float, float]] = {
    "mobilenet_v3_large": (0.25, 0.5),
    "mobilenet_v3_small": (0.25, 0.5),
    "efficientnet_b0": (0.60, 0.8),
    "resnet18": (0.55, 0.6),
    "resnet50": (12.0, 0.8),
    "densenet121": (0.55, 0.6),
    "vit_b_16": (0.40, 0.7),
}
ARCH_ALIASES = {"mobilenet_v3": "mobilenet_v3_large"}
UNIVERSAL_THRESHOLDS = (0.1, 0.5)  # Table 3, "universal thresholds" ablation

PRESETS: dict[str, dict[str, Any]] = {
    # the literal algorithm of section 3: conf is the ratio of eq. 4
    "paper": {"window": 15, "cooldown": 10, "conf_mode": "ratio"},
    # identical but for the bounded confidence grad_var / (grad_var + median)
    "paper-bounded": {"window": 15, "cooldown": 10, "conf_mode": "bounded"},
}

# What `deba train --policy deba` uses when no preset is named. Chosen from spec section 3: the bounded
# reading reproduced the paper's resnet18 trajectory on real runs, the literal one only shrinks the batch.
# docs/findings.md records the evidence; change it here only with new measurements.
DEFAULT_PRESET = "paper-bounded"


def canonical_arch(arch: str) -> str:
    return ARCH_ALIASES.get(arch, arch)


def deba_config(
    preset: str = DEFAULT_PRESET,
    arch: str | None = None,
    *,
    universal_thresholds: bool = False,
    **overrides: Any,
) -> DebaConfig:
    """Build a validated :class:`DebaConfig` from a preset, an architecture and explicit overrides.

    Precedence: explicit ``theta_stab`` / ``theta_conf`` > ``universal_thresholds`` > Table 1 by ``arch``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    settings: dict[str, Any] = dict(PRESETS[preset])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if universal_thresholds:
        settings["theta_stab"], settings["theta_conf"] = UNIVERSAL_THRESHOLDS
    elif arch is not None and canonical_arch(arch) in TABLE1_THRESHOLDS:
        settings["theta_stab"], settings["theta_conf"] = TABLE1_THRESHOLDS[canonical_arch(arch)]
    settings.update(overrides)
    if "theta_stab" not in settings or "theta_conf" not in settings:
        what = f"architecture {arch!r}" if arch else "no architecture"
        raise ValueError(
            f"preset {preset!r} has no thresholds for {what}; known architectures: "
            f"{', '.join(sorted(TABLE1_THRESHOLDS))} (or give {option('theta_stab')} and {option('theta_conf')})"
        )
    return DebaConfig.from_dict(settings)


PAPER_EPOCHS = 100  # the run length the paper's cooldown (10 epochs) was set for


def scaled_cooldown(cooldown: int, epochs: int) -> int:
    """A cooldown of ``cooldown`` epochs in a 100-epoch run, carried to an ``epochs``-epoch run:
    c x E / 100 rounded up, at least 1 (0 stays 0), as the study specs scale it by hand."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if cooldown == 0:
        return 0
    return max(1, math.ceil(cooldown * epochs / PAPER_EPOCHS - 1e-9))


def make_deba(preset: str = DEFAULT_PRESET, arch: str | None = None, *, epochs: int | None = None,
              **kwargs: Any) -> DebaPolicy:
    """A :class:`DebaPolicy` from a preset, an architecture (Table 1 thresholds) and explicit settings.

    ``epochs``: the planned length of the run. The presets' cooldown (10) was set for the paper's 100
    epochs; with ``epochs`` it is scaled to c x epochs / 100 (rounded up, at least 1) unless ``cooldown``
    is given. The value used is in ``policy.config.cooldown`` and explained in ``policy.notes``.
    """
    notes = []
    if epochs is not None and kwargs.get("cooldown") is None:
        base = PRESETS[preset]["cooldown"] if preset in PRESETS else 0
        kwargs["cooldown"] = scaled_cooldown(base, epochs)
        if kwargs["cooldown"] != base:
            notes.append(f"cooldown {kwargs['cooldown']}: the preset's {base} epochs (set for {PAPER_EPOCHS}) scaled "
                         f"to a {epochs}-epoch run (c x E/{PAPER_EPOCHS}, rounded up, at least 1)")
    policy = DebaPolicy(deba_config(preset, arch, **kwargs), preset=preset, arch=canonical_arch(arch) if arch else None)
    policy.start_batch_given = kwargs.get("start_batch") is not None
    policy.notes = notes
    return policy


def policy_options_from_mapping(m: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the DEBA options out of a flat mapping of CLI/config names (underscored)."""
    keys = (
        "theta_stab", "theta_conf", "cooldown", "window", "full_history", "universal_thresholds",
        "start_batch", "b_min", "b_max", "grow_factor", "rollback_factor", "conf_mode", "var_scaling",
    )
    out = {k: m[k] for k in keys if k in m and m[k] is not None}
    if out.get("full_history") is False:
        out.pop("full_history")
    if out.get("universal_thresholds") is False:
        out.pop("universal_thresholds")
    return out
