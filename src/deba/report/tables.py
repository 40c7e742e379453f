"""The report's tables, returned as data (pandas frames): Tables 1-4 and their analogues, every arm against the
reference arm, the goal check, the runs and their trajectories. A table never writes into its input: what it has
to say about the runs is in ``df.attrs["notes"]``, which the build collects into report.md's notes."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ..calibration import PAPER_TABLE2
from ..errors import DebaError
from ..policy import TABLE1_THRESHOLDS, canonical_arch
from .paper import ABLATIONS, PAPER_TABLE3, PAPER_TABLE3_SUMMARY, PAPER_TABLE4
from .runs import RunLog, RunSet, _num, not_worse
from .stats import (
    BenchTable,
    _by_group,
    _first_per_seed,
    _steps_per_seed,
    _timing_label,
    baseline_arms,
    mean_std,
    paired_speedup,
    reference_arms,
    time_to_accuracy,
    total_steps,
)


def table_vs_reference(runset: RunSet, reference: str | None = None) -> pd.DataFrame:
    """Every arm against the reference arm (default fixed-cosine) of its (dataset, arch, epochs), paired per
    seed over complete runs. Empty where no group has a reference arm."""
    ref_of = reference_arms(runset.runs, reference)
    groups = _by_group(runset.runs)
    rows = []
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] != ref_of.get(k[:3]), k[3]))
    for dataset, arch, epochs, arm in order:
        ref_arm = ref_of.get((dataset, arch, epochs))
        if ref_arm is None:
            continue
        done = [r for r in groups[(dataset, arch, epochs, arm)] if r.complete]
        ref = [r for r in groups.get((dataset, arch, epochs, ref_arm), []) if r.complete]
        acc = _first_per_seed(done, "final_test_acc")
        ref_acc = _first_per_seed(ref, "final_test_acc")
        t = _first_per_seed(done, "train_time_s")
        ref_t = _first_per_seed(ref, "train_time_s")
        seeds = sorted(set(acc) & set(ref_acc) & set(t) & set(ref_t))
        d_acc = mean_std(acc[k] - ref_acc[k] for k in seeds)
        ratio = mean_std(t[k] / ref_t[k] for k in seeds if ref_t[k] > 0)
        st, ref_st = _steps_per_seed(done), _steps_per_seed(ref)
        steps_ratio = mean_std(st[k] / ref_st[k] for k in seeds if k in st and ref_st.get(k))
        loss = any(not r.higher_is_better for r in done + ref)  # a language model: validation loss
        # accuracy per second; a loss per second means nothing, so a loss row has none
        aps = math.nan if loss else mean_std(acc[k] / t[k] for k in acc if k in t and t[k] > 0)[0]
        ref_aps = math.nan if loss else mean_std(ref_acc[k] / ref_t[k] for k in ref_acc if k in ref_t and ref_t[k] > 0)[0]
        target = mean_std(ref_acc.values())[0]
        reach = [time_to_accuracy(r, target) for r in done] if not math.isnan(target) else []
        reached = [x for x in reach if x is not None]
        shared = max([r.concurrent_runs for r in done + ref] or [1])
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "arm": arm,
                "reference_arm": ref_arm,
                "metric": "final_val_loss" if loss else "final_test_acc",
                "n": len(done),
                "n_pairs": len(seeds),
                "acc_mean": mean_std(acc.values())[0],
                "reference_acc_mean": target,
                "delta_acc": d_acc[0],
                "delta_acc_std": d_acc[1],
                "time_ratio": ratio[0],
                "time_ratio_std": ratio[1],
                "steps_ratio": steps_ratio[0],
                "steps_ratio_std": steps_ratio[1],
                "acc_per_s": aps,
                "reference_acc_per_s": ref_aps,
                "acc_per_s_ratio": aps / ref_aps if ref_aps and not math.isnan(ref_aps) else math.nan,
                "reached_reference_acc": len(reached),
                "time_to_reference_acc_s": mean_std(reached)[0] if reached else math.nan,
                "timing": _timing_label(shared),
            }
        )
    return pd.DataFrame(rows)


# issue 5's goal: "at least 40% less training time than fixed B=64 over the same epochs with accuracy equal or
# better, on at least 2 seeds" (on at least three architectures, counted in report.md)
GOAL_MAX_RATIO = 0.6
GOAL_MIN_SEEDS = 2


def _first_complete_per_seed(runs: Sequence[RunLog]) -> dict[int, RunLog]:
    out: dict[int, RunLog] = {}
    for r in runs:
        if r.complete:
            out.setdefault(r.seed, r)
    return out


def table_goal(
    runset: RunSet,
    baseline: str | None = None,
    modelled: Mapping[str, float] | None = None,
    max_ratio: float = GOAL_MAX_RATIO,
    min_seeds: int = GOAL_MIN_SEEDS,
) -> pd.DataFrame:
    """Seed by seed against the fixed-batch baseline of the group: does the arm reach at least the baseline's
    final accuracy with at most ``max_ratio`` of its training time (and, separately, of its optimizer steps)?

    Time is compared only where it is comparable: both runs solo, or both with a modelled solo time from
    ``deba bench`` (``modelled``, by run id). Pairs of runs that shared the device count for accuracy and steps
    but not for time. ``goal_time`` / ``goal_steps``: at least ``min_seeds`` seeds pass (None for time where
    no pair is comparable)."""
    base_of = baseline_arms(runset.runs, baseline)
    groups = _by_group(runset.runs)
    modelled = modelled or {}
    rows = []
    for dataset, arch, epochs, arm in sorted(groups):
        base_arm = base_of.get((dataset, arch, epochs))
        if base_arm is None or arm == base_arm:
            continue
        done = _first_complete_per_seed(groups[(dataset, arch, epochs, arm)])
        base = _first_complete_per_seed(groups.get((dataset, arch, epochs, base_arm), []))
        seeds = sorted(set(done) & set(base))
        n_acc = n_time_cmp = n_time = n_steps = 0
        bases, per_seed = set(), []
        for k in seeds:
            r, b = done[k], base[k]
            acc_ok = not_worse(r.quality, b.quality, r.higher_is_better)
            mt, mb = modelled.get(r.run_id, math.nan), modelled.get(b.run_id, math.nan)
            t, tb = _num(r.summary.get("train_time_s")), _num(b.summary.get("train_time_s"))
            if not (math.isnan(mt) or math.isnan(mb)) and mb > 0:
                time_ratio, basis = mt / mb, "modelled solo"
            elif t is not None and tb and max(r.concurrent_runs, b.concurrent_runs) <= 1:
                time_ratio, basis = t / tb, "solo"
            else:
                time_ratio, basis = None, f"shared x{max(r.concurrent_runs, b.concurrent_runs)}"
            st, stb = total_steps(r), total_steps(b)
            steps_ratio = st / stb if st is not None and stb else None
            n_acc += acc_ok
            if time_ratio is not None:
                n_time_cmp += 1
                n_time += acc_ok and time_ratio <= max_ratio
            n_steps += acc_ok and steps_ratio is not None and steps_ratio <= max_ratio
            bases.add(basis)
            d = r.quality - b.quality
            per_seed.append(
                f"{k}: {d:+.2f}, time {'-' if time_ratio is None else f'{time_ratio:.2f}x'}, "
                f"steps {'-' if steps_ratio is None else f'{steps_ratio:.2f}x'}"
            )
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "arm": arm,
                "baseline_arm": base_arm,
                "n_pairs": len(seeds),
                "seeds_acc_at_least_baseline": n_acc,
                "pairs_time_comparable": n_time_cmp,
                "seeds_goal_time": n_time,
                "seeds_goal_steps": n_steps,
                "goal_time": None if n_time_cmp == 0 else n_time >= min_seeds,
                "goal_steps": n_steps >= min_seeds,
                "timing": ", ".join(sorted(bases)),
                "per_seed": "; ".join(per_seed),
            }
        )
    return pd.DataFrame(rows)


def _paper_kind(run: RunLog, is_baseline: bool) -> str | None:
    if is_baseline:
        return "fixed"
    if run.ablation == "baseline":
        return "deba"
    return None



def _modelled_times(
    runs: Sequence[RunLog], bench: BenchTable, bench_mode: str | None
) -> tuple[dict[str, float], list[str]]:
    """Modelled solo seconds by run id for the complete runs (NaN where there is none), and the notes saying why
    a run has none."""
    modelled: dict[str, float] = {}
    notes: list[str] = []
    for r in runs:
        if r.complete:
            t, note = bench.modelled_time(r, bench_mode)
            modelled[r.run_id] = t
            if note and note not in notes:
                notes.append(note)
    return modelled, notes


def _duplicate_seed_notes(dataset: str, arch: str, arm: str, done: Sequence[RunLog]) -> list[str]:
    notes: list[str] = []
    seen: dict[int, str] = {}
    for r in done:
        if r.seed in seen:
            note = (
                f"{dataset}/{arch}/{arm}: seed {r.seed} appears twice ({seen[r.seed]}, {r.run_id}); both count "
                "in accuracy and time, the first pairs for speedup (report one study at a time?)"
            )
            if note not in notes:
                notes.append(note)
        seen.setdefault(r.seed, r.run_id)
    return notes


def _table4_row(
    key: tuple[str, str, int, str], members: Sequence[RunLog], done: Sequence[RunLog], base_arm: str | None,
    base: Sequence[RunLog],
) -> dict[str, Any]:
    """Table 4's measured columns for one (dataset, arch, epochs, arm) against its baseline arm's runs."""
    dataset, arch, epochs, arm = key
    acc = [r.quality for r in done]
    best = [_num(r.summary.get("best_test_acc" if r.higher_is_better else "best_val_loss")) for r in done]
    times = _first_per_seed(done, "train_time_s")
    base_times = _first_per_seed(base, "train_time_s")
    all_times = [
        float(r.summary["train_time_s"]) for r in done if _num(r.summary.get("train_time_s")) is not None
    ]
    acc_m, acc_s = mean_std(acc)
    best_m, best_s = mean_std(best)
    t_m, t_s = mean_std(all_times)
    is_base = arm == base_arm
    acc_seed, base_acc_seed = _first_per_seed(done, "final_test_acc"), _first_per_seed(base, "final_test_acc")
    d_acc = mean_std(acc_seed[k] - base_acc_seed[k] for k in sorted(set(acc_seed) & set(base_acc_seed)))
    pair = paired_speedup(times, base_times) if base and not is_base else {}
    shared = max([r.concurrent_runs for r in done] or [1])
    shared_pair = max([shared] + [r.concurrent_runs for r in base])
    row = {
        "dataset": dataset,
        "arch": arch,
        "epochs": epochs,
        "arm": arm,
        "variant": members[0].variant,
        "baseline_arm": base_arm or "",
        "n": len(done),
        "n_incomplete": len(members) - len(done),
        "seeds": " ".join(str(r.seed) for r in done),
        "acc_mean": acc_m,
        "acc_std": acc_s,
        "best_acc_mean": best_m,
        "best_acc_std": best_s,
        "delta_acc": math.nan if is_base or not base else d_acc[0],
        "delta_acc_std": math.nan if is_base or not base else d_acc[1],
        "time_s_mean": t_m,
        "time_s_std": t_s,
        "speedup_pct": pair.get("speedup_pct", math.nan),
        "speedup_pct_std": pair.get("speedup_pct_std", math.nan),
        "n_pairs": pair.get("n_pairs", 0),
        "throughput": 1.0 if is_base and done else pair.get("throughput", math.nan),
        "acc_per_s": mean_std(
            r.quality / float(r.summary["train_time_s"])
            for r in done
            if (_num(r.summary.get("train_time_s")) or 0) > 0 and r.higher_is_better  # a loss per s means nothing
        )[0],
        "metric": members[0].metric,
        "concurrent_runs": shared,
        "timing": _timing_label(shared_pair if not is_base else shared),
        "devices": ", ".join(
            sorted({str(r.summary.get("device_name")) for r in done if r.summary.get("device_name")})
        ),
    }
    return row


def _table4_modelled(
    done: Sequence[RunLog], base: Sequence[RunLog], is_base: bool, modelled: Mapping[str, float]
) -> dict[str, Any]:
    """Table 4's modelled solo time columns (with --bench)."""
    row: dict[str, Any] = {}
    mt = {r.seed: modelled.get(r.run_id, math.nan) for r in done}
    mt = {k: v for k, v in mt.items() if not math.isnan(v)}
    mbt = {r.seed: modelled.get(r.run_id, math.nan) for r in base}
    mbt = {k: v for k, v in mbt.items() if not math.isnan(v)}
    mm, ms = mean_std(mt.values())
    mp = paired_speedup(mt, mbt) if base and not is_base else {}
    row.update(
        {
            "model_time_s_mean": mm,
            "model_time_s_std": ms,
            "model_speedup_pct": mp.get("speedup_pct", math.nan),
            "model_speedup_pct_std": mp.get("speedup_pct_std", math.nan),
            "model_throughput": 1.0 if is_base and mt else mp.get("throughput", math.nan),
        }
    )
    return row


