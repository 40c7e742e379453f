"""`deba profile` and `deba demo`, end to end on generated data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deba.calibration import read_thresholds_file
from deba.cli import main


def test_profile_runs_seeds_calibrates_and_writes_thresholds(tmp_path, capsys):
    out = tmp_path / "prof"
    args = ["profile", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--epochs", "4",
            "--seeds", "1", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "theta_stab" in text and "thresholds written" in text
    report = json.loads((out / "profile.json").read_text())
    # independent check of theta_stab: 75th percentile of dnorm over epochs 2..T of both runs, pooled
    dnorms = []
    for seed in (1, 2):
        recs = [json.loads(line) for line in (out / f"seed{seed}" / "epochs.jsonl").read_text().splitlines()]
        assert {r["batch_size"] for r in recs} == {64}  # profiling runs are fixed-batch
        norms = [r["grad_norm"] for r in recs]
        dnorms += [abs(b - a) / (abs(a) + 1e-8) for a, b in zip(norms, norms[1:])]
    assert report["theta_stab"] == pytest.approx(float(np.percentile(np.array(dnorms, dtype=np.float64), 75)))
    assert len(report["stability_scores"]) == 2
    th = read_thresholds_file(out / "thresholds.json")
    assert th["conf_mode"] == "bounded" and th["theta_stab"] == pytest.approx(report["theta_stab"])
    # finished seeds are reused, not retrained
    mtime = (out / "seed1" / "summary.json").stat().st_mtime
    assert main(args) == 0
    assert (out / "seed1" / "summary.json").stat().st_mtime == mtime
    # the thresholds file drives a DEBA run
    run = tmp_path / "deba"
    assert main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--epochs", "2",
                 "--policy", "deba", "--preset", "paper-bounded", "--thresholds", str(out / "thresholds.json"),
                 "--quiet", "--out", str(run)]) == 0
    # a ratio-conf preset refuses bounded-calibrated thresholds
    capsys.readouterr()
    assert main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--epochs", "1",
                 "--policy", "deba", "--preset", "paper", "--thresholds", str(out / "thresholds.json"),
                 "--quiet"]) == 2
    assert "bounded" in capsys.readouterr().err


def test_demo_prints_side_by_side_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fixed: final acc" in text and "DEBA: final acc" in text
    assert (out / "demo.png").stat().st_size > 1000
    for name in ("fixed", "deba"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "complete" and len(summary["batch_sizes"]) == 3
