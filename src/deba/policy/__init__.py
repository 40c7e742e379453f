"""Policy layer: signals in, decision out. Pure Python, no torch."""
from .base import (
    CONF_MODES,
    DECISIONS,
    BatchSizePolicy,
    DecisionRecord,
    EpochSignals,
    SignalTracker,
    confidence,
    relative_change,
)
from .deba import DebaConfig, DebaPolicy
from .presets import (
    ARCH_ALIASES,
    DEFAULT_PRESET,
    PRESETS,
    TABLE1_THRESHOLDS,
    UNIVERSAL_THRESHOLDS,
    canonical_arch,
    deba_config,
    make_deba,
)
from .noise import GnsPolicy
from .schedules import FixedPolicy, SeesawPolicy, StepGrowPolicy, cosine_halvings

__all__ = [
    "ARCH_ALIASES", "BatchSizePolicy", "CONF_MODES", "DECISIONS", "DEFAULT_PRESET", "DebaConfig", "DebaPolicy",
    "DecisionRecord", "EpochSignals", "FixedPolicy", "GnsPolicy", "SeesawPolicy", "cosine_halvings", "PRESETS", "SignalTracker", "StepGrowPolicy",
    "TABLE1_THRESHOLDS", "UNIVERSAL_THRESHOLDS", "canonical_arch", "confidence", "deba_config", "make_deba",
    "relative_change",
]
