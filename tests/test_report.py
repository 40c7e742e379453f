"""deba.report: tables from hand-written run logs against values worked out here with NumPy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deba import report
from deba.cli import main
from deba.errors import DebaError
from deba.training.config import TrainConfig

EPOCHS = 20
ARMS = {
    "fixed": {"policy": "fixed"},
    "paper-bounded": {"policy": "deba", "preset": "paper-bounded"},
    "bounded-universal": {"policy": "deba", "preset": "paper-bounded", "universal_thresholds": True},
    "bounded-cooldown1": {"policy": "deba", "preset": "paper-bounded", "cooldown": 1},  # 1 of 20 ~ paper's 5
    "fixed-cosine": {"policy": "fixed", "lr_schedule": "cosine"},
}
# (arm, seed) -> final acc %, training seconds, batch size per epoch
RUNS = {
    ("fixed", 2): (80.0, 100.0, [64] * EPOCHS),
    ("fixed", 7): (81.0, 110.0, [64] * EPOCHS),
    ("fixed", 42): (79.5, 90.0, [64] * EPOCHS),
    ("paper-bounded", 2): (82.0, 60.0, [64] * 5 + [96] * 5 + [144] * 10),
    ("paper-bounded", 7): (82.5, 55.0, [64] * 4 + [96] * 6 + [144] * 10),
    ("paper-bounded", 42): (81.0, 72.0, [64] * 8 + [96] * 12),
    ("bounded-universal", 2): (78.0, 120.0, [64] * 10 + [51] * 10),
    ("bounded-universal", 7): (79.0, 99.0, [64] * 20),
    ("bounded-cooldown1", 2): (77.0, 50.0, [64] * 2 + [96] * 2 + [144] * 16),
    ("fixed-cosine", 2): (81.5, 104.0, [64] * EPOCHS),
    ("fixed-cosine", 7): (82.5, 100.0, [64] * EPOCHS),
    ("fixed-cosine", 42): (80.0, 96.0, [64] * EPOCHS),
}
INCOMPLETE = ("paper-bounded", 123)


def _records(final_acc: float, train_s: float, sizes: list[int], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for e, b in enumerate(sizes, 1):
        steps = 50_000 // b
        nxt = sizes[e] if e < len(sizes) else b
        recs.append(
            {
                "schema_version": 1,
                "epoch": e,
                "batch_size": b,
                "steps": steps,
                "samples": steps * b,
                "lr": 0.01,
                "train_time_s": train_s / len(sizes),
                "eval_time_s": 0.1,
                "loss": 2.0 / e + 0.01 * rng.random(),
                "grad_var": 1e-3 / b * (1 + 0.1 * rng.random()),
                "grad_norm": 1.0 + 0.2 * rng.random(),
                "dnorm": None,
                "dloss": None,
                "conf": None,
                "decision": "increase" if nxt > b else "rollback" if nxt < b else "hold",
                "in_cooldown": False,
                "non_finite": False,
                "reason": "",
                "next_batch_size": nxt,
                "test_acc": final_acc - (len(sizes) - e) * 0.5 + (2.0 if e == len(sizes) - 3 else 0.0),
                "test_loss": 1.0,
                "events": [],
            }
        )
    return recs


def write_run(
    root: Path,
    arm: str,
    seed: int,
    final_acc: float,
    train_s: float,
    sizes: list[int],
    status: str = "complete",
    concurrent: int = 2,
    arch: str = "resnet18",
) -> Path:
    d = root / "cifar10" / arch / arm / f"seed{seed}"
    d.mkdir(parents=True)
    cfg = TrainConfig.from_dict(
        {
            **ARMS[arm],
            "arch": arch,
            "dataset": "cifar10",
            "epochs": EPOCHS,
            "seed": seed,
            "concurrent_runs": concurrent,
        }
    ).to_dict()
    (d / "config.json").write_text(json.dumps({"schema_version": 1, **cfg}))
    recs = _records(final_acc, train_s, sizes, seed)
    if status != "complete":
        recs = recs[:5]
    (d / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    accs = [r["test_acc"] for r in recs]
    summary = {
        "schema_version": 1,
        "run_name": f"{arm}/{seed}",
        "arch": arch,
        "dataset": "cifar10",
        "policy": ARMS[arm]["policy"],
        "preset": ARMS[arm].get("preset"),
        "seed": seed,
        "epochs": EPOCHS,
        "status": status,
        "final_test_acc": final_acc if status == "complete" else None,
        "best_test_acc": max(accs),
        "best_epoch": int(np.argmax(accs)) + 1,
        "train_time_s": train_s,
        "eval_time_s": 2.0,
        "increases": sum(r["decision"] == "increase" for r in recs),
        "rollbacks": sum(r["decision"] == "rollback" for r in recs),
        "holds": 0,
        "batch_sizes": [r["batch_size"] for r in recs],
        "final_batch_size": recs[-1]["next_batch_size"],
        "max_batch_size": max(r["batch_size"] for r in recs),
        "concurrent_runs": concurrent,
        "torch_version": "2.x",
        "device_name": "test device",
        "graphs": "graph",
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return d


@pytest.fixture
def study_dir(tmp_path) -> Path:
    root = tmp_path / "study"
    for (arm, seed), (acc, t, sizes) in RUNS.items():
        write_run(root, arm, seed, acc, t, sizes)
    write_run(root, *INCOMPLETE, 70.0, 30.0, [64] * EPOCHS, status="running")
    return root


def _row(t4: pd.DataFrame, arm: str) -> pd.Series:
    (i,) = t4.index[t4.arm == arm]
    return t4.loc[i]


def _seeds(arm: str) -> list[int]:
    return sorted(s for a, s in RUNS if a == arm)


def test_table4_against_numpy(study_dir):
    rs = report.load_runs([study_dir])
    t4 = report.table4(rs)
    assert sorted(t4.arm) == sorted(ARMS)
    fixed_acc = np.array([RUNS["fixed", s][0] for s in _seeds("fixed")])
    for arm in ARMS:
        row = _row(t4, arm)
        seeds = _seeds(arm)
        acc = np.array([RUNS[arm, s][0] for s in seeds])
        t = np.array([RUNS[arm, s][1] for s in seeds])
        tf = np.array([RUNS["fixed", s][1] for s in seeds])
        assert row.n == len(seeds) and row.baseline_arm == "fixed"
        assert row.acc_mean == pytest.approx(acc.mean())
        assert row.time_s_mean == pytest.approx(t.mean())
        if len(seeds) > 1:
            assert row.acc_std == pytest.approx(acc.std(ddof=1))
            assert row.time_s_std == pytest.approx(t.std(ddof=1))
        else:
            assert math.isnan(row.acc_std)
        assert row.timing == "shared x2"
        assert row.acc_per_s == pytest.approx(np.mean(acc / t))
        if arm == "fixed":
            assert math.isnan(row.delta_acc) and row.throughput == 1.0 and math.isnan(row.speedup_pct)
            continue
        speedup = 100 * (1 - t / tf)
        # paired per seed, like the speedup (issue 11): mean of acc - acc_fixed over the seeds both have
        d_acc = acc - np.array([RUNS["fixed", s][0] for s in seeds])
        assert row.delta_acc == pytest.approx(d_acc.mean())
        if len(seeds) > 1:
            assert row.delta_acc_std == pytest.approx(d_acc.std(ddof=1))
        assert row.n_pairs == len(seeds)
        assert row.speedup_pct == pytest.approx(speedup.mean())
        if len(seeds) > 1:
            assert row.speedup_pct_std == pytest.approx(speedup.std(ddof=1))
        assert row.throughput == pytest.approx(tf.mean() / t.mean())
    # the incomplete seed is counted, not averaged
    assert _row(t4, "paper-bounded").n_incomplete == 1
    # hand-worked: speedups 40, 50, 20 %
    assert _row(t4, "paper-bounded").speedup_pct == pytest.approx((40 + 50 + 20) / 3)
    # best-epoch accuracy is reported beside (here: half a point above the final, three epochs before the end)
    assert _row(t4, "fixed").best_acc_mean == pytest.approx(fixed_acc.mean() - 1.5 + 2.0)


def test_paper_numbers_beside_ours(study_dir):
    t4 = report.table4(report.load_runs([study_dir]))
    fixed, deba = _row(t4, "fixed"), _row(t4, "paper-bounded")
    assert (fixed.paper_acc, fixed.paper_acc_std, fixed.paper_time_s) == (83.05, 0.51, 778)
    assert (deba.paper_acc, deba.paper_delta_acc, deba.paper_speedup_pct, deba.paper_throughput) == (
        85.48,
        2.43,
        36.6,
        1.5,
    )
    assert math.isnan(_row(t4, "bounded-universal").paper_acc)  # Table 4 has no ablations
    t3 = report.table3(report.load_runs([study_dir]), t4)
    by_abl = {r.ablation: r for r in t3.itertuples()}
    assert set(by_abl) == {"baseline", "universal", "cooldown5"}
    assert (by_abl["universal"].paper_delta_acc, by_abl["universal"].paper_speedup_pct) == (-0.16, -10.8)
    assert by_abl["cooldown5"].setting == "cooldown 1 of 20 epochs"
    assert by_abl["cooldown5"].delta_acc == pytest.approx(77.0 - 80.0)  # seed 2 only, paired with fixed seed 2
    assert by_abl["cooldown5"].speedup_pct == pytest.approx(100 * (1 - 50 / 100))
    summary = report.table3_summary(t3)
    uni = summary[summary.ablation == "universal"].iloc[0]
    d_uni = np.mean([78.0 - 80.0, 79.0 - 81.0])  # seeds 2 and 7, paired
    assert uni.degraded_gt_1pt == ("1/1" if d_uni < -1 else "0/1")
    assert uni.mean_abs_delta_acc == pytest.approx(abs(d_uni)) and uni.paper_degraded_gt_1pt == "3/6"


def _expected_calibration(logs: list[list[dict]], window: int = 15) -> dict:
    """Spec section 2, worked out directly with NumPy float64."""
    dnorm, conf_ratio, conf_bounded, scores = [], [], [], []
    for recs in logs:
        gv = np.array([r["grad_var"] for r in recs], dtype=np.float64)
        norm = np.array([r["grad_norm"] for r in recs], dtype=np.float64)
        loss = np.array([r["loss"] for r in recs], dtype=np.float64)
        dn = np.abs(np.diff(norm)) / (np.abs(norm[:-1]) + 1e-8)
        dl = np.abs(np.diff(loss)) / (np.abs(loss[:-1]) + 1e-8)
        med = np.array([np.median(gv[max(0, t - window + 1) : t + 1]) for t in range(1, len(gv))])
        dnorm += list(dn)
        conf_ratio += list(gv[1:] / (med + 1e-8))
        conf_bounded += list(gv[1:] / (gv[1:] + med + 1e-8))
        scores.append(1.0 / (1.0 + gv.std() / gv.mean() + dn.mean() + dl.mean()))
    mu, sigma = float(np.mean(scores)), float(np.std(scores, ddof=1))
    if sigma > 0.15:
        cls = "dynamically stable"
    elif mu > 0.54:
        cls = "overly stable"
    elif 0.45 <= mu <= 0.54:
        cls = "moderately stable"
    elif mu < 0.26:
        cls = "naturally unstable"
    else:
        cls = "intermediate"
    return {
        "theta_stab": np.percentile(dnorm, 75),
        "theta_conf": np.median(conf_ratio),
        "theta_conf_bounded": np.median(conf_bounded),
        "mu_S": mu,
        "sigma_S": sigma,
        "class": cls,
    }


def test_tables_1_and_2_from_the_fixed_runs(study_dir):
    pytest.importorskip("deba.calibration")
    rs = report.load_runs([study_dir])
    t4 = report.table4(rs)
    t1, t2 = report.tables_1_2(rs, t4)
    logs = [
        report.load_runs([study_dir / "cifar10" / "resnet18" / "fixed"]).runs[i].records for i in range(3)
    ]
    exp = _expected_calibration(logs)
    (r1,) = t1.itertuples()
    assert (r1.arch, r1.n_runs, r1.paper_theta_stab, r1.paper_theta_conf) == ("resnet18", 3, 0.55, 0.6)
    assert r1.theta_stab == pytest.approx(exp["theta_stab"], rel=1e-9)
    assert r1.theta_conf == pytest.approx(exp["theta_conf"], rel=1e-9)
    assert r1.theta_conf_bounded == pytest.approx(exp["theta_conf_bounded"], rel=1e-9)
    r2 = t2.iloc[0]
    assert r2["mu_S"] == pytest.approx(exp["mu_S"], rel=1e-9)
    assert r2["sigma_S"] == pytest.approx(exp["sigma_S"], rel=1e-9)
    assert r2["class"] == exp["class"]
    assert (r2["paper_mu_S"], r2["paper_class"]) == (0.487, "moderately stable")
    # the DEBA arm without ablation carries its delta acc beside the taxonomy; ablations do not
    assert r2["delta_acc[paper-bounded]"] == pytest.approx(_row(t4, "paper-bounded").delta_acc)
    assert "delta_acc[bounded-universal]" not in t2.columns


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"policy": "fixed"}, ("fixed", None, None)),
        ({"policy": "fixed", "lr_schedule": "cosine"}, ("fixed-cosine", None, None)),
        ({"policy": "deba", "preset": "paper", "epochs": 100}, ("paper", "paper", "baseline")),
        (
            {"policy": "deba", "preset": "paper", "epochs": 100, "cooldown": 5},
            ("paper+cooldown5", "paper", "cooldown5"),
        ),
        (
            {"policy": "deba", "preset": "paper", "epochs": 100, "cooldown": 2},
            ("paper+cooldown2", "paper", "cooldown2"),
        ),
        # quick.yaml's scaling: 30 epochs, cooldown 3 / 2 / 1 stand for the paper's 10 / 5 / 2
        (
            {"policy": "deba", "preset": "paper-bounded", "epochs": 30, "cooldown": 3},
            ("paper-bounded+cooldown3", "paper-bounded", "baseline"),
        ),
        (
            {"policy": "deba", "preset": "paper-bounded", "epochs": 30, "cooldown": 2},
            ("paper-bounded+cooldown2", "paper-bounded", "cooldown5"),
        ),
        (
            {"policy": "deba", "preset": "paper-bounded", "epochs": 30, "cooldown": 1},
            ("paper-bounded+cooldown1", "paper-bounded", "cooldown2"),
        ),
        (
            {"policy": "deba", "preset": "paper", "epochs": 100, "full_history": True},
            ("paper+full-history", "paper", "full-history"),
        ),
        (
            {
                "policy": "deba",
                "preset": "paper",
                "epochs": 100,
                "universal_thresholds": True,
                "full_history": True,
            },
            ("paper+universal+full-history", "paper", None),
        ),  # two ablations at once: no Table 3 column
        (
            {"policy": "deba", "preset": "paper", "epochs": 100, "theta_stab": 0.3, "theta_conf": 0.5},
            ("paper+theta", "paper", None),
        ),
    ],
)
def test_variant_and_table3_column(config, expected):
    label, preset, ablation, _ = report.variant_of(TrainConfig.from_dict(config).to_dict())
    assert (label, preset, ablation) == expected


def test_archives_equal_folder(study_dir, tmp_path):
    """One archive, or the runs split over two archives, give the same tables as the folder."""
    folder = report.build_report([study_dir], tmp_path / "r_folder", figures=False)
    whole = tmp_path / "all.tar.gz"
    part_a, part_b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    run_dirs = sorted(p.parent for p in study_dir.rglob("summary.json"))
    with (
        tarfile.open(whole, "w:gz") as t,
        tarfile.open(part_a, "w:gz") as a,
        tarfile.open(part_b, "w:gz") as b,
    ):
        for i, d in enumerate(run_dirs):
            for f in ("config.json", "epochs.jsonl", "summary.json"):
                arc = f"{d.relative_to(study_dir).as_posix()}/{f}"
                t.add(d / f, arcname=arc)
                (a if i % 2 else b).add(d / f, arcname=arc)
    one = report.build_report([whole], tmp_path / "r_one", figures=False)
    two = report.build_report([part_a, part_b, part_a], tmp_path / "r_two", figures=False)  # a repeat merges
    for name in ("table4_performance.csv", "table3_ablations.csv", "trajectories.csv"):
        ref = (tmp_path / "r_folder" / name).read_text()
        assert (tmp_path / "r_one" / name).read_text() == ref
        assert (tmp_path / "r_two" / name).read_text() == ref
    cols = [c for c in folder["runs"].columns if c != "source"]
    pd.testing.assert_frame_equal(folder["runs"][cols], two["runs"][cols])
    assert len(one["runs"]) == len(RUNS) + 1


def test_trajectories_and_runs_table(study_dir):
    rs = report.load_runs([study_dir])
    traj = report.trajectories(rs)
    for (arm, seed), (_, _, sizes) in RUNS.items():
        got = traj[traj.run_id == f"cifar10/resnet18/{arm}/seed{seed}"].sort_values("epoch")
        assert got["batch_size"].tolist() == sizes
    runs = report.runs_table(rs).set_index("run_id")
    r = runs.loc["cifar10/resnet18/paper-bounded/seed2"]
    assert (r.start_batch_size, r.final_batch_size, r.max_batch_size, r.status) == (64, 144, 144, "complete")
    assert runs.loc["cifar10/resnet18/paper-bounded/seed123"].status == "running"


def test_modelled_solo_time_from_bench(study_dir, tmp_path):
    bench = tmp_path / "bench.json"
    records = [
        {"arch": "resnet18", "batch_size": 64, "mode": "graph", "epoch_s": 10.0},
        {"arch": "resnet18", "batch_size": 128, "mode": "graph", "epoch_s": 6.0},
        {"arch": "resnet18", "batch_size": 256, "mode": "graph", "epoch_s": 4.0},
        {"arch": "resnet18", "batch_size": 64, "mode": "eager", "epoch_s": 30.0},
    ]
    bench.write_text(json.dumps({"schema_version": 1, "records": records}))
    res = report.build_report(
        [study_dir], tmp_path / "r", bench=bench, figures=False
    )  # summary says graphs=graph
    step64, step128, step256 = 10.0 / (50_000 // 64), 6.0 / (50_000 // 128), 4.0 / (50_000 // 256)

    def step(b):  # log-log interpolation, worked out independently
        if b == 64:
            return step64
        lo, hi, tlo, thi = (64, 128, step64, step128) if b < 128 else (128, 256, step128, step256)
        w = (math.log(b) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return math.exp((1 - w) * math.log(tlo) + w * math.log(thi))

    def modelled(sizes):
        return sum(step(b) * (50_000 // b) for b in sizes)

    t4 = res["table4"]
    mf = np.array([modelled(RUNS["fixed", s][2]) for s in _seeds("fixed")])
    mb = np.array([modelled(RUNS["paper-bounded", s][2]) for s in _seeds("paper-bounded")])
    row = _row(t4, "paper-bounded")
    assert row.model_time_s_mean == pytest.approx(mb.mean())
    assert row.model_speedup_pct == pytest.approx(np.mean(100 * (1 - mb / mf)))
    assert row.model_speedup_pct_std == pytest.approx(np.std(100 * (1 - mb / mf), ddof=1))
    # batch 51 is below the bench's smallest batch: no extrapolation, the run has no modelled time
    # its mean is over the one run that has a modelled time, and a note says why the other has none
    assert _row(t4, "bounded-universal").model_time_s_mean == pytest.approx(20 * 10.0)
    assert any("batch 51 is outside" in n for n in res["notes"])
    uni = res["runs"].set_index("run_id")
    assert math.isnan(uni.loc["cifar10/resnet18/bounded-universal/seed2"].modelled_time_s)
    assert uni.loc["cifar10/resnet18/bounded-universal/seed7"].modelled_time_s == pytest.approx(20 * 10.0)


def test_full_report_files(study_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(study_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "ddof=1" in md and "shared x2" in md and "83.05 ± 0.51" in md
    assert "| cifar10 | resnet18 | paper-bounded | 3 (+1 not complete) | 81.83 ± 0.76 | 85.48 ± 0.66 |" in md
    # every arm against fixed-cosine: paper-bounded +0.5 ± 0.5 points (hand-worked), CSV beside
    assert (
        "## Every arm vs fixed-cosine" in md
        and "| cifar10 | resnet18 | paper-bounded | 3 | 81.83 | 81.33 | +0.50 ± 0.50 |" in md
    )
    assert len(pd.read_csv(out / "table4_vs_reference.csv")) == len(ARMS)
    for name in (
        "fig1_epoch_time_vs_batch.png",
        "fig2_grad_var_cifar10.png",
        "trajectory_cifar10_resnet18.png",
    ):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    gv = pd.read_csv(out / "grad_var_by_batch.csv")
    assert sorted(gv.batch_size) == [51, 64, 96, 144]
    et = pd.read_csv(out / "epoch_time_by_batch.csv").set_index("batch_size")
    # median epoch time at B=64 over every complete and incomplete run's epochs at 64, worked out here
    at64 = []
    for _, t, sizes in RUNS.values():
        at64 += [t / EPOCHS] * sizes.count(64)
    at64 += [30.0 / EPOCHS] * 5
    assert et.loc[64, "train_time_s_median"] == pytest.approx(np.median(at64))
    calib = True
    try:
        import deba.calibration  # noqa: F401
    except ImportError:
        calib = False
    if calib:  # Tables 1 and 2: one row for the one fixed arm, paper values beside
        assert "| cifar10 | resnet18 | 20 | 3 |" in md and "moderately stable" in md
    else:
        assert "needs deba.calibration" in md


def test_default_out_and_bad_inputs(study_dir, tmp_path, capsys):
    assert report.default_out([study_dir]) == study_dir / "report"
    assert report.default_out([tmp_path / "x.tar.gz"]) == tmp_path / "x-report"
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such folder or archive" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DebaError, match="no runs found"):
        report.load_runs([empty])
    bad = tmp_path / "bad"
    d = write_run(bad, "fixed", 2, 80.0, 100.0, [64] * EPOCHS)
    (d / "epochs.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(DebaError, match=r"epochs.jsonl:2: not valid JSON"):
        report.load_runs([bad])
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(DebaError, match="not a readable"):
        report.load_runs([junk])


def test_mean_std_and_paired_speedup_small_cases():
    assert report.mean_std([3.0]) == (3.0, pytest.approx(math.nan, nan_ok=True))
    m, s = report.mean_std([1.0, 2.0, 4.0])
    assert (m, s) == (pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)))
    p = report.paired_speedup({1: 50.0, 2: 80.0, 3: 10.0}, {1: 100.0, 2: 100.0})  # seed 3 has no partner
    assert p["n_pairs"] == 2 and p["speedup_pct"] == pytest.approx(35.0)
    assert p["throughput"] == pytest.approx(100.0 / 65.0)


def _expected_time_to(acc_final: float, train_s: float, target: float) -> float | None:
    """Worked out from the fixture's own formula: test acc at epoch e is final - (E - e) / 2, plus 2 at E - 3;
    each epoch takes train_s / E."""
    for e in range(1, EPOCHS + 1):
        acc = acc_final - (EPOCHS - e) * 0.5 + (2.0 if e == EPOCHS - 3 else 0.0)
        if acc >= target:
            return train_s * e / EPOCHS
    return None


def test_every_arm_vs_fixed_cosine_against_numpy(study_dir):
    rs = report.load_runs([study_dir])
    t = report.table_vs_reference(rs)
    assert sorted(t.arm) == sorted(ARMS) and set(t.reference_arm) == {"fixed-cosine"}
    assert t.arm.iloc[0] == "fixed-cosine"  # the reference first, as fixed leads Table 4
    ref = {s: RUNS["fixed-cosine", s] for s in _seeds("fixed-cosine")}
    target = np.mean([v[0] for v in ref.values()])
    for arm in ARMS:
        row = _row(t, arm)
        seeds = [s for s in _seeds(arm) if s in ref]
        d = np.array([RUNS[arm, s][0] - ref[s][0] for s in seeds])
        ratio = np.array([RUNS[arm, s][1] / ref[s][1] for s in seeds])
        assert row.n_pairs == len(seeds) and row.n == len(_seeds(arm))
        assert row.delta_acc == pytest.approx(d.mean()) and row.time_ratio == pytest.approx(ratio.mean())
        if len(seeds) > 1:
            assert row.delta_acc_std == pytest.approx(d.std(ddof=1))
            assert row.time_ratio_std == pytest.approx(ratio.std(ddof=1))
        # optimizer steps: the fixture's epochs take 50,000 // B steps each
        steps = {a_s: sum(50_000 // b for b in RUNS[a_s][2]) for a_s in RUNS}
        sr = np.array([steps[arm, s] / steps["fixed-cosine", s] for s in seeds])
        assert row.steps_ratio == pytest.approx(sr.mean())
        if len(seeds) > 1:
            assert row.steps_ratio_std == pytest.approx(sr.std(ddof=1))
        aps = np.mean([RUNS[arm, s][0] / RUNS[arm, s][1] for s in _seeds(arm)])
        ref_aps = np.mean([v[0] / v[1] for v in ref.values()])
        assert row.acc_per_s == pytest.approx(aps) and row.acc_per_s_ratio == pytest.approx(aps / ref_aps)
        reach = [_expected_time_to(RUNS[arm, s][0], RUNS[arm, s][1], target) for s in _seeds(arm)]
        reached = [x for x in reach if x is not None]
        assert row.reached_reference_acc == len(reached)
        if reached:
            assert row.time_to_reference_acc_s == pytest.approx(np.mean(reached))
        else:
            assert math.isnan(row.time_to_reference_acc_s)
    # hand-worked: paper-bounded is +0.5, 0, +1 points over fixed-cosine at 60/104, 55/100, 72/96 of its time
    pb = _row(t, "paper-bounded")
    assert pb.delta_acc == pytest.approx(0.5)
    assert pb.time_ratio == pytest.approx((60 / 104 + 55 / 100 + 72 / 96) / 3)
    # seed 2 by hand: 5 epochs of 781 steps (B=64), 5 of 520 (96), 10 of 347 (144) vs 20 x 781
    assert pb.steps_ratio == pytest.approx(np.mean([(5 * 781 + 5 * 520 + 10 * 347) / (20 * 781),
                                                    (4 * 781 + 6 * 520 + 10 * 347) / (20 * 781),
                                                    (8 * 781 + 12 * 520) / (20 * 781)]))
    cos = _row(t, "fixed-cosine")
    assert (cos.delta_acc, cos.time_ratio) == (0.0, 1.0)
    # the incomplete paper-bounded seed 123 has no partner and no accuracy: left out
    assert pb.n == 3


def test_reference_arm_by_name_or_config(study_dir, tmp_path):
    rs = report.load_runs([study_dir])
    t = report.table_vs_reference(rs, reference="fixed")
    assert set(t.reference_arm) == {"fixed"} and _row(t, "fixed-cosine").delta_acc == pytest.approx(
        np.mean([81.5 - 80.0, 82.5 - 81.0, 80.0 - 79.5])
    )
    # an arm under another name whose config is fixed B=64 + cosine is found by its config
    renamed = tmp_path / "renamed"
    for (arm, seed), (acc, tt, sizes) in RUNS.items():
        if arm in ("fixed", "fixed-cosine", "paper-bounded"):
            write_run(renamed, arm, seed, acc, tt, sizes)
    arms_dir = renamed / "cifar10" / "resnet18"
    (arms_dir / "fixed-cosine").rename(arms_dir / "cos")
    t = report.table_vs_reference(report.load_runs([renamed]))
    assert set(t.reference_arm) == {"cos"} and set(t.arm) == {"cos", "fixed", "paper-bounded"}
    # no reference at all: an empty table, said so in the report
    only = tmp_path / "only"
    for (arm, seed), (acc, tt, sizes) in RUNS.items():
        if arm == "fixed":
            write_run(only, arm, seed, acc, tt, sizes)
    assert report.table_vs_reference(report.load_runs([only])).empty
    res = report.build_report([only], tmp_path / "r", figures=False)
    assert "No fixed-cosine arm" in (tmp_path / "r" / "report.md").read_text()
    assert res["table4_vs_reference"].empty
    res = report.build_report([only], tmp_path / "r2", figures=False, reference="nope")
    assert any("no arm named 'nope'" in n for n in res["notes"])


def test_modelled_time_uses_every_batch_size_an_epoch_trained_at(tmp_path):
    """After an out-of-memory cap or a mid-epoch decision an epoch trains at several sizes (batch_steps)."""
    bench = tmp_path / "bench.json"
    recs = [{"arch": "tiny", "batch_size": b, "mode": "eager", "epoch_s": e, "steps": s}
            for b, e, s in ((64, 8.0, 100), (128, 6.0, 50))]
    bench.write_text(json.dumps({"schema_version": 1, "records": recs}))
    table = report.BenchTable.load(bench)
    run = report.RunLog(run_id="r", source="x", config={"arch": "tiny"}, summary={"arch": "tiny", "graphs": "eager"},
                        records=[{"epoch": 1, "batch_size": 128, "steps": 30, "batch_steps": [[128, 10], [64, 40]]}])
    total, note = table.modelled_time(run, None)
    assert note == "" and total == pytest.approx(10 * (6.0 / 50) + 40 * (8.0 / 100))


def _goal_row(t: pd.DataFrame, arm: str) -> pd.Series:
    (i,) = t.index[t.arm == arm]
    return t.loc[i]


def test_goal_check_seed_by_seed_against_fixed(study_dir, tmp_path):
    # the fixture's runs shared the device (x2): time is not comparable, steps and accuracy are
    t = report.table_goal(report.load_runs([study_dir]))
    assert sorted(t.arm) == sorted(a for a in ARMS if a != "fixed") and set(t.baseline_arm) == {"fixed"}
    pb = _goal_row(t, "paper-bounded")
    # by hand: 82.0 >= 80.0, 82.5 >= 81.0, 81.0 >= 79.5; steps 9975/15620, 9714/15620, 12488/15620 (all > 0.6)
    assert (pb.n_pairs, pb.seeds_acc_at_least_baseline, pb.pairs_time_comparable) == (3, 3, 0)
    assert pb.goal_time is None and pb.seeds_goal_steps == 0 and not pb.goal_steps
    assert pb.per_seed.startswith("2: +2.00, time -, steps 0.64x; 7: +1.50")
    uni = _goal_row(t, "bounded-universal")  # 78 < 80 and 79 < 81
    assert (uni.n_pairs, uni.seeds_acc_at_least_baseline, uni.seeds_goal_steps) == (2, 0, 0)

    # the same runs, solo: paper-bounded took 60/100 (passes: at most 0.6x), 55/110 (passes), 72/90 (fails)
    solo = tmp_path / "solo"
    for (arm, seed), (acc, secs, sizes) in RUNS.items():
        if arm in ("fixed", "paper-bounded", "bounded-cooldown1"):
            write_run(solo, arm, seed, acc, secs, sizes, concurrent=1)
    res = report.build_report([solo], tmp_path / "r", figures=False)
    t = res["goal"]
    pb = _goal_row(t, "paper-bounded")
    assert (pb.pairs_time_comparable, pb.seeds_goal_time, pb.timing) == (3, 2, "solo") and pb.goal_time
    cd1 = _goal_row(t, "bounded-cooldown1")  # one seed: 77.0 < 80.0 at 0.5x the time
    assert (cd1.n_pairs, cd1.seeds_goal_time) == (1, 0) and cd1.goal_time is not None and not cd1.goal_time
    saved = pd.read_csv(tmp_path / "r" / "goal_check.csv")
    assert saved.set_index("arm").loc["paper-bounded", "seeds_goal_time"] == 2
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Goal check: at least 40% less training time than fixed B=64" in md
    assert "- paper-bounded, by training time: meets the goal on 1 of 1 architecture(s): resnet18" in md
    assert "- bounded-cooldown1, by training time: meets the goal on 0 of 1 architecture(s) (the" in md


def test_goal_check_uses_modelled_solo_time_where_runs_shared(study_dir, tmp_path):
    bench = tmp_path / "bench.json"
    records = [{"arch": "resnet18", "batch_size": b, "mode": "graph", "epoch_s": s}
               for b, s in ((64, 10.0), (128, 6.0), (256, 4.0))]
    bench.write_text(json.dumps({"schema_version": 1, "records": records}))
    res = report.build_report([study_dir], tmp_path / "r", bench=bench, figures=False)
    modelled = res["runs"].set_index("run_id").modelled_time_s  # checked against hand-worked values above
    pb = _goal_row(res["goal"], "paper-bounded")
    ratios = [modelled[f"cifar10/resnet18/paper-bounded/seed{s}"] / modelled[f"cifar10/resnet18/fixed/seed{s}"]
              for s in (2, 7, 42)]
    assert pb.timing == "modelled solo" and pb.pairs_time_comparable == 3
    assert pb.seeds_goal_time == sum(r <= 0.6 for r in ratios)  # accuracy is above fixed on all three
    assert all(0.5 < r < 1.0 for r in ratios)


def _golden_inputs(study_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The fixture plus what makes every kind of note: a seed twice in one arm, a run without its epochs.jsonl,
    an architecture too short to calibrate, and a bench with a batch size outside its range."""
    dup = study_dir / "cifar10" / "resnet18" / "fixed" / "seed-2"
    dup.mkdir()
    for name in ("config.json", "epochs.jsonl", "summary.json"):
        (dup / name).write_bytes((study_dir / "cifar10" / "resnet18" / "fixed" / "seed2" / name).read_bytes())
    broken = write_run(study_dir, "fixed", 5, 80.0, 100.0, [64] * EPOCHS, arch="resnet50")
    (broken / "epochs.jsonl").unlink()
    write_run(study_dir, "fixed", 2, 80.0, 100.0, [64] * 2, arch="densenet121")
    bench = tmp_path / "bench.json"
    records = [{"arch": "resnet18", "batch_size": b, "mode": "graph", "epoch_s": s}
               for b, s in ((64, 10.0), (128, 6.0), (256, 4.0))]
    bench.write_text(json.dumps({"schema_version": 1, "records": records}))
    return study_dir, bench


