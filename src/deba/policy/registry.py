"""Every batch-size policy by name: its class, the options it reads and how to build it from them.

The one place that names policies. The CLI (``deba train --policy``), the training config, the study runner
and ``deba.training.build`` read :data:`POLICIES`; adding a policy is one :func:`register_policy` call with a
:class:`PolicySpec`, here or in the module that defines the policy::

    register_policy(PolicySpec(
        name="gns", cls=GnsPolicy, summary="grow with the gradient noise scale (McCandlish et al. 2018)",
        options=("start_batch", "b_min", "b_max", "window"), build=lambda o, arch: GnsPolicy(...)))

``options`` are TrainConfig keys (underscored; the CLI flag is the same name with dashes); the config names
the ones a run sets but its policy does not read. ``build(options, arch)`` gets a plain mapping of those keys
(``None`` where not set; ``b_min`` / ``b_max`` already resolved against the training set) and returns the
policy; a ``ValueError`` it raises becomes one line of bad input. Pure Python, like the rest of the layer.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import BatchSizePolicy
from .deba import DebaPolicy
from .presets import DEFAULT_PRESET, make_deba
from .noise import GnsPolicy
from .schedules import FixedPolicy, SeesawPolicy, StepGrowPolicy

Options = Mapping[str, Any]


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy. ``requires``: options that must be set (with the reason, for the error line);
    ``uses_thresholds``: the policy reads theta_stab / theta_conf (a study may calibrate them for it)."""

    name: str
    cls: type[BatchSizePolicy]
    summary: str
    options: tuple[str, ...]
    build: Callable[[Options, str | None], BatchSizePolicy]
    requires: tuple[tuple[str, str], ...] = ()
    uses_thresholds: bool = False

    def check(self, options: Options) -> str | None:
        """The first required option missing from ``options`` as one line, or None."""
        for key, why in self.requires:
            if not options.get(key):
                return f"policy {self.name} needs {key} ({why})"
        return None


POLICIES: dict[str, PolicySpec] = {}


def register_policy(spec: PolicySpec) -> PolicySpec:
    """Add ``spec`` under ``spec.name``; a name taken by another class is refused."""
    old = POLICIES.get(spec.name)
    if old is not None and old.cls is not spec.cls:
        raise ValueError(f"policy name {spec.name!r} is taken by {old.cls.__name__}")
    if not issubclass(spec.cls, BatchSizePolicy):
        raise ValueError(f"{spec.cls.__name__} is not a BatchSizePolicy")
    POLICIES[spec.name] = spec
    return spec


def policy_names() -> tuple[str, ...]:
    return tuple(POLICIES)


def get_policy(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}") from None


def policy_option_names() -> tuple[str, ...]:
    """Every option some policy reads, in registration order (a run's unused ones are named in its log)."""
    seen: dict[str, None] = {}
    for spec in POLICIES.values():
        seen.update(dict.fromkeys(spec.options))
    return tuple(seen)


def build_policy(name: str, options: Options, arch: str | None = None) -> BatchSizePolicy:
    """The policy ``name`` built from ``options`` (ValueError on bad values)."""
    spec = get_policy(name)
    problem = spec.check(options)
    if problem:
        raise ValueError(problem)
    return spec.build(options, arch)


def _window(o: Options) -> int:
    return o.get("window") or 15


def _build_fixed(o: Options, arch: str | None) -> FixedPolicy:
    return FixedPolicy(o["start_batch"], window=_window(o))


def _build_step_grow(o: Options, arch: str | None) -> StepGrowPolicy:
    return StepGrowPolicy(o["milestones"], grow_factor=o.get("grow_factor") or 2.0, start_batch=o["start_batch"],
                          b_min=o.get("b_min") or 16, b_max=o.get("b_max") or 2048, window=_window(o))


DEBA_OVERRIDES = ("theta_stab", "theta_conf", "cooldown", "window", "grow_factor", "rollback_factor",
                  "start_batch", "b_min", "b_max")


def _build_deba(o: Options, arch: str | None) -> DebaPolicy:
    overrides = {k: o.get(k) for k in DEBA_OVERRIDES}
    if o.get("full_history"):
        overrides["full_history"] = True
    if o.get("var_scaling") not in (None, "none"):
        overrides["var_scaling"] = o["var_scaling"]
    return make_deba(o.get("preset") or DEFAULT_PRESET, arch, universal_thresholds=bool(o.get("universal_thresholds")),
                     epochs=o.get("epochs"), **overrides)


register_policy(PolicySpec(
    "fixed", FixedPolicy, "one batch size throughout (the paper's baseline)",
    options=("start_batch", "window"), build=_build_fixed))
register_policy(PolicySpec(
    "deba", DebaPolicy, "DEBA: grow, roll back or hold from gradient signals (the paper)",
    options=("preset", "theta_stab", "theta_conf", "thresholds", "cooldown", "window", "full_history",
             "universal_thresholds", "var_scaling", "start_batch", "b_min", "b_max", "grow_factor", "rollback_factor"),
    build=_build_deba, uses_thresholds=True))
register_policy(PolicySpec(
    "step-grow", StepGrowPolicy, "multiply the batch by --grow-factor after each of --milestones (Smith et al.)",
    options=("start_batch", "b_min", "b_max", "grow_factor", "milestones", "window"), build=_build_step_grow,
    requires=(("milestones", "epochs after which the batch grows"),)))


def _build_seesaw(o: Options, arch: str | None) -> SeesawPolicy:
    # periods of the run: its epochs, or its sample budget over a samples interval (config refuses steps);
    # deba.training.build passes run_epochs and train_size, a direct caller gives epochs (default 100)
    epochs = o.get("run_epochs") or o.get("epochs") or 100
    periods = epochs
    if o.get("decision_interval"):
        if not o.get("train_size"):
            raise ValueError("seesaw with a decision interval needs the training-set size to count its periods")
        periods = max(1, (epochs * o["train_size"]) // o["decision_interval"])
    return SeesawPolicy(periods, start_batch=o["start_batch"], b_min=o.get("b_min") or 16,
                        b_max=max(o.get("b_max") or 2048, o["start_batch"]), window=_window(o))


GNS_OPTIONS = {"target_factor": "target_factor", "noise_smoothing": "smoothing", "cooldown": "cooldown",
               "grow_factor": "grow_factor", "rollback_factor": "rollback_factor"}


def _build_gns(o: Options, arch: str | None) -> GnsPolicy:
    kwargs = {arg: o[key] for key, arg in GNS_OPTIONS.items() if o.get(key) is not None}
    return GnsPolicy(o["start_batch"], o.get("b_min") or 16, max(o.get("b_max") or 2048, o["start_batch"]),
                     window=_window(o), **kwargs)


register_policy(PolicySpec(
    "seesaw", SeesawPolicy, "batch x2 wherever a cosine lr halves (Seesaw; use --lr-schedule cosine --lr-scaling sqrt)",
    options=("start_batch", "b_min", "b_max", "window"), build=_build_seesaw))
register_policy(PolicySpec(
    "gns", GnsPolicy, "batch toward --target-factor x the gradient noise scale (McCandlish et al. 2018; ours)",
    options=("start_batch", "b_min", "b_max", "window", *GNS_OPTIONS), build=_build_gns))
