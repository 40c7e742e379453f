"""The DEBA policy options with the CLI names of spec section 1, shared by every command that configures
the policy (`deba replay`, `deba train`): `add_policy_options(parser)` defines them, `policy_from_args(args)`
builds the policy. Every default is None, meaning "what the preset says", so a command can tell an option
the user gave from one it did not."""

from __future__ import annotations

import argparse
import re

from ..errors import DebaError
from ..policy import (
    ARCH_ALIASES,
    DEFAULT_PRESET,
    PRESETS,
    TABLE1_THRESHOLDS,
    UNIVERSAL_THRESHOLDS,
    DebaPolicy,
    make_deba,
)
from ..policy.registry import POLICIES

# DebaConfig field -> CLI flag, so that a validation message names the option the user typed
_SETTINGS = (
    "theta_stab",
    "theta_conf",
    "cooldown",
    "window",
    "full_history",
    "start_batch",
    "b_min",
    "b_max",
    "grow_factor",
    "rollback_factor",
)
_FLAG = {name: "--" + name.replace("_", "-") for name in _SETTINGS}
_SETTING_RE = re.compile(r"(?<![-\w])(" + "|".join(_SETTINGS) + r")(?!\w)")
BATCH_OPTIONS = ("start_batch", "b_min", "b_max")


def add_policy_options(
    parser: argparse.ArgumentParser, *, batch_options: bool = True, title: str = "DEBA policy options"
) -> argparse._ArgumentGroup:
    """Add --preset, --theta-stab, --theta-conf, --universal-thresholds, --cooldown, --window, --full-history,
    --grow-factor, --rollback-factor and (unless ``batch_options`` is false, for a command that defines
    them itself) --start-batch, --b-min, --b-max. All default to None / False: the preset decides."""
    g = parser.add_argument_group(title)
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"paper: the literal rule, conf = grad_var / median (eq. 4); paper-bounded: conf = grad_var / "
        f"(grad_var + median) (default: {DEFAULT_PRESET})",
    )
    g.add_argument(
        "--theta-stab",
        type=float,
        default=None,
        metavar="X",
        help="stability threshold on dnorm and dloss (default: the paper's Table 1 value for --arch)",
    )
    g.add_argument(
        "--theta-conf",
        type=float,
        default=None,
        metavar="X",
        help="confidence threshold (default: the paper's Table 1 value for --arch)",
    )
    g.add_argument(
        "--universal-thresholds",
        action="store_true",
        default=False,
        help=f"Table 3 ablation: theta_stab {UNIVERSAL_THRESHOLDS[0]:g}, theta_conf "
        f"{UNIVERSAL_THRESHOLDS[1]:g} for every architecture (explicit thresholds still win)",
    )
    g.add_argument(
        "--cooldown",
        type=int,
        default=None,
        metavar="N",
        help="epochs held after each increase or rollback (default 10)",
    )
    g.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="grad_var values in the median window, the current one included (default 15)",
    )
    g.add_argument(
        "--full-history",
        action="store_true",
        default=False,
        help="ablation: the window never drops old grad_var values",
    )
    if batch_options:
        g.add_argument(
            "--start-batch", type=int, default=None, metavar="B", help="first batch size (default 64)"
        )
        g.add_argument(
            "--b-min", type=int, default=None, metavar="B", help="smallest batch size (default 16)"
        )
        g.add_argument(
            "--b-max", type=int, default=None, metavar="B", help="largest batch size (default 2048)"
        )
    g.add_argument(
        "--grow-factor",
        type=float,
        default=None,
        metavar="F",
        help="increase: B -> floor(F * B) (default 1.5)",
    )
    g.add_argument(
        "--rollback-factor",
        type=float,
        default=None,
        metavar="F",
        help="rollback: B -> floor(F * B) (default 0.8)",
    )
    return g


def policy_help() -> str:
    """--policy's help, from the registry as it stands when the parser is built (a policy registered by a
    plug-in module is listed too)."""
    return "batch-size policy, one of: " + "; ".join(f"{name} ({spec.summary})" for name, spec in POLICIES.items())


def _known_archs() -> str:
    names = sorted(TABLE1_THRESHOLDS) + [f"{a} (= {c})" for a, c in sorted(ARCH_ALIASES.items())]
    return ", ".join(names)


def cli_message(message: str) -> str:
    """Rename DebaConfig fields in a policy error to the CLI flags the user typed (b_min -> --b-min)."""
    return _SETTING_RE.sub(lambda m: _FLAG[m.group(1)], message)


def policy_from_args(args: argparse.Namespace) -> DebaPolicy:
    """Build the DEBA policy from parsed options (and ``args.arch`` where the command has one).

    --arch picks the paper's Table 1 thresholds; it may be left out (or name a model the paper does not
    have) when --theta-stab and --theta-conf are both given, or with --universal-thresholds.
    Invalid values raise DebaError with one line naming the option.
    """
    preset = getattr(args, "preset", None) or DEFAULT_PRESET
    arch = getattr(args, "arch", None)
    universal = bool(getattr(args, "universal_thresholds", False))
    overrides = {name: getattr(args, name, None) for name in _SETTINGS}
    # store_true flags: False means "not given", so the preset's value stands
    if not overrides["full_history"]:
        overrides["full_history"] = None
    explicit = overrides["theta_stab"] is not None and overrides["theta_conf"] is not None
    if arch is None and not universal and not explicit:
        raise DebaError(
            "--arch is required unless both --theta-stab and --theta-conf are given "
            f"(or --universal-thresholds); architectures with Table 1 thresholds: {_known_archs()}"
        )
    try:
        return make_deba(preset, arch, universal_thresholds=universal, **overrides)
    except ValueError as e:
        raise DebaError(cli_message(str(e))) from None


def describe_policy(policy: DebaPolicy) -> str:
    """One line naming the preset and every setting, for the head of a report."""
    c = policy.config
    arch = f" for {policy.arch}" if policy.arch else ""
    history = "full history" if c.full_history else f"window {c.window}"
    return (
        f"DEBA preset {policy.preset}{arch}: theta_stab {c.theta_stab:g}, theta_conf {c.theta_conf:g}, "
        f"{c.conf_mode} conf, {history}, cooldown {c.cooldown}, batch {c.start_batch} in [{c.b_min}, {c.b_max}], "
        f"grow x{c.grow_factor:g}, rollback x{c.rollback_factor:g}"
    )
