"""One flat, typed training configuration shared by the CLI, config files and the Python API.

Unknown keys are rejected; the whole config is saved with every run (config.json) and every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args

from ..errors import DebaError, option
from ..logio import read_text_input

from ..policy.registry import POLICIES as _REGISTRY
from ..policy.registry import get_policy, policy_option_names
from ..signals import DEFAULT_GNS_EVERY

POLICIES = tuple(_REGISTRY)  # deba.policy.registry is the one list; this is its view at import
LR_SCHEDULES = ("constant", "cosine")
LR_SCALINGS = ("none", "linear", "sqrt")
GRAPH_MODES = ("auto", "on", "off")
AMP_MODES = ("none", "bf16")
SIGNAL_MODES = ("last", "epoch-avg")
NONFINITE_ACTIONS = ("skip", "stop")
INTERVAL_UNITS = ("steps", "samples")
PATH_FIELDS = ("data", "thresholds", "out", "tensorboard")  # may be given as os.PathLike
SEED_FIELDS = ("seed", "subset_seed")


@dataclass
class TrainConfig:
    # what to train
    arch: str = "resnet18"
    model: str | None = None  # "package.module:function" for a user's own model (overrides arch)
    dataset: str = "cifar10"  # cifar10 | cifar100 | synthetic
    data: str | None = None  # folder with cifar-10-batches-py / cifar-100-python, or the offline .npz
    download: bool = False
    subset: int | None = None
    subset_seed: int = 0
    augment: bool = True
    # optimisation (paper protocol)
    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "constant"
    lr_scaling: str = "none"  # scale lr with batch size relative to start_batch
    # batch-size policy
    policy: str = "deba"
    preset: str | None = None  # None: deba.policy.DEFAULT_PRESET
    theta_stab: float | None = None
    theta_conf: float | None = None
    thresholds: str | None = None  # JSON file from `deba profile` / `deba calibrate --json`
    cooldown: int | None = None
    window: int | None = None
    full_history: bool = False
    universal_thresholds: bool = False
    var_scaling: str = "none"  # DEBA: "batch" scales grad_var by B before the confidence (ours)
    start_batch: int = 64
    b_min: int | None = None
    b_max: int | None = None
    grow_factor: float | None = None
    rollback_factor: float | None = None
    milestones: list[int] = field(default_factory=list)  # step-grow
    decision_interval: int | None = None  # decide every N steps (or samples) instead of every epoch
    decision_interval_unit: str = "steps"  # what decision_interval counts: steps or samples (global)
    # gradient noise scale (deba.signals gns; policy gns reads it, any policy may log it)
    gns: bool = False  # collect the noise-scale signals (always on for policy gns)
    # every k-th step of a period is trained as two micro-batches to measure it; 20 keeps the cost under 3% of
    # step time on the CPU bench (a sampled resnet18 step at B=64 costs 49.5% more there: docs/results/noise-overhead)
    gns_every: int = DEFAULT_GNS_EVERY
    target_factor: float | None = None  # gns: target batch = factor x smoothed B_noise (default 0.5)
    noise_smoothing: float | None = None  # gns: weight of the newest period in the |G|^2 and tr(Sigma) averages
    # signals
    signals_mode: str = "last"
    signals_every: int = 1
    # evaluation and execution
    eval_every: int = 1
    device: str = "auto"
    amp: str = "none"
    graphs: str = "auto"
    channels_last: bool = False
    micro_batch: int | None = None  # gradient accumulation: largest micro-batch per forward/backward
    accumulate: bool = False  # on out of memory, shrink the micro-batch instead of capping the batch size
    seed: int = 42
    deterministic: bool = False
    # safety
    checkpoint_every: int = 1  # epochs; 0 disables checkpoints
    precise_bn: int = 0  # before each evaluation, BatchNorm statistics recomputed over this many training batches
    max_nonfinite: int = 3
    nonfinite_action: str = "skip"
    dist_timeout: float = 300.0  # seconds a collective may wait for a rank before the job ends (torchrun)
    # outputs
    out: str | None = None
    run_name: str | None = None
    quiet: bool = False
    tensorboard: str | None = None
    concurrent_runs: int = 1
    # language models (deba.training.lm): --dataset text / shakespeare-char, --arch gpt, AdamW, clipping
    block_size: int = 64  # tokens per window, and the GPT's context
    vocab: str = "char"  # char | byte
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    optimizer: str = "auto"  # auto (adamw for --arch gpt, else sgd) | sgd | adamw
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = None  # clip the update's gradient to this 2-norm (signals see it unclipped)
    warmup_samples: int = 0  # linear learning-rate warm-up over this many samples
    min_lr: float = 0.0  # the cosine schedule decays to this
    max_samples: int | None = None  # stop after this many samples (mid-epoch); the schedule ends there

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def choice(name, options):
            v = getattr(self, name)
            if v not in options:
                raise DebaError(f"{name} must be one of {', '.join(options)}, got {v!r}")

        self._check_types()
        self._check_ranges()
        choice("policy", tuple(_REGISTRY))
        choice("lr_schedule", LR_SCHEDULES)
        choice("lr_scaling", LR_SCALINGS)
        choice("graphs", GRAPH_MODES)
        choice("amp", AMP_MODES)
        choice("signals_mode", SIGNAL_MODES)
        choice("nonfinite_action", NONFINITE_ACTIONS)
        choice("decision_interval_unit", INTERVAL_UNITS)
        choice("var_scaling", ("none", "batch"))
        if not isinstance(self.accumulate, bool):
            raise DebaError(f"accumulate must be true or false, got {self.accumulate!r}")
        for name in ("epochs", "start_batch", "eval_every", "signals_every", "max_nonfinite", "concurrent_runs",
                     "gns_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DebaError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("subset", "b_min", "b_max", "micro_batch", "decision_interval"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise DebaError(f"{name} must be an integer >= 1, got {v!r}")
        if self.preset is not None:
            from ..policy import PRESETS

            choice("preset", tuple(PRESETS))
        for name, least in (("window", 1), ("cooldown", 0)):
            v = getattr(self, name)
            if v is not None and v < least:
                raise DebaError(f"{name} must be an integer >= {least}, got {v!r}")
        if isinstance(self.precise_bn, bool) or not isinstance(self.precise_bn, int) or self.precise_bn < 0:
            raise DebaError(f"precise_bn must be an integer >= 0, got {self.precise_bn!r}")
        if self.checkpoint_every < 0:
            raise DebaError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise DebaError(f"{name} must be a number >= 0, got {v!r}")
        if self.lr <= 0:
            raise DebaError(f"lr must be > 0, got {self.lr}")
        if self.b_min is not None and self.b_max is not None and self.b_min > self.b_max:
            raise DebaError(f"{option('b_min')} ({self.b_min}) must not exceed {option('b_max')} ({self.b_max})")
        problem = get_policy(self.policy).check(self.to_dict())
        if problem:
            raise DebaError(problem)
        if self.target_factor is not None and not (isinstance(self.target_factor, (int, float))
                                                   and 0 < self.target_factor < float("inf")):
            raise DebaError(f"target_factor must be a number > 0, got {self.target_factor!r}")
        if self.noise_smoothing is not None and not 0 < self.noise_smoothing <= 1:
            raise DebaError(f"noise_smoothing must be a number in (0, 1], got {self.noise_smoothing!r}")
        from .lm import validate_lm_options

        validate_lm_options(self)
        if self.policy == "seesaw" and self.decision_interval and self.decision_interval_unit == "steps":
            raise DebaError("policy seesaw follows training progress: use decision_interval_unit samples "
                            "(or decide per epoch)")
        self._check_int_sizes()

    @property
    def collects_noise(self) -> bool:
        """Whether the run measures the gradient noise scale (policy gns always does)."""
        return self.gns or self.policy == "gns"

    def unused_options(self) -> list[str]:
        """The options set away from their defaults that the chosen policy does not read.

        They are accepted, not refused: a study's ``common:`` block sets one value for all its arms,
        fixed ones included. The trainer names them in an event, so a run log shows what had no effect."""
        reads = set(get_policy(self.policy).options)
        unused = [name for name in policy_option_names() if name not in reads]
        defaults = TrainConfig.__dataclass_fields__
        out = []
        for name in unused:
            f = defaults[name]
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(self, name) != default:
                out.append(name)
        return out

    def _check_ranges(self) -> None:
        """Every number finite and of a size the run can use: seeds as numpy and torch take them (0 to
        2**32 - 1), dist_timeout above 0 (integers below 2**62: _check_int_sizes)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise DebaError(f"{option(f.name)} must be a finite number, got {v!r}")
            if f.name in SEED_FIELDS and isinstance(v, int) and not 0 <= v < 2 ** 32:
                raise DebaError(f"{option(f.name)} must be an integer from 0 to {2 ** 32 - 1}, got {v}")
        if isinstance(self.dist_timeout, (int, float)) and not isinstance(self.dist_timeout, bool) \
                and self.dist_timeout <= 0:
            raise DebaError(f"{option('dist_timeout')} must be a number of seconds > 0, got {self.dist_timeout!r}")

    def _check_int_sizes(self) -> None:
        """Last, after the checks that say more: no integer past 2**62."""
        from ..policy.base import MAX_WINDOW

        if self.window is not None and self.window > MAX_WINDOW:
            raise DebaError(f"window must be at most {MAX_WINDOW}, got {self.window}")
        for f in fields(self):
            v = getattr(self, f.name)
            for x in v if isinstance(v, list) else [v]:
                if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 2 ** 62:
                    raise DebaError(f"{option(f.name)} is out of range, got {x}")

    def _check_types(self) -> None:
        """Each value has its field's type (a config file can hold anything): one line naming the key."""
        for f in fields(self):
            v = getattr(self, f.name)
            kinds = [k.strip() for k in str(f.type).split("|")]
            if v is None:
                if "None" in kinds:
                    continue
                raise DebaError(f"{f.name} must not be null")
            kind = kinds[0]
            if kind == "bool":
                ok, want = isinstance(v, bool), "true or false"
            elif kind == "int":
                ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
            elif kind == "float":
                if isinstance(v, str):
                    # YAML 1.1 (PyYAML) reads 1e-3 without a dot as a string: take it as the number it spells
                    try:
                        v = float(v)
                        setattr(self, f.name, v)
                    except ValueError:
                        pass
                ok, want = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
            elif kind == "str":
                if f.name in PATH_FIELDS and isinstance(v, os.PathLike):
                    v = os.fspath(v)
                    setattr(self, f.name, v)  # config.json and resume comparisons see a plain string
                ok, want = isinstance(v, str), "a string"
            elif kind.startswith("list"):
                ok = isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                want = "a list of integers"
            else:  # pragma: no cover - a field of a new type: add its check above
                continue
            if not ok:
                raise DebaError(f"{f.name} must be {want}, got {v!r}")

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k.replace("-", "_"): v for k, v in d.items() if k != "schema_version"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DebaError(f"{source}: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise DebaError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        data = load_config_file(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping of TrainConfig keys."""
    path = Path(path)
    text = read_text_input(path, "config file", "a config must be YAML or JSON")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both mean the same to the user
        raise DebaError(f"{path}: cannot parse config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DebaError(f"{path}: a config file must hold a mapping of keys to values")
    return data


def field_types() -> dict[str, Any]:
    return {f.name: f.type for f in fields(TrainConfig)}


__all__ = ["TrainConfig", "load_config_file", "POLICIES", "field_types", "get_args"]
