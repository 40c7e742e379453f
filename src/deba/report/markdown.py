"""report.md, rendered section by section: each section is a function of what it shows, returning its lines;
``render_markdown`` puts them in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from .paper import ABLATION_TITLES, PAPER_EPOCHS
from .runs import RunSet, _num, quality_label
from .stats import BenchTable, _timing_label
from .tables import GOAL_MAX_RATIO, GOAL_MIN_SEEDS


# --- formatting -------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 2) -> str:
    v = _num(v)
    return "" if v is None else f"{v:.{digits}f}"


def _pm(m: Any, s: Any, digits: int = 2) -> str:
    if _num(m) is None:
        return ""
    return _f(m, digits) + (f" ± {_f(s, digits)}" if _num(s) is not None else "")


def _signed(v: Any, digits: int = 2) -> str:
    v = _num(v)
    return "" if v is None else f"{v:+.{digits}f}"


def _x(v: Any) -> str:
    v = _num(v)
    return "" if v is None else f"{v:.2f}x"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)



@dataclass
class ReportContent:
    """What report.md shows: the run set (count, sources), the tables, the figures (title, file name), the bench
    (or None), the calibration window and the notes collected from loading and from the tables."""

    runset: RunSet
    runs: pd.DataFrame
    table1: pd.DataFrame
    table2: pd.DataFrame
    table3: pd.DataFrame
    table3_summary: pd.DataFrame
    table4: pd.DataFrame
    vs_reference: pd.DataFrame | None = None
    goal: pd.DataFrame | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)
    bench: BenchTable | None = None
    window: int = 15
    notes: list[str] = field(default_factory=list)


def render_markdown(c: ReportContent) -> str:
    """report.md (without the paired comparison deba.verdict appends): the sections in order."""
    L = _render_intro(c.runset, c.runs, c.bench)
    L += _render_table1(c.table1, c.window)
    L += _render_table2(c.table2)
    L += _render_table3(c.table3, c.table3_summary, c.bench)
    L += _render_table4(c.table4, c.bench)
    L += _render_vs_reference(c.vs_reference)
    L += _render_goal(c.goal)
    L += _render_figures(c.figures)
    L += _render_runs(c.runs)
    L += _render_notes(c.notes)
    return "\n".join(L)


def _render_intro(runset: RunSet, runs_df: pd.DataFrame, bench: BenchTable | None) -> list[str]:
    """The title, what was read, and the conventions."""
    statuses = runs_df["status"].value_counts().to_dict()
    epochs = sorted(runs_df["epochs"].unique().tolist())
    shared = sorted({int(c) for c in runs_df["concurrent_runs"]})
    L = [
        "# Study report",
        "",
        f"{len(runset.runs)} runs from {', '.join(runset.sources)}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
        + ".",
        f"Epochs per run: {', '.join(map(str, epochs))} (the paper's numbers, shown beside ours, are for "
        f"{PAPER_EPOCHS} epochs on its own H100 setup).",
        "Devices: "
        + (", ".join(sorted({str(d) for d in runs_df["device_name"].dropna()})) or "not recorded")
        + ".",
        "",
        "## Conventions",
        "",
        "- Accuracy: final-epoch test accuracy (%); the best epoch's accuracy is shown beside it, never instead.",
        "- `±`: sample standard deviation over seeds (ddof=1); blank with one seed.",
        "- Δacc: mean final accuracy of the arm minus that of the fixed-batch arm of the same dataset, "
        "architecture and epochs.",
        "- Speedup: 1 - t / t_fixed paired per seed, mean ± std over the paired seeds (%). Throughput: mean "
        "t_fixed / mean t over the same seeds. t = training time, evaluation excluded.",
        "- Timing `shared xN`: the runs shared the device with N-1 other runs, so their times (and the "
        "speedups from them) are not solo speeds. "
        + (
            "All runs here ran solo."
            if shared == [1]
            else f"Concurrency seen here: {', '.join(map(str, shared))}."
        ),
        (
            "- Modelled solo time: per-step solo time from `deba bench` "
            f"({bench.source}) at each epoch's batch size (log-log interpolation) times the epoch's steps, summed."
            if bench is not None
            else "- No `--bench` file given: no modelled solo times."
        ),
        "",
    ]
    return L


def _render_table1(t1: pd.DataFrame, window: int) -> list[str]:
    """Table 1: calibrated thresholds."""
    L: list[str] = []
    L += ["## Table 1: calibrated thresholds (from the fixed-batch runs, seeds pooled)", ""]
    if t1.empty:
        L += ["Not available (needs deba.calibration and complete fixed-batch runs).", ""]
    else:
        L += [
            f"theta_stab = 75th percentile of dnorm, theta_conf = median of conf (window {window}), epochs 2..T; "
            "paper = its Table 1.",
            "",
            markdown_table(
                [
                    "dataset",
                    "arch",
                    "epochs",
                    "runs",
                    "theta_stab",
                    "paper",
                    "theta_conf (ratio)",
                    "paper",
                    "theta_conf (bounded)",
                ],
                [
                    [
                        r.dataset,
                        r.arch,
                        r.epochs,
                        r.n_runs,
                        _f(r.theta_stab, 3),
                        _f(r.paper_theta_stab, 2),
                        _f(r.theta_conf, 3),
                        _f(r.paper_theta_conf, 2),
                        _f(r.theta_conf_bounded, 3),
                    ]
                    for r in t1.itertuples()
                ],
            ),
            "",
        ]
    return L


def _render_table2(t2: pd.DataFrame) -> list[str]:
    """Table 2: stability taxonomy."""
    L: list[str] = []
    L += ["## Table 2: stability taxonomy (fixed-batch profiling)", ""]
    if t2.empty:
        L += ["Not available (needs deba.calibration and complete fixed-batch runs).", ""]
    else:
        dcols = [c for c in t2.columns if c.startswith("delta_acc[")]
        L += [
            "mu_S, sigma_S: mean and sample std (ddof=1) of the stability score S over the fixed runs' seeds; "
            "the paper profiled seeds 2, 42, 199.",
            "",
            markdown_table(
                [
                    "dataset",
                    "arch",
                    "runs",
                    "mu_S",
                    "paper",
                    "sigma_S",
                    "paper",
                    "class",
                    "paper class",
                    "prediction",
                    *[f"Δacc {c[10:-1]}" for c in dcols],
                    "paper Δacc",
                ],
                [
                    [
                        r["dataset"],
                        r["arch"],
                        r["n_runs"],
                        _f(r["mu_S"], 3),
                        _f(r["paper_mu_S"], 3),
                        _f(r["sigma_S"], 3),
                        _f(r["paper_sigma_S"], 3),
                        r["class"] or "",
                        r["paper_class"],
                        r["prediction"] or "",
                        *[_signed(r[c]) for c in dcols],
                        _signed(r["paper_delta_acc"], 1),
                    ]
                    for _, r in t2.iterrows()
                ],
            ),
            "",
        ]
    return L


def _render_table3(t3: pd.DataFrame, t3s: pd.DataFrame, bench: BenchTable | None) -> list[str]:
    """Table 3: ablations, and its summary rows."""
    L: list[str] = []
    L += ["## Table 3: ablations (Δacc and speedup vs fixed batch)", ""]
    if t3.empty:
        L += ["No DEBA arm that is the baseline or a single ablation of it, with a fixed arm to compare.", ""]
    else:
        L += [
            "Ablation columns as in the paper; a cooldown of c epochs in an E-epoch run is matched to the paper's "
            "column by c x 100 / E. Paper values: its Table 3 (CIFAR-10).",
            "",
            markdown_table(
                [
                    "dataset",
                    "epochs",
                    "preset",
                    "arch",
                    "ablation",
                    "setting",
                    "arm",
                    "n",
                    "Δacc",
                    "paper",
                    "speedup %",
                    "paper",
                    "timing",
                ]
                + (["modelled speedup %"] if bench is not None else []),
                [
                    [
                        r["dataset"],
                        r["epochs"],
                        r["preset"],
                        r["arch"],
                        ABLATION_TITLES[r["ablation"]],
                        r["setting"],
                        r["arm"],
                        r["n"],
                        _signed(r["delta_acc"]),
                        _signed(r["paper_delta_acc"]),
                        _pm(r["speedup_pct"], r["speedup_pct_std"], 1),
                        _f(r["paper_speedup_pct"], 1),
                        r["timing"],
                    ]
                    + ([_f(r["model_speedup_pct"], 1)] if bench is not None else [])
                    for _, r in t3.iterrows()
                ],
            ),
            "",
            markdown_table(
                [
                    "dataset",
                    "epochs",
                    "preset",
                    "ablation",
                    "degraded > 1 pt",
                    "paper",
                    "mean |Δacc|",
                    "paper",
                ],
                [
                    [
                        r["dataset"],
                        r["epochs"],
                        r["preset"],
                        ABLATION_TITLES[r["ablation"]],
                        r["degraded_gt_1pt"],
                        r["paper_degraded_gt_1pt"],
                        _f(r["mean_abs_delta_acc"]),
                        _f(r["paper_mean_abs_delta_acc"]),
                    ]
                    for _, r in t3s.iterrows()
                ],
            ),
            "",
        ]
    return L


def _render_table4(t4: pd.DataFrame, bench: BenchTable | None) -> list[str]:
    """Table 4: accuracy and training time, every arm vs fixed batch."""
    L: list[str] = []
    L += [
        "## Table 4: accuracy and training time, every arm vs fixed batch",
        "",
        *(["Language models: the quality is the final validation loss in nats per token (lower is better); Δ is "
           "loss minus the baseline's, so negative is better; best-epoch is the lowest validation loss.", ""]
          if "metric" in t4.columns and "final_val_loss" in set(t4["metric"]) else []),
        "n counts complete runs; stopped or unfinished runs are listed under Runs and left out of the means. "
        "Paper values (beside ours, in the `paper` columns) are its Table 4: `Fixed` beside our fixed arm, `DEBA` "
        "beside each DEBA arm without ablation.",
        "",
    ]
    heads = [
        "dataset",
        "arch",
        "arm",
        "n",
        quality_label(list(t4["metric"]) if "metric" in t4.columns else []),
        "paper",
        "best-epoch " + quality_label(list(t4["metric"]) if "metric" in t4.columns else []),
        "Δacc" if "metric" not in t4.columns or "final_val_loss" not in set(t4["metric"]) else "Δ",
        "paper",
        "time s",
        "paper",
        "speedup %",
        "paper",
        "throughput",
        "paper",
        "acc %/s",
        "timing",
    ]
    if bench is not None:
        heads += ["modelled solo time s", "modelled speedup %", "modelled throughput"]
    rows = []
    for _, r in t4.iterrows():
        row = [
            r["dataset"],
            r["arch"],
            r["arm"],
            f"{r['n']}" + (f" (+{r['n_incomplete']} not complete)" if r["n_incomplete"] else ""),
            _pm(r["acc_mean"], r["acc_std"]),
            _pm(r["paper_acc"], r["paper_acc_std"]),
            _pm(r["best_acc_mean"], r["best_acc_std"]),
            _signed(r["delta_acc"]),
            _signed(r["paper_delta_acc"]),
            _pm(r["time_s_mean"], r["time_s_std"], 0),
            _pm(r["paper_time_s"], r["paper_time_s_std"], 0),
            _pm(r["speedup_pct"], r["speedup_pct_std"], 1),
            _pm(r["paper_speedup_pct"], r["paper_speedup_pct_std"], 1),
            _x(r["throughput"]),
            _x(r["paper_throughput"]),
            _f(r["acc_per_s"], 4),
            r["timing"],
        ]
        if bench is not None:
            row += [
                _pm(r["model_time_s_mean"], r["model_time_s_std"], 0),
                _pm(r["model_speedup_pct"], r["model_speedup_pct_std"], 1),
                _x(r["model_throughput"]),
            ]
        rows.append(row)
    L += [markdown_table(heads, rows), ""]
    return L


def _render_figures(figs: Sequence[tuple[str, str]]) -> list[str]:
    """The figures, by title and file name."""
    L: list[str] = []
    if figs:
        L += ["## Figures", ""]
        for title, name in figs:
            L += [f"### {title}", "", f"![{title}]({name})", ""]
        L += [
            "Per-epoch values behind the figures: `epoch_time_by_batch.csv`, `grad_var_by_batch.csv`; every run's "
            "trajectory, epoch by epoch: `trajectories.csv`.",
            "",
        ]
    return L


def _quality_head(runs_df: pd.DataFrame) -> str:
    return quality_label(list(runs_df["metric"]) if "metric" in runs_df.columns else [])


def _render_runs(runs_df: pd.DataFrame) -> list[str]:
    """Every run, one line each."""
    L: list[str] = []
    L += [
        "## Runs",
        "",
        markdown_table(
            ["run", "status", _quality_head(runs_df), "best %" if _quality_head(runs_df) == "acc %" else "best",
             "train s", "batch sizes", "up/down", "shared"],
            [
                [
                    r.run_id,
                    r.status,
                    _f(r.quality if hasattr(r, "quality") else r.final_test_acc),
                    _f(r.best_quality if hasattr(r, "best_quality") else r.best_test_acc),
                    _f(r.train_time_s, 0),
                    f"{r.start_batch_size} -> {r.final_batch_size} (max {r.max_batch_size})",
                    f"{r.increases}/{r.rollbacks}",
                    _timing_label(int(r.concurrent_runs)),
                ]
                for r in runs_df.itertuples()
            ],
        ),
        "",
    ]
    return L


def _render_notes(notes: Sequence[str]) -> list[str]:
    """What loading and the tables had to say about the input."""
    L: list[str] = []
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return L


def _render_vs_reference(t: pd.DataFrame | None) -> list[str]:
    L = ["## Every arm vs fixed-cosine (the baseline a practitioner would run)", ""]
    if t is None or t.empty:
        return L + ["No fixed-cosine arm (fixed B=64, cosine lr decay) to compare with.", ""]
    refs = sorted(set(t["reference_arm"]))
    metrics = set(t["metric"]) if "metric" in t.columns else {"final_test_acc"}
    q = {"final_test_acc": "acc", "final_val_loss": "val loss"}
    q = " / ".join(q[m] for m in sorted(metrics))  # "acc", "val loss", or "acc / val loss"
    L += [
        f"Reference arm: {', '.join(refs)}. Paired per seed over complete runs: Δ{q} = {q} - {q} of the reference "
        "and time ratio = t / t_ref (below 1: faster), mean ± std over the paired seeds; steps ratio the same for "
        "the optimizer steps taken, which is what the time ratio becomes where a step takes the same time at every "
        "batch size (a launch-bound GPU, spec section 3), and does not depend on the machine. acc %/s = final "
        "accuracy / training seconds, per run, averaged; it rewards any short run, so read it beside Δacc. Time to "
        f"ref {q}: training seconds until the first evaluated epoch at least as good as the reference's mean final "
        f"{q} (mean over the runs that got there; `reached` counts them).",
        *(["", "Language models: validation loss in nats per token, lower is better (a negative Δ is better); a "
           "loss per second means nothing, so those rows have no acc %/s.", ""]
          if "final_val_loss" in metrics else [""]),
        markdown_table(
            ["dataset", "arch", "arm", "pairs", "acc %" if q == "acc" else q, "ref acc %" if q == "acc" else f"ref {q}", f"Δ{q} vs ref",
             "time ratio", "steps ratio", "acc %/s", "ref acc %/s", "acc/s ratio", "reached", f"time to ref {q} s",
             "timing"],
            [_vs_reference_row(r) for _, r in t.iterrows()],
        ),
        "",
    ]
    return L


def _vs_reference_row(r: pd.Series) -> list[Any]:
    digits = 3 if r.get("metric") == "final_val_loss" else 2  # a loss moves in the third decimal
    is_ref = r["arm"] == r["reference_arm"]
    delta = _signed(r["delta_acc"], digits) + (
        f" ± {_f(r['delta_acc_std'], digits)}" if _num(r["delta_acc_std"]) is not None else "")
    return [
        r["dataset"], r["arch"], r["arm"], r["n_pairs"],
        _f(r["acc_mean"], digits), _f(r["reference_acc_mean"], digits),
        "" if is_ref else delta,
        "" if is_ref else _pm(r["time_ratio"], r["time_ratio_std"], 3),
        "" if is_ref else _pm(r["steps_ratio"], r["steps_ratio_std"], 3),
        _f(r["acc_per_s"], 4), _f(r["reference_acc_per_s"], 4), _x(r["acc_per_s_ratio"]),
        f"{r['reached_reference_acc']}/{r['n']}", _f(r["time_to_reference_acc_s"], 0), r["timing"],
    ]


def _render_goal(t: pd.DataFrame | None) -> list[str]:
    pct = round(100 * (1 - GOAL_MAX_RATIO))
    L = [
        f"## Goal check: at least {pct}% less training time than fixed B=64, accuracy equal or better",
        "",
    ]
    if t is None or t.empty:
        return L + ["No arm has a fixed-batch baseline to pair with.", ""]
    L += [
        f"Seed by seed against the baseline arm of the same architecture and epochs (goal_check.csv): a seed "
        f"passes when its final accuracy is at least the baseline's and its training time is at most "
        f"{GOAL_MAX_RATIO:g}x the baseline's; an arm meets the goal on an architecture with at least "
        f"{GOAL_MIN_SEEDS} passing seeds. Time counts only where it is comparable (both runs solo, or a "
        "modelled solo time from `deba bench` for both); runs that shared the device are judged on optimizer "
        "steps only, the machine-independent part of the time.",
        "",
        markdown_table(
            ["dataset", "arch", "arm", "vs", "pairs", "acc ≥ baseline", "time: seeds passing",
             "steps: seeds passing", "goal (time)", "goal (steps)", "per seed: Δacc, time ratio, steps ratio"],
            [
                [
                    r["dataset"],
                    r["arch"],
                    r["arm"],
                    r["baseline_arm"],
                    r["n_pairs"],
                    r["seeds_acc_at_least_baseline"],
                    f"{r['seeds_goal_time']}/{r['pairs_time_comparable']}"
                    if r["pairs_time_comparable"] else f"not comparable ({r['timing']})",
                    f"{r['seeds_goal_steps']}/{r['n_pairs']}",
                    "-" if r["goal_time"] is None else ("met" if r["goal_time"] else "no"),
                    "met" if r["goal_steps"] else "no",
                    r["per_seed"],
                ]
                for _, r in t.iterrows()
            ],
        ),
        "",
    ]
    for key, what in (("goal_time", "training time"), ("goal_steps", "optimizer steps")):
        met = t[t[key] == True]  # noqa: E712 (None, True, False)
        for arm in sorted(set(t["arm"])):
            archs = sorted(set(met.loc[met["arm"] == arm, "arch"]))
            judged = t[(t["arm"] == arm) & t[key].notna()]
            if len(judged):
                L.append(f"- {arm}, by {what}: meets the goal on {len(archs)} of {len(set(judged['arch']))} "
                         f"architecture(s){': ' + ', '.join(archs) if archs else ''} (the issue asks for three).")
    L.append("")
    return L


__all__ = ["ReportContent", "render_markdown", "markdown_table"]
