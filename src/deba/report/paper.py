"""The paper's published numbers (arXiv 2511.03809): Tables 2-4 and what names their columns."""

from __future__ import annotations

from typing import Any

from ..calibration import PAPER_TABLE2

# --- the paper's published numbers (arXiv 2511.03809) -------------------------------------------------
# Table 1 lives in deba.policy.TABLE1_THRESHOLDS (the presets use it); the rest is here. Architectures by
# torchvision name; accuracies in percent, times in seconds, speedups in percent. All at 100 epochs, 5 seeds.
# Table 2 lives in deba.calibration.PAPER_TABLE2 (imported above).
ABLATIONS = ("baseline", "universal", "cooldown5", "cooldown2", "full-history")
ABLATION_TITLES = {
    "baseline": "baseline (cooldown 10, window 15)",
    "universal": "universal thresholds",
    "cooldown5": "cooldown 5",
    "cooldown2": "cooldown 2",
    "full-history": "full history",
}
# Table 3 (CIFAR-10): (delta acc, speedup %) per ablation
PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "resnet18": {
        "baseline": (2.43, 34.2),
        "universal": (-0.16, -10.8),
        "cooldown2": (-2.75, 40.7),
        "cooldown5": (0.83, 21.6),
        "full-history": (1.94, 31.8),
    },
    "resnet50": {
        "baseline": (-0.59, 42.4),
        "universal": (0.43, -5.6),
        "cooldown2": (-12.62, 58.7),
        "cooldown5": (-2.35, 43.4),
        "full-history": (0.14, 11.9),
    },
    "densenet121": {
        "baseline": (1.40, 54.9),
        "universal": (-0.26, -0.05),
        "cooldown2": (-4.30, 79.0),
        "cooldown5": (0.24, 67.0),
        "full-history": (1.02, 37.1),
    },
    "efficientnet_b0": {
        "baseline": (2.37, 43.3),
        "universal": (-0.95, -25.5),
        "cooldown2": (-2.29, 65.0),
        "cooldown5": (1.97, 52.0),
        "full-history": (0.24, 7.1),
    },
    "mobilenet_v3_large": {
        "baseline": (6.98, 50.4),
        "universal": (7.02, 37.9),
        "cooldown2": (0.64, 55.4),
        "cooldown5": (5.24, 50.2),
        "full-history": (5.48, 42.0),
    },
    "vit_b_16": {
        "baseline": (-0.61, 8.3),
        "universal": (-0.02, -1.9),
        "cooldown2": (-1.80, 11.9),
        "cooldown5": (-0.59, 10.0),
        "full-history": (-0.43, 6.8),
    },
}
PAPER_TABLE3_SUMMARY = {  # the table's last two rows: architectures degraded by > 1 point, mean |delta acc|
    "baseline": ("0/6", 2.40),
    "universal": ("3/6", 1.47),
    "cooldown2": ("5/6", 4.07),
    "cooldown5": ("1/6", 1.20),
    "full-history": ("0/6", 1.54),
}


def _t4(acc, time_s, delta=None, speedup=None, throughput=1.0):
    return {"acc": acc, "delta_acc": delta, "time_s": time_s, "speedup": speedup, "throughput": throughput}


# Table 4: (arch, dataset, "fixed" | "deba") -> acc (mean, std), delta acc, time (mean, std), speedup (mean, std),
# throughput ratio
PAPER_TABLE4: dict[tuple[str, str, str], dict[str, Any]] = {
    ("resnet18", "cifar10", "fixed"): _t4((83.05, 0.51), (778, 38)),
    ("resnet18", "cifar10", "deba"): _t4((85.48, 0.66), (512, 101), 2.43, (36.6, 13.1), 1.5),
    ("resnet18", "cifar100", "fixed"): _t4((51.81, 0.56), (774, 32)),
    ("resnet18", "cifar100", "deba"): _t4((55.79, 0.77), (441, 15), 3.98, (43.0, 2.9), 1.8),
    ("resnet50", "cifar10", "fixed"): _t4((83.07, 0.62), (1858, 28)),
    ("resnet50", "cifar10", "deba"): _t4((82.48, 1.62), (1069, 120), -0.59, (43.3, 5.5), 1.7),
    ("resnet50", "cifar100", "fixed"): _t4((50.14, 0.81), (1887, 45)),
    ("resnet50", "cifar100", "deba"): _t4((51.43, 3.85), (1045, 81), 1.29, (44.7, 3.8), 1.8),
    ("densenet121", "cifar10", "fixed"): _t4((84.95, 0.57), (2906, 73)),
    ("densenet121", "cifar10", "deba"): _t4((86.35, 0.68), (1310, 197), 1.40, (55.0, 6.6), 2.2),
    ("densenet121", "cifar100", "fixed"): _t4((56.18, 0.70), (2923, 46)),
    ("densenet121", "cifar100", "deba"): _t4((59.42, 0.08), (1097, 23), 3.24, (62.4, 1.1), 2.7),
    ("efficientnet_b0", "cifar10", "fixed"): _t4((83.18, 0.65), (1443, 61)),
    ("efficientnet_b0", "cifar10", "deba"): _t4((85.55, 0.63), (818, 210), 2.37, (47.7, 13.1), 1.8),
    ("efficientnet_b0", "cifar100", "fixed"): _t4((56.29, 0.52), (1434, 56)),
    ("efficientnet_b0", "cifar100", "deba"): _t4((56.72, 0.85), (618, 7), 0.43, (56.8, 1.5), 2.3),
    ("mobilenet_v3_large", "cifar10", "fixed"): _t4((69.54, 3.18), (882, 45)),
    ("mobilenet_v3_large", "cifar10", "deba"): _t4((76.52, 0.45), (438, 9), 6.98, (50.3, 3.4), 2.0),
    ("mobilenet_v3_large", "cifar100", "fixed"): _t4((41.36, 0.76), (899, 61)),
    ("mobilenet_v3_large", "cifar100", "deba"): _t4((45.37, 1.03), (439, 3), 4.01, (51.0, 3.3), 2.0),
    ("vit_b_16", "cifar10", "fixed"): _t4((68.84, 1.2), (16720.31, 139.3)),
    ("vit_b_16", "cifar10", "deba"): _t4((68.23, 0.56), (15331.05, 479.71), -0.61, (8.3, 2.89), 1.01),
    ("vit_b_16", "cifar100", "fixed"): _t4((38.57, 1.1), (16719.13, 293.1)),
    ("vit_b_16", "cifar100", "deba"): _t4((39.62, 2.34), (15859.8, 331.02), 1.05, (5.1, 2.96), 1.05),
}
PAPER_EPOCHS = 100
PAPER_COOLDOWN_COLUMNS = {2: "cooldown2", 5: "cooldown5", 10: "baseline"}  # the paper's cooldowns, 100 epochs


__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "PAPER_TABLE3_SUMMARY",
    "PAPER_TABLE4",
    "PAPER_EPOCHS",
    "PAPER_COOLDOWN_COLUMNS",
    "ABLATIONS",
    "ABLATION_TITLES",
]