def _table4_paper(member: RunLog, arch: str, dataset: str, is_base: bool) -> dict[str, Any]:
    """The paper's Table 4 values beside a row: Fixed beside the baseline arm, DEBA beside an unablated arm."""
    row: dict[str, Any] = {}
    kind = _paper_kind(member, is_base)
    paper = PAPER_TABLE4.get((canonical_arch(arch), dataset, kind)) if kind else None
    row.update(
        {
            "paper_acc": paper["acc"][0] if paper else math.nan,
            "paper_acc_std": paper["acc"][1] if paper else math.nan,
            "paper_delta_acc": (
                paper["delta_acc"] if paper and paper["delta_acc"] is not None else math.nan
            ),
            "paper_time_s": paper["time_s"][0] if paper else math.nan,
            "paper_time_s_std": paper["time_s"][1] if paper else math.nan,
            "paper_speedup_pct": paper["speedup"][0] if paper and paper["speedup"] else math.nan,
            "paper_speedup_pct_std": paper["speedup"][1] if paper and paper["speedup"] else math.nan,
            "paper_throughput": paper["throughput"] if paper else math.nan,
        }
    )
    return row


def table4(
    runset: RunSet,
    baseline: str | None = None,
    bench: BenchTable | None = None,
    bench_mode: str | None = None,
) -> pd.DataFrame:
    """One row per (dataset, arch, epochs, arm) over its complete runs. What the report should say about the
    input (runs without a modelled time, a seed twice in one arm) is in ``df.attrs["notes"]``, never written into
    ``runset``."""
    runs = runset.runs
    base_of = baseline_arms(runs, baseline)
    groups = _by_group(runs)
    modelled, notes = _modelled_times(runs, bench, bench_mode) if bench is not None else ({}, [])
    rows = []
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] != base_of.get(k[:3]), k[3]))
    for dataset, arch, epochs, arm in order:
        members = groups[(dataset, arch, epochs, arm)]
        done = sorted((r for r in members if r.complete), key=lambda r: r.seed)
        notes += [n for n in _duplicate_seed_notes(dataset, arch, arm, done) if n not in notes]
        base_arm = base_of.get((dataset, arch, epochs))
        base = (
            [r for r in groups.get((dataset, arch, epochs, base_arm), []) if r.complete] if base_arm else []
        )
        is_base = arm == base_arm
        row = _table4_row((dataset, arch, epochs, arm), members, done, base_arm, base)
        if bench is not None:
            row.update(_table4_modelled(done, base, is_base, modelled))
        row.update(_table4_paper(members[0], arch, dataset, is_base))
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["notes"] = notes
    return df


