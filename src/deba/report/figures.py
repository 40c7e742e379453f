"""The report's figures (PNG, matplotlib on the Agg backend): epoch time and gradient variance against the batch
size, and every run's batch-size trajectory."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .runs import RunSet
from .stats import BenchTable


# --- figures ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fig_by_batch(
    data: pd.DataFrame,
    value: str,
    ylabel: str,
    title: str,
    path: Path,
    bench: pd.DataFrame | None = None,
    logy: bool = True,
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (dataset, arch), g in data.groupby(["dataset", "arch"]):
        g = g.sort_values("batch_size")
        label = arch if data["dataset"].nunique() == 1 else f"{arch} ({dataset})"
        ax.plot(g["batch_size"], g[f"{value}_median"], marker="o", label=f"{label}, in runs")
    if bench is not None and not bench.empty:
        for (arch, mode), g in bench.groupby(["arch", "mode"]):
            g = g.sort_values("batch_size")
            ax.plot(
                g["batch_size"],
                g["epoch_s"],
                linestyle="--",
                marker="x",
                label=f"{arch}, bench {mode} (solo)",
            )
    ax.set_xscale("log", base=2)
    bs = list(data["batch_size"]) + (
        list(bench["batch_size"]) if bench is not None and not bench.empty else []
    )
    if bs:
        _pow2_ticks(ax, "x", float(min(bs)), float(max(bs)))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pow2_ticks(ax, axis: str, lo: float, hi: float) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = [2**k for k in range(16) if lo / 1.5 <= 2**k <= hi * 1.5]
    target = ax.yaxis if axis == "y" else ax.xaxis
    if ticks:
        (ax.set_yticks if axis == "y" else ax.set_xticks)(ticks)
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())


def _fig_trajectories(traj: pd.DataFrame, dataset: str, arch: str, path: Path) -> None:
    """One panel per arm, one line per seed: with many arms one shared panel is unreadable."""
    plt = _pyplot()
    d = traj[(traj.dataset == dataset) & (traj.arch == arch)].dropna(subset=["batch_size"])
    arms = sorted(d["arm"].unique())
    ncols = min(3, max(1, len(arms)))
    nrows = math.ceil(len(arms) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharex=True, sharey=True, squeeze=False
    )
    lo, hi = float(d["batch_size"].min()), float(d["batch_size"].max())
    for ax, arm in zip(axes.flat, arms):
        for (seed, _run_id), g in d[d.arm == arm].groupby(["seed", "run_id"]):
            g = g.sort_values("epoch")
            ax.step(g["epoch"], g["batch_size"], where="post", alpha=0.85, label=f"seed {seed}")
        ax.set_yscale("log", base=2)
        _pow2_ticks(ax, "y", lo, hi)
        ax.set_title(arm, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(arms) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("batch size")
    fig.suptitle(f"batch size per epoch, {arch} on {dataset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def draw_figures(
    runset: RunSet,
    traj: pd.DataFrame,
    epoch_time: pd.DataFrame,
    grad_var: pd.DataFrame,
    bench_table: BenchTable | None,
    out: Path,
) -> list[tuple[str, str]]:
    """Write the figures into ``out``; (title, file name) for each, in report order."""
    figs: list[tuple[str, str]] = []
    bench_df = None
    if bench_table is not None:
        bench_df = pd.DataFrame(
            [
                {"arch": a, "mode": m, "batch_size": b, "epoch_s": s * (50_000 // b)}
                for (a, m), pts in bench_table.step_s.items()
                for b, s in pts.items()
            ]
        )
    if not epoch_time.empty or bench_df is not None:
        p = out / "fig1_epoch_time_vs_batch.png"
        shared = max((r.concurrent_runs for r in runset.runs), default=1)
        _fig_by_batch(
            epoch_time,
            "train_time_s",
            "training seconds per epoch (median over epochs)",
            "Figure 1: epoch time vs batch size"
            + (f" (runs shared the device, up to x{shared})" if shared > 1 else ""),
            p,
            bench_df,
        )
        figs.append(("Figure 1: epoch time vs batch size", p.name))
    for dataset, g in grad_var.groupby("dataset"):
        num = {"cifar10": "2", "cifar100": "3"}.get(dataset)
        p = out / (f"fig{num}_grad_var_{dataset}.png" if num else f"fig_grad_var_{dataset}.png")
        _fig_by_batch(
            g,
            "grad_var",
            "gradient variance (median over epochs)",
            f"Figure {num or ''}: gradient variance vs batch size, {dataset}".replace(
                "Figure :", "Figure:"
            ),
            p,
        )
        figs.append((f"gradient variance vs batch size, {dataset}", p.name))
    for (dataset, arch), _ in traj.groupby(["dataset", "arch"]):
        p = out / f"trajectory_{dataset}_{arch}.png"
        _fig_trajectories(traj, dataset, arch, p)
        figs.append((f"batch-size trajectories, {arch} on {dataset}", p.name))
    return figs


__all__ = ["draw_figures"]
