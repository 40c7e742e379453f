"""The build: read the runs, make every table and figure, write the CSVs, the PNGs and report.md."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..logio import atomic_write_text, make_dir
from .figures import draw_figures
from .markdown import ReportContent, render_markdown
from .runs import RunSet, load_runs
from .stats import BenchTable
from .tables import (
    _modelled_times,
    by_batch_size,
    runs_table,
    table3,
    table3_summary,
    table4,
    table_goal,
    table_vs_reference,
    tables_1_2,
    trajectories,
)


def default_out(inputs: Sequence[str | os.PathLike]) -> Path:
    first = Path(inputs[0])
    if first.is_dir():
        return first / "report"
    name = re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", first.name)
    return first.with_name(f"{name}-report")


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))



def build_report(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    bench: str | os.PathLike | None = None,
    bench_mode: str | None = None,
    baseline: str | None = None,
    window: int = 15,
    figures: bool = True,
    reference: str | None = None,
) -> dict[str, Any]:
    """Read the runs, write report.md, the CSVs and the PNGs into ``out``; return the tables and paths."""
    runset = load_runs(inputs)
    out = make_dir(Path(out) if out is not None else default_out(inputs), "report folder")
    bench_table = BenchTable.load(bench) if bench else None
    t = make_tables(runset, bench_table, bench_mode, baseline, window, reference)
    files = _write_tables(t, out)
    figs = draw_figures(runset, t["trajectories"], t["epoch_time"], t["grad_var"], bench_table, out) if figures else []
    for _, name in figs:
        files[name] = out / name
    md = render_markdown(
        ReportContent(
            runset, t["runs"], t["table1"], t["table2"], t["table3"], t["table3_summary"], t["table4"],
            vs_reference=t["table4_vs_reference"], goal=t["goal"], figures=figs, bench=bench_table, window=window,
            notes=t["notes"],
        )
    )
    from .. import verdict

    paired = t["paired"]
    md = md.rstrip("\n") + "\n\n" + "\n".join(verdict.render(paired)) + "\n" if not paired.empty else md
    atomic_write_text(out / "report.md", md)
    files["report.md"] = out / "report.md"
    return {"out": out, "files": files, **{k: t[k] for k in RESULT_TABLES}, "notes": t["notes"]}


RESULT_TABLES = ("table1", "table2", "table3", "table3_summary", "table4", "table4_vs_reference", "goal", "paired",
                 "runs", "trajectories")


def make_tables(
    runset: RunSet,
    bench_table: BenchTable | None,
    bench_mode: str | None,
    baseline: str | None,
    window: int,
    reference: str | None,
) -> dict[str, Any]:
    """Every table of the report by name, and ``notes``: loading's, then each table's, in the order they are
    made, then the build's own (an arm asked for that no group has). ``runset`` is left as it was."""
    notes = list(runset.notes)
    t4 = table4(runset, baseline, bench_table, bench_mode)
    notes += [n for n in t4.attrs.get("notes", []) if n not in notes]
    t3 = table3(runset, t4)
    t3s = table3_summary(t3)
    t1, t2 = tables_1_2(runset, t4, baseline, window)
    notes += t1.attrs.get("notes", [])
    t4ref = table_vs_reference(runset, reference)
    if baseline is not None and not any(r.arm == baseline for r in runset.runs):
        notes.append(f"no arm named {baseline!r} in any group: no comparison with a baseline arm")
    if reference is not None and t4ref.empty:
        notes.append(f"no arm named {reference!r} in any group: no comparison with a reference arm")
    modelled = _modelled_times(runset.runs, bench_table, bench_mode)[0] if bench_table is not None else {}
    runs_df = runs_table(runset, modelled)
    goal = table_goal(runset, baseline, modelled)
    from .. import verdict

    paired = verdict.paired_table(runset.runs)
    traj = trajectories(runset)
    epoch_time = by_batch_size(traj, "train_time_s")
    grad_var = by_batch_size(traj, "grad_var")
    return {
        "table1": t1,
        "table2": t2,
        "table3": t3,
        "table3_summary": t3s,
        "table4": t4,
        "table4_vs_reference": t4ref,
        "goal": goal,
        "paired": paired,
        "runs": runs_df,
        "trajectories": traj,
        "epoch_time": epoch_time,
        "grad_var": grad_var,
        "notes": notes,
    }


def _write_tables(t: dict[str, Any], out: Path) -> dict[str, Path]:
    """One CSV per table; {file name: path}."""
    t1, t2, t3, t3s, t4 = t["table1"], t["table2"], t["table3"], t["table3_summary"], t["table4"]
    t4ref, goal, paired, runs_df, traj = t["table4_vs_reference"], t["goal"], t["paired"], t["runs"], t["trajectories"]
    epoch_time, grad_var = t["epoch_time"], t["grad_var"]
    files = {}
    for name, df in (
        ("table1_thresholds.csv", t1),
        ("table2_taxonomy.csv", t2),
        ("table3_ablations.csv", t3),
        ("table3_summary.csv", t3s),
        ("table4_performance.csv", t4),
        ("table4_vs_reference.csv", t4ref),
        ("goal_check.csv", goal),
        ("paired_vs_baselines.csv", paired),
        ("runs.csv", runs_df),
        ("trajectories.csv", traj),
        ("epoch_time_by_batch.csv", epoch_time),
        ("grad_var_by_batch.csv", grad_var),
    ):
        _write_csv(df, out / name)
        files[name] = out / name
    return files


__all__ = ["build_report", "default_out", "make_tables"]
