"""The study spec: parse and check a spec's YAML (arms, grid keys, dependencies between arms) into a
StudySpec."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import DebaError
from ..logio import read_text_input
from ..policy.registry import POLICIES
from ..training.config import TrainConfig

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
# arm values resolved from other arms' finished runs: kind -> the TrainConfig keys it may set
DEPENDENCY_KINDS = {"max_batch_of": ("start_batch", "b_min", "b_max"), "calibrate_from": ("thresholds",)}
SPEC_COPY = "study.yaml"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


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
    from ..policy import DEFAULT_PRESET, deba_config

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
