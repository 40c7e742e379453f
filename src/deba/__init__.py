"""deba: adaptive batch-size training for PyTorch.

The policy layer (:mod:`deba.policy`) is pure Python; the signals layer (:mod:`deba.signals`)
and everything above it needs torch, and is imported lazily so that ``import deba`` stays light.
"""
__version__ = "0.1.0"

from .policy import (  # noqa: E402
    DEFAULT_PRESET,
    PRESETS,
    BatchSizePolicy,
    DebaConfig,
    DebaPolicy,
    DecisionRecord,
    EpochSignals,
    FixedPolicy,
    StepGrowPolicy,
    deba_config,
    make_deba,
)

# torch-dependent parts, imported on first use so that `import deba` (the policy) needs no torch
_LAZY = {
    "GradientSignals": "deba.signals",
    "DebaController": "deba.integrations.loop",
    "TrainConfig": "deba.training.config",
    "train": "deba.training.trainer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deba' has no attribute {name!r}")


__all__ = [
    "BatchSizePolicy", "DebaController", "GradientSignals", "TrainConfig", "train", "DEFAULT_PRESET", "DebaConfig", "DebaPolicy", "DecisionRecord", "EpochSignals",
    "FixedPolicy", "PRESETS", "StepGrowPolicy", "deba_config", "make_deba", "__version__",
]
