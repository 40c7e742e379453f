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

__all__ = [
    "BatchSizePolicy", "DEFAULT_PRESET", "DebaConfig", "DebaPolicy", "DecisionRecord", "EpochSignals",
    "FixedPolicy", "PRESETS", "StepGrowPolicy", "deba_config", "make_deba", "__version__",
]
