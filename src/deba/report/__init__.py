"""Tables and figures from run logs alone: the analogues of the paper's Tables 1-4 and Figures 1-3, and every
run's batch-size trajectory, as markdown, CSV and PNG, with the paper's published numbers beside ours.

Inputs are study folders (searched recursively for run directories holding summary.json, config.json and
epochs.jsonl) or `deba study --pack` archives; several inputs merge.

Statistics (also written into report.md):
- accuracy is the final-epoch test accuracy in percent; best-epoch accuracy is shown beside it;
- "±" is the sample standard deviation over seeds (ddof=1), as the paper's "mean ± std over five seeds"
  most likely is; with one seed it is blank;
- Δacc = acc - acc_fixed paired per seed (same dataset, architecture, epochs), mean ± std over the paired
  seeds, like the speedup beside it;
- speedup = 1 - t / t_fixed paired per seed, mean ± std over the paired seeds (spec section 4); throughput =
  mean t_fixed / mean t over the same seeds (the paper's 778 s / 512 s = 1.5x); t is training time without
  evaluation; a group whose runs shared the device is labelled "shared xN" (N = concurrent_runs);
- modelled solo time (with --bench): the sum over a run's epochs of the bench's solo time per step at that
  epoch's batch size times the steps the epoch took (log-log interpolation between measured batch sizes);
- every arm is also compared with a reference arm, by default fixed-cosine (B=64 with a cosine lr decay: what
  a practitioner would run instead of a constant lr), paired per seed: Δacc = acc - acc_ref, time ratio =
  t / t_ref, each mean ± std over the paired seeds; accuracy per second = final acc / t per run, and its
  ratio to the reference's; time to the reference's accuracy = training time until the first evaluated
  epoch whose test accuracy reaches the reference arm's mean final accuracy (runs that never do are counted,
  not averaged).

The package, one job per module: ``paper`` (the paper's published numbers), ``runs`` (loading runs, through
deba.runfolder), ``stats`` (mean ± std, paired speedups, the bench's modelled time, arms, time to accuracy,
steps), ``tables`` (every table as a pandas frame; a table's notes in ``df.attrs["notes"]``), ``figures``,
``markdown`` (report.md section by section) and ``build`` (``build_report``, ``default_out``). Every name below is
importable from ``deba.report`` as before the split.
"""

from __future__ import annotations

from .build import build_report, default_out, make_tables
from .figures import draw_figures
from .markdown import ReportContent, markdown_table, render_markdown
from .paper import (
    ABLATION_TITLES,
    ABLATIONS,
    PAPER_COOLDOWN_COLUMNS,
    PAPER_EPOCHS,
    PAPER_TABLE2,
    PAPER_TABLE3,
    PAPER_TABLE3_SUMMARY,
    PAPER_TABLE4,
)
from .runs import RUN_FILES, RunLog, RunSet, load_runs, not_worse, quality_label, variant_of
from .stats import (
    DEFAULT_REFERENCE,
    BenchTable,
    baseline_arms,
    mean_std,
    paired_speedup,
    reference_arms,
    time_to_accuracy,
    total_steps,
)
from .tables import (
    GOAL_MAX_RATIO,
    GOAL_MIN_SEEDS,
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

__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "PAPER_TABLE3_SUMMARY",
    "PAPER_TABLE4",
    "ABLATIONS",
    "RunLog",
    "not_worse",
    "quality_label",
    "RunSet",
    "BenchTable",
    "load_runs",
    "variant_of",
    "mean_std",
    "paired_speedup",
    "baseline_arms",
    "table4",
    "table_vs_reference",
    "table_goal",
    "GOAL_MAX_RATIO",
    "GOAL_MIN_SEEDS",
    "reference_arms",
    "time_to_accuracy",
    "total_steps",
    "DEFAULT_REFERENCE",
    "table3",
    "table3_summary",
    "tables_1_2",
    "runs_table",
    "trajectories",
    "build_report",
    "default_out",
    "markdown_table",
    "ABLATION_TITLES",
    "PAPER_EPOCHS",
    "PAPER_COOLDOWN_COLUMNS",
    "RUN_FILES",
    "by_batch_size",
    "make_tables",
    "draw_figures",
    "ReportContent",
    "render_markdown",
]