def table3(runset: RunSet, t4: pd.DataFrame) -> pd.DataFrame:
    """The Table 3 analogue: each DEBA arm that is the baseline or one ablation of it, vs fixed, per arch."""
    rows = []
    first = {}
    for r in runset.runs:
        first.setdefault((r.dataset, r.arch, r.epochs, r.arm), r)
    for _, row in t4.iterrows():
        r = first[(row["dataset"], row["arch"], row["epochs"], row["arm"])]
        if r.ablation is None or not row["baseline_arm"]:
            continue
        paper = (
            PAPER_TABLE3.get(canonical_arch(r.arch), {}).get(r.ablation) if r.dataset == "cifar10" else None
        )
        rows.append(
            {
                "dataset": r.dataset,
                "epochs": r.epochs,
                "preset": r.preset,
                "arch": r.arch,
                "ablation": r.ablation,
                "setting": r.setting,
                "arm": r.arm,
                "n": row["n"],
                "delta_acc": row["delta_acc"],
                "speedup_pct": row["speedup_pct"],
                "speedup_pct_std": row["speedup_pct_std"],
                "timing": row["timing"],
                "model_speedup_pct": row.get("model_speedup_pct", math.nan),
                "paper_delta_acc": paper[0] if paper else math.nan,
                "paper_speedup_pct": paper[1] if paper else math.nan,
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        order = {k: i for i, k in enumerate(ABLATIONS)}
        df = df.sort_values(
            ["dataset", "epochs", "preset", "arch", "ablation"],
            key=lambda s: s.map(order) if s.name == "ablation" else s,
        ).reset_index(drop=True)
    return df


def table3_summary(t3: pd.DataFrame) -> pd.DataFrame:
    """The paper's two summary rows per ablation: archs degraded by more than one point, mean |delta acc|."""
    rows = []
    if t3.empty:
        return pd.DataFrame(rows)
    for (dataset, epochs, preset, abl), g in t3.groupby(
        ["dataset", "epochs", "preset", "ablation"], sort=False
    ):
        d = g.groupby("arch")["delta_acc"].mean().dropna()
        paper = PAPER_TABLE3_SUMMARY.get(abl) if dataset == "cifar10" else None
        rows.append(
            {
                "dataset": dataset,
                "epochs": epochs,
                "preset": preset,
                "ablation": abl,
                "degraded_gt_1pt": f"{int((d < -1).sum())}/{len(d)}",
                "mean_abs_delta_acc": float(d.abs().mean()) if len(d) else math.nan,
                "paper_degraded_gt_1pt": paper[0] if paper else "",
                "paper_mean_abs_delta_acc": paper[1] if paper else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _calibrate(runs: Sequence[RunLog], window: int, conf_mode: str, notes: list[str]) -> dict | None:
    """deba.calibration on these runs' logs (seeds pooled); None, with a note, where it cannot."""
    try:
        from ..calibration import calibrate
    except ImportError:
        note = "Tables 1 and 2 need deba.calibration, which is not available"
        if note not in notes:
            notes.append(note)
        return None
    try:
        return calibrate(
            [r.records for r in runs],
            window=window,
            conf_mode=conf_mode,
            names=[f"{r.source}:{r.run_id}" for r in runs],
        )
    except DebaError as e:
        notes.append(f"calibration ({conf_mode}) skipped: {e}")
        return None


def tables_1_2(
    runset: RunSet, t4: pd.DataFrame, baseline: str | None = None, window: int = 15
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 (calibrated thresholds) and Table 2 (stability taxonomy) from the fixed arm's runs, seeds pooled,
    through deba.calibration (conf recomputed from grad_var, never read from the log). A group that cannot be
    calibrated (too few epochs, say) is left out with a note; empty frames without deba.calibration. The notes
    are in each frame's ``attrs["notes"]``."""
    base_of = baseline_arms(runset.runs, baseline)
    t1, t2 = [], []
    notes: list[str] = []
    groups = _by_group(runset.runs)
    for (dataset, arch, epochs), arm in sorted(base_of.items()):
        fixed = [r for r in groups.get((dataset, arch, epochs, arm), []) if r.complete]
        if not fixed:
            continue
        ratio = _calibrate(fixed, window, "ratio", notes)
        if ratio is None:
            continue
        bounded = _calibrate(fixed, window, "bounded", notes) or {}
        paper1 = TABLE1_THRESHOLDS.get(canonical_arch(arch))
        t1.append(
            {
                "dataset": dataset,
                "arch": arch,
                "epochs": epochs,
                "n_runs": len(fixed),
                "theta_stab": ratio.get("theta_stab"),
                "theta_conf": ratio.get("theta_conf"),
                "theta_conf_bounded": bounded.get("theta_conf"),
                "paper_theta_stab": paper1[0] if paper1 else math.nan,
                "paper_theta_conf": paper1[1] if paper1 else math.nan,
            }
        )
        paper2 = PAPER_TABLE2.get(canonical_arch(arch), {})
        row = {
            "dataset": dataset,
            "arch": arch,
            "epochs": epochs,
            "n_runs": len(fixed),
            "mu_S": ratio.get("mu_S"),
            "sigma_S": ratio.get("sigma_S"),
            "class": ratio.get("taxonomy"),
            "prediction": ratio.get("prediction"),
            "paper_mu_S": paper2.get("mu_S", math.nan),
            "paper_sigma_S": paper2.get("sigma_S", math.nan),
            "paper_class": paper2.get("class", ""),
            "paper_delta_acc": paper2.get("delta_acc", math.nan),
        }
        sel = t4[(t4.dataset == dataset) & (t4.arch == arch) & (t4.epochs == epochs)]
        for _, a in sel.iterrows():
            r = groups[(dataset, arch, epochs, a["arm"])][0]
            if r.ablation == "baseline":
                row[f"delta_acc[{a['arm']}]"] = a["delta_acc"]
        t2.append(row)
    t1_df, t2_df = pd.DataFrame(t1), pd.DataFrame(t2)
    t1_df.attrs["notes"], t2_df.attrs["notes"] = notes, list(notes)
    return t1_df, t2_df


def runs_table(runset: RunSet, modelled: Mapping[str, float] | None = None) -> pd.DataFrame:
    rows = []
    for r in runset.runs:
        s = r.summary
        bs = [rec.get("batch_size") for rec in r.records]
        rows.append(
            {
                "run_id": r.run_id,
                "source": r.source,
                "dataset": r.dataset,
                "arch": r.arch,
                "arm": r.arm,
                "variant": r.variant,
                "seed": r.seed,
                "epochs": r.epochs,
                "epochs_logged": len(r.records),
                "status": r.status,
                "final_test_acc": _num(s.get("final_test_acc")),
                "best_test_acc": _num(s.get("best_test_acc")),
                "metric": r.metric,
                "quality": r.quality,
                "best_quality": _num(s.get("best_test_acc" if r.higher_is_better else "best_val_loss")),
                "final_val_loss": _num(s.get("final_val_loss")),
                "final_val_bpc": _num(s.get("final_val_bpc")),
                "best_epoch": s.get("best_epoch"),
                "train_time_s": _num(s.get("train_time_s")),
                "eval_time_s": _num(s.get("eval_time_s")),
                "steps": total_steps(r),
                "increases": s.get("increases"),
                "rollbacks": s.get("rollbacks"),
                "holds": s.get("holds"),
                "start_batch_size": bs[0] if bs else None,
                "final_batch_size": s.get("final_batch_size"),
                "max_batch_size": s.get(
                    "max_batch_size", max((b for b in bs if isinstance(b, int)), default=None)
                ),
                "concurrent_runs": r.concurrent_runs,
                "device_name": s.get("device_name"),
                "torch_version": s.get("torch_version"),
                "modelled_time_s": (modelled or {}).get(r.run_id, math.nan),
            }
        )
    return pd.DataFrame(rows)


def trajectories(runset: RunSet) -> pd.DataFrame:
    cols = (
        "epoch",
        "batch_size",
        "decision",
        "next_batch_size",
        "grad_var",
        "grad_norm",
        "loss",
        "conf",
        "train_time_s",
        "test_acc",
    )
    rows = []
    for r in runset.runs:
        for rec in r.records:
            rows.append(
                {
                    "run_id": r.run_id,
                    "dataset": r.dataset,
                    "arch": r.arch,
                    "arm": r.arm,
                    "seed": r.seed,
                    **{c: rec.get(c) for c in cols},
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "dataset", "arch", "arm", "seed", *cols])


def by_batch_size(traj: pd.DataFrame, value: str) -> pd.DataFrame:
    """Median (and count) of a per-epoch value at each batch size, per dataset and arch (figure data)."""
    d = traj.dropna(subset=["batch_size", value])
    d = d[pd.to_numeric(d[value], errors="coerce").notna()]
    if d.empty:
        return pd.DataFrame(columns=["dataset", "arch", "batch_size", f"{value}_median", "epochs"])
    d = d.assign(**{value: d[value].astype(float), "batch_size": d["batch_size"].astype(int)})
    g = d.groupby(["dataset", "arch", "batch_size"])[value]
    return pd.DataFrame({f"{value}_median": g.median(), "epochs": g.size()}).reset_index()



__all__ = [
    "table4",
    "table3",
    "table3_summary",
    "tables_1_2",
    "table_vs_reference",
    "table_goal",
    "GOAL_MAX_RATIO",
    "GOAL_MIN_SEEDS",
    "runs_table",
    "trajectories",
    "by_batch_size",
]