GOLDEN = Path(__file__).parent / "data" / "report_golden.md"


def _golden_report(study_dir: Path, tmp_path: Path) -> str:
    inputs, bench = _golden_inputs(study_dir, tmp_path)
    report.build_report([inputs], tmp_path / "golden", bench=bench, reference="nope", baseline="fixed")
    return (tmp_path / "golden" / "report.md").read_text(encoding="utf-8").replace(str(tmp_path), "TMP")


def test_report_md_is_unchanged_by_the_package_split(study_dir, tmp_path):
    """report.md of a fixture with every section and every kind of note, byte for byte as the single-module
    report.py wrote it (tests/data/report_golden.md, tmp path replaced by TMP), plus the sections added on
    purpose since (the paired table against `fixed`, the paper's constant-lr baseline)."""
    assert _golden_report(study_dir, tmp_path) == GOLDEN.read_text(encoding="utf-8")


def test_report_does_not_import_study(study_dir, tmp_path):
    """deba.report reads folders and --pack archives through deba.runfolder, never through deba.study."""
    archive = tmp_path / "pack.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(study_dir, arcname=".")
    code = (
        "import sys, deba.report as r; "
        f"rs = r.load_runs([{str(archive)!r}, {str(study_dir)!r}]); assert len(rs.runs) == {len(RUNS) + 1}; "
        "assert 'deba.study' not in sys.modules, 'deba.report imports deba.study'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tables_return_their_notes_and_leave_the_runset_alone(study_dir, tmp_path):
    inputs, bench = _golden_inputs(study_dir, tmp_path)
    rs = report.load_runs([inputs])
    before = list(rs.notes)
    t4 = report.table4(rs, bench=report.BenchTable.load(bench))
    t1, _ = report.tables_1_2(rs, t4)
    assert rs.notes == before and any(n.startswith("skipped ") for n in before)
    assert any("seed 2 appears twice" in n for n in t4.attrs["notes"])
    assert any("batch 51 is outside" in n for n in t4.attrs["notes"])
    assert any(n.startswith("calibration (ratio) skipped") for n in t1.attrs["notes"])
    res = report.build_report([inputs], tmp_path / "r", bench=bench, figures=False)
    assert res["notes"] == before + t4.attrs["notes"] + t1.attrs["notes"] and rs.notes == before
