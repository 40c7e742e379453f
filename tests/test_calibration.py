"""deba.calibration and `deba calibrate`: thresholds, stability score and taxonomy against hand-worked values
and independent NumPy float64 computations (spec section 2)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from deba import calibration as cal
from deba.cli import main
from deba.errors import DebaError
from deba.policy import TABLE1_THRESHOLDS

EPS = 1e-8


def make_log(grad_var, grad_norm, loss, decisions=None, start_epoch=1, **extra_fields):
    recs = []
    for i, (v, n, lo) in enumerate(zip(grad_var, grad_norm, loss)):
        r = {"epoch": start_epoch + i, "grad_var": v, "grad_norm": n, "loss": lo}
        if decisions is not None:
            r["decision"] = decisions[i]
        for k, vals in extra_fields.items():
            r[k] = vals[i]
        recs.append(r)
    return recs


def norms_with_changes(changes, first=2.0):
    """Norm sequence whose relative changes |n_t - n_{t-1}| / |n_{t-1}| are exactly `changes` (alternating sign)."""
    norms = [first]
    for i, d in enumerate(changes):
        norms.append(norms[-1] * (1 + d if i % 2 == 0 else 1 - d))
    return norms


def write_jsonl(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def np_rel_changes(x):
    x = np.asarray(x, dtype=np.float64)
    return np.abs(np.diff(x)) / (np.abs(x[:-1]) + EPS)


def np_stability(gv, norms, losses):
    """Eq. 9 as spec section 2 reads it, in NumPy float64, independent of SignalTracker."""
    gv = np.asarray(gv, dtype=np.float64)
    cv = gv.std(ddof=0) / gv.mean()
    return 1.0 / (1.0 + cv + np_rel_changes(norms).mean() + np_rel_changes(losses).mean())


# --- thresholds -------------------------------------------------------------------------------------
DNORMS = [0.1, 0.5, 0.2, 0.05, 0.3, 0.8, 0.15]


def test_theta_stab_is_75th_percentile_of_known_dnorms():
    norms = norms_with_changes(DNORMS)
    n = len(norms)
    log = make_log([1e-3] * n, norms, [2.0 - 0.1 * i for i in range(n)])
    theta_stab, _ = cal.calibrate_thresholds([log])
    # sorted: .05 .1 .15 .2 .3 .5 .8; position 0.75 * 6 = 4.5 -> 0.3 + 0.5 * (0.5 - 0.3)
    assert theta_stab == pytest.approx(0.4, rel=1e-6)
    assert theta_stab == pytest.approx(float(np.percentile(np.array(DNORMS), 75)), rel=1e-6)


def test_theta_stab_skips_non_finite_epoch_and_compares_with_last_finite():
    norms = norms_with_changes(DNORMS)
    n = len(norms)
    gv, losses = [1e-3] * n, [2.0 - 0.1 * i for i in range(n)]
    # a NaN-loss epoch inserted after epoch 3, carrying a wild norm: it must leave no trace
    gv.insert(3, 5.0)
    norms.insert(3, 100.0)
    losses.insert(3, float("nan"))
    log = make_log(gv, norms, losses)
    rows = cal.recompute_signals(log)
    assert rows[3]["non_finite"] and rows[3]["dnorm"] is None
    assert rows[4]["dnorm"] == pytest.approx(DNORMS[2], rel=1e-6)
    theta_stab, _ = cal.calibrate_thresholds(log)
    assert theta_stab == pytest.approx(float(np.percentile(np.array(DNORMS), 75)), rel=1e-6)


def test_thresholds_pool_epochs_of_several_logs():
    a, b = [0.1, 0.4, 0.2], [0.9, 0.05, 0.6, 0.3]
    logs = []
    for changes in (a, b):
        norms = norms_with_changes(changes)
        logs.append(make_log([1e-3] * len(norms), norms, [1.0] * len(norms)))
    theta_stab, _ = cal.calibrate_thresholds(logs)
    assert theta_stab == pytest.approx(float(np.percentile(np.array(a + b), 75)), rel=1e-6)
    # pooling is not the mean of per-log percentiles
    per_log = np.mean([np.percentile(a, 75), np.percentile(b, 75)])
    assert abs(theta_stab - per_log) > 1e-3


# window 3, grad_var 1, 2, 4, 8, 3 -> windows (current value included) from epoch 2:
# [1,2] med 1.5; [1,2,4] med 2; [2,4,8] med 4; [4,8,3] med 4
GV = [1.0, 2.0, 4.0, 8.0, 3.0]
RATIO = [2 / 1.5, 4 / 2, 8 / 4, 3 / 4]
BOUNDED = [2 / 3.5, 4 / 6, 8 / 12, 3 / 7]


@pytest.mark.parametrize("mode, expected", [("ratio", RATIO), ("bounded", BOUNDED)])
def test_theta_conf_median_with_window_including_current_value(mode, expected):
    log = make_log(GV, [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 1.9, 1.8, 1.7, 1.6],
                   conf=[None, 99.0, 99.0, 99.0, 99.0])  # a logged conf is never trusted
    _, theta_conf = cal.calibrate_thresholds([log], window=3, conf_mode=mode)
    # hand-worked: the median of four is the mean of the middle two
    assert theta_conf == pytest.approx(float(np.median(expected)), rel=1e-6)
    confs = [r["conf"] for r in cal.recompute_signals(log, window=3, conf_mode=mode)]
    assert confs[0] is None  # first epoch excluded
    assert confs[1:] == pytest.approx(expected, rel=1e-6)


def test_ratio_and_bounded_differ_and_bounded_is_below_one():
    log = make_log(GV, [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 1.9, 1.8, 1.7, 1.6])
    r = cal.calibrate([log], window=3, conf_mode="ratio")
    b = cal.calibrate([log], window=3, conf_mode="bounded")
    assert r["theta_conf"] == pytest.approx(np.median(RATIO)) and b["theta_conf"] == pytest.approx(np.median(BOUNDED))
    assert 0 < b["theta_conf"] < 1 < r["theta_conf"]
    assert r["theta_stab"] == b["theta_stab"] and r["stability_scores"] == b["stability_scores"]
    assert (r["conf_mode"], b["conf_mode"], r["window"]) == ("ratio", "bounded", 3)


def test_window_changes_conf():
    # with a window of 1 the median is the value itself: ratio conf ~ 1 everywhere
    log = make_log(GV, [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 1.9, 1.8, 1.7, 1.6])
    _, theta_conf = cal.calibrate_thresholds(log, window=1)
    assert theta_conf == pytest.approx(1.0, rel=1e-6)
    _, theta_conf15 = cal.calibrate_thresholds(log, window=15)
    # full windows: [1,2] 1.5, [1,2,4] 2, [1,2,4,8] 3, [1,2,3,4,8] 3 -> confs 4/3, 2, 8/3, 1
    assert theta_conf15 == pytest.approx(float(np.median([2 / 1.5, 2.0, 8 / 3, 1.0])), rel=1e-6)


# --- stability score ---------------------------------------------------------------------------------
def _random_log(seed, n=30):
    rng = np.random.default_rng(seed)
    gv = (1e-4 * (1 + rng.random(n))).tolist()
    norms = (1.0 + rng.random(n)).tolist()
    losses = (2.0 * np.exp(-0.05 * np.arange(n)) + 0.05 * rng.random(n)).tolist()
    return gv, norms, losses


def test_stability_score_matches_numpy_float64():
    gv, norms, losses = _random_log(0)
    s = cal.stability_score(make_log(gv, norms, losses))
    assert s == pytest.approx(np_stability(gv, norms, losses), rel=1e-12)


def test_stability_score_hand_worked():
    # grad_var 1, 2, 3 -> mean 2, population std sqrt(2/3) -> CV sqrt(2/3) / 2
    # norms 1, 2, 1 -> dnorm 1, 0.5 -> mean 0.75; losses 4, 2, 1 -> dloss 0.5, 0.5 -> mean 0.5
    log = make_log([1.0, 2.0, 3.0], [1.0, 2.0, 1.0], [4.0, 2.0, 1.0])
    expected = 1.0 / (1.0 + math.sqrt(2 / 3) / 2 + 0.75 + 0.5)
    assert cal.stability_score(log) == pytest.approx(expected, rel=1e-7)


def test_stability_score_skips_non_finite_epochs():
    gv, norms, losses = _random_log(1, n=12)
    bad = make_log(gv[:5] + [float("inf")] + gv[5:], norms[:5] + [3.0] + norms[5:], losses[:5] + [1.0] + losses[5:])
    assert cal.stability_score(bad) == pytest.approx(np_stability(gv, norms, losses), rel=1e-12)
    nulls = make_log(gv[:5] + [1.0] + gv[5:], norms[:5] + [None] + norms[5:], losses[:5] + [1.0] + losses[5:])
    assert cal.stability_score(nulls) == pytest.approx(np_stability(gv, norms, losses), rel=1e-12)


def test_mu_and_sigma_across_logs_use_sample_std():
    raw = [_random_log(s) for s in (2, 42, 199)]
    rep = cal.calibrate([make_log(*r) for r in raw])
    expected = np.array([np_stability(*r) for r in raw])
    assert rep["stability_scores"] == pytest.approx(expected.tolist(), rel=1e-12)
    assert rep["mu_S"] == pytest.approx(expected.mean(), rel=1e-12)
    assert rep["sigma_S"] == pytest.approx(expected.std(ddof=1), rel=1e-12)
    assert rep["sigma_S"] != pytest.approx(expected.std(ddof=0), rel=1e-6)
    assert rep["n_logs"] == 3 and rep["n_epochs"] == [30, 30, 30] and rep["n_signal_epochs"] == [29, 29, 29]
    one = cal.calibrate([make_log(*raw[0])])
    assert one["sigma_S"] == 0.0 and one["mu_S"] == pytest.approx(expected[0], rel=1e-12)


def test_report_taxonomy_and_prediction_follow_mu_sigma():
    raw = [_random_log(s) for s in (2, 42)]
    rep = cal.calibrate([make_log(*r) for r in raw])
    assert rep["taxonomy"] == cal.classify(rep["mu_S"], rep["sigma_S"])
    assert (rep["prediction"], rep["prediction_text"]) == cal.prediction(rep["taxonomy"])


# --- taxonomy ----------------------------------------------------------------------------------------
TABLE2 = [  # the paper's Table 2, written out by hand
    ("mobilenet_v3_large", 0.590, 0.028, "overly stable"),
    ("vit_b_16", 0.546, 0.012, "overly stable"),
    ("densenet121", 0.495, 0.019, "moderately stable"),
    ("resnet18", 0.487, 0.015, "moderately stable"),
    ("efficientnet_b0", 0.331, 0.182, "dynamically stable"),
    ("resnet50", 0.185, 0.079, "naturally unstable"),
]


@pytest.mark.parametrize("arch, mu, sigma, cls", TABLE2)
def test_taxonomy_reproduces_table2(arch, mu, sigma, cls):
    assert cal.classify(mu, sigma) == cls
    assert cal.PAPER_TABLE2[arch]["mu_S"] == mu and cal.PAPER_TABLE2[arch]["sigma_S"] == sigma
    assert cal.PAPER_TABLE2[arch]["class"] == cls


@pytest.mark.parametrize("mu, sigma, cls", [
    (0.54, 0.0, "moderately stable"), (0.5401, 0.0, "overly stable"),
    (0.45, 0.0, "moderately stable"), (0.4499, 0.0, "intermediate"),
    (0.26, 0.0, "intermediate"), (0.2599, 0.0, "naturally unstable"),
    (0.50, 0.15, "moderately stable"), (0.50, 0.1501, "dynamically stable"),
    (0.90, 0.20, "dynamically stable"), (0.10, 0.16, "dynamically stable"),  # sigma rule comes first
    (0.35, 0.05, "intermediate"),
])
def test_taxonomy_boundaries(mu, sigma, cls):
    assert cal.classify(mu, sigma) == cls


def test_predictions():
    expected = {"moderately stable": "benefit", "overly stable": "benefit-if-stagnating",
                "dynamically stable": "benefit-seed-sensitive", "naturally unstable": "unreliable",
                "intermediate": "unknown"}
    for cls, pred in expected.items():
        p, text = cal.prediction(cls)
        assert p == pred and "5.3.1" in text and len(text) > 40
    with pytest.raises(DebaError):
        cal.prediction("wobbly")
    with pytest.raises(DebaError):
        cal.classify(float("nan"), 0.0)


# --- DEBA-run metrics --------------------------------------------------------------------------------
def test_decision_aggressiveness_and_convergence_stability():
    losses = [1.0, 2.0, 3.0, 4.0, 2.0, 0.5]
    log = make_log([1e-3] * 6, [1.0] * 6, losses, decisions=["hold", "increase", "increase", "rollback", "hold",
                                                             "increase"])
    assert cal.decision_aggressiveness(log) == pytest.approx((3 - 1) / 4)
    assert cal.convergence_stability(log) == pytest.approx(float(np.std(losses, ddof=0)), rel=1e-12)
    rollbacks = make_log([1e-3] * 3, [1.0] * 3, [1.0] * 3, decisions=["hold", "rollback", "rollback"])
    assert cal.decision_aggressiveness(rollbacks) == -1.0
    holds = make_log([1e-3] * 3, [1.0] * 3, [1.0] * 3, decisions=["hold"] * 3)
    assert cal.decision_aggressiveness(holds) == 0.0
    assert cal.decision_aggressiveness(make_log([1e-3] * 3, [1.0] * 3, [1.0] * 3)) is None
    # a non-finite loss is left out of the std
    nan_loss = make_log([1e-3] * 4, [1.0] * 4, [1.0, float("nan"), 3.0, None], decisions=["hold"] * 4)
    assert cal.convergence_stability(nan_loss) == pytest.approx(1.0)


def test_report_has_decision_metrics_only_when_logs_hold_decisions():
    gv, norms, losses = _random_log(3, n=8)
    dec = ["hold", "increase", "hold", "hold", "rollback", "increase", "increase", "hold"]
    with_dec = cal.calibrate([make_log(gv, norms, losses, decisions=dec), make_log(gv, norms, losses)])
    assert with_dec["decision_aggressiveness"] == [pytest.approx(0.5), None]
    assert with_dec["decision_aggressiveness_mean"] == pytest.approx(0.5)
    assert with_dec["convergence_stability"][0] == pytest.approx(float(np.std(losses)), rel=1e-12)
    assert with_dec["convergence_stability"][1] is None
    without = cal.calibrate([make_log(gv, norms, losses)])
    assert "decision_aggressiveness" not in without and "convergence_stability" not in without


# --- bad input ---------------------------------------------------------------------------------------
def test_too_few_usable_epochs():
    with pytest.raises(DebaError, match="too few usable epochs"):
        cal.calibrate([make_log([1.0, 2.0], [1.0, 2.0], [1.0, 2.0])])
    nan_one = make_log([1.0, 2.0, 3.0], [1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(DebaError, match="too few usable epochs"):
        cal.calibrate([nan_one])
    with pytest.raises(DebaError, match="no logs"):
        cal.calibrate([])


@pytest.mark.parametrize("log, msg", [
    (make_log([1.0, "x", 3.0], [1.0] * 3, [1.0] * 3), "must be a number"),
    ([{"epoch": 1, "grad_var": 1.0, "loss": 1.0}], "missing field"),
    (make_log([1.0, -2.0, 3.0], [1.0] * 3, [1.0] * 3), "negative"),
    (make_log([1.0] * 3, [1.0] * 3, [1.0] * 3)[::2], "consecutive"),
    (make_log([0.0] * 3, [1.0, 2.0, 3.0], [1.0] * 3), "zero"),
])
def test_bad_records_raise_one_line(log, msg):
    with pytest.raises(DebaError, match=msg) as e:
        cal.calibrate([log], names=["run.jsonl"])
    assert "\n" not in str(e.value) and "run.jsonl" in str(e.value)


def test_bad_options():
    log = make_log(GV, [1.0] * 5, [1.0] * 5)
    with pytest.raises(DebaError, match="conf mode"):
        cal.calibrate([log], conf_mode="wide")
    with pytest.raises(DebaError, match="window"):
        cal.calibrate([log], window=0)


# --- thresholds file ---------------------------------------------------------------------------------
def test_thresholds_file_round_trip(tmp_path):
    rep = cal.calibrate([make_log(*_random_log(5))], window=7, conf_mode="bounded", names=["a.jsonl"])
    path = tmp_path / "th.json"
    cal.write_thresholds_file(path, rep, arch="mobilenet_v3")
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and raw["arch"] == "mobilenet_v3_large" and raw["logs"] == ["a.jsonl"]
    th = cal.read_thresholds_file(path)
    assert th == {"theta_stab": rep["theta_stab"], "theta_conf": rep["theta_conf"], "conf_mode": "bounded",
                  "window": 7, "arch": "mobilenet_v3_large", "logs": ["a.jsonl"]}


@pytest.mark.parametrize("content, msg", [
    ({"theta_conf": 0.5, "conf_mode": "ratio", "window": 15}, "theta_stab"),
    ({"theta_stab": -0.1, "theta_conf": 0.5, "conf_mode": "ratio", "window": 15}, "theta_stab"),
    ({"theta_stab": 0.1, "theta_conf": "high", "conf_mode": "ratio", "window": 15}, "theta_conf"),
    ({"theta_stab": 0.1, "theta_conf": 0.5, "conf_mode": "wide", "window": 15}, "conf_mode"),
    ({"theta_stab": 0.1, "theta_conf": 1.5, "conf_mode": "bounded", "window": 15}, "bounded"),
    ({"theta_stab": 0.1, "theta_conf": 0.5, "conf_mode": "ratio", "window": 0}, "window"),
    ({"theta_stab": 0.1, "theta_conf": 0.5, "conf_mode": "ratio", "window": 15, "schema_version": 99}, "schema_version"),
    ({"theta_stab": 0.1, "theta_conf": 0.5, "conf_mode": "ratio", "window": 15, "schema_version": None}, "schema_version"),
])
def test_read_thresholds_file_rejects_bad_content(tmp_path, content, msg):
    path = tmp_path / "th.json"
    path.write_text(json.dumps({"schema_version": 1, **content}))
    with pytest.raises(DebaError, match=msg) as e:
        cal.read_thresholds_file(path)
    assert "\n" not in str(e.value)


def test_read_thresholds_file_not_json_or_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DebaError, match="not valid JSON"):
        cal.read_thresholds_file(bad)
    with pytest.raises(DebaError, match="no such file"):
        cal.read_thresholds_file(tmp_path / "absent.json")


# --- CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def log_files(tmp_path):
    paths = []
    for s in (2, 42, 199):
        gv, norms, losses = _random_log(s, n=20)
        dec = ["hold"] * 10 + ["increase"] * 6 + ["rollback"] * 4
        paths.append(write_jsonl(tmp_path / f"seed{s}.jsonl", make_log(gv, norms, losses, decisions=dec,
                                                                        conf=[123.0] * 20)))
    return paths


def test_cli_json_matches_library(log_files, capsys):
    assert main(["calibrate", *map(str, log_files), "--json", "--conf", "bounded", "--window", "5",
                 "--arch", "resnet18"]) == 0
    out = json.loads(capsys.readouterr().out)
    logs = [[json.loads(line) for line in p.read_text().splitlines()] for p in log_files]
    lib = cal.calibrate(logs, window=5, conf_mode="bounded")
    for key in ("theta_stab", "theta_conf", "stability_scores", "mu_S", "sigma_S", "taxonomy", "prediction",
                "prediction_text", "conf_mode", "window", "n_logs", "n_epochs", "decision_aggressiveness",
                "decision_aggressiveness_mean", "convergence_stability", "convergence_stability_mean"):
        assert out[key] == pytest.approx(lib[key]) if not isinstance(lib[key], str) else out[key] == lib[key], key
    assert out["schema_version"] == 1 and out["logs"] == [str(p) for p in log_files]
    assert out["decision_aggressiveness"] == pytest.approx([0.2, 0.2, 0.2])  # (6 - 4) / 10
    assert out["arch"] == "resnet18"
    assert out["paper"]["table1"] == {"theta_stab": TABLE1_THRESHOLDS["resnet18"][0],
                                      "theta_conf": TABLE1_THRESHOLDS["resnet18"][1]}
    assert out["paper"]["table2"]["mu_S"] == 0.487


def test_cli_readable_report_and_thresholds(log_files, tmp_path, capsys):
    th = tmp_path / "out" / "thresholds.json"
    assert main(["calibrate", *map(str, log_files), "--arch", "densenet121", "--write-thresholds", str(th)]) == 0
    text = capsys.readouterr().out
    rep = cal.calibrate([[json.loads(x) for x in p.read_text().splitlines()] for p in log_files])
    assert f"theta_stab {rep['theta_stab']:.4g}" in text and f"theta_conf {rep['theta_conf']:.4g}" in text
    assert f"mu_S {rep['mu_S']:.3f}" in text and rep["taxonomy"] in text and rep["prediction_text"] in text
    assert "Table 1: theta_stab 0.55  theta_conf 0.6" in text and "Table 2: mu_S 0.495" in text
    got = cal.read_thresholds_file(th)
    assert got["theta_stab"] == pytest.approx(rep["theta_stab"]) and got["arch"] == "densenet121"
    assert got["conf_mode"] == "ratio" and got["logs"] == [str(p) for p in log_files]


def test_cli_json_output_is_a_thresholds_file(log_files, tmp_path, capsys):
    th = tmp_path / "th.json"
    assert main(["calibrate", str(log_files[0]), "--json", "--write-thresholds", str(th)]) == 0
    captured = capsys.readouterr()
    full = tmp_path / "full.json"
    full.write_text(captured.out)  # stdout is exactly one JSON object
    assert "thresholds written" in captured.err
    a, b = cal.read_thresholds_file(full), cal.read_thresholds_file(th)
    assert a["theta_stab"] == b["theta_stab"] and a["theta_conf"] == b["theta_conf"]
    assert json.loads(captured.out)["sigma_S"] == 0.0


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deba calibrate: error:"), err
    for n in needles:
        assert n in err, err


def test_cli_errors(tmp_path, capsys):
    good = make_log(*_random_log(1, n=5))
    _one_line_error(capsys, ["calibrate", str(tmp_path / "absent.jsonl")], "absent.jsonl", "no such file")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1]) + "\n{oops\n")
    _one_line_error(capsys, ["calibrate", str(bad_json)], "bad.jsonl:3", "not valid JSON")
    missing = write_jsonl(tmp_path / "missing.jsonl", [good[0], {k: v for k, v in good[1].items() if k != "loss"}])
    _one_line_error(capsys, ["calibrate", str(missing)], "missing.jsonl:2", "loss")
    text = write_jsonl(tmp_path / "text.jsonl", [good[0], good[1], {**good[2], "grad_norm": "big"}])
    _one_line_error(capsys, ["calibrate", str(text)], "text.jsonl:3", "grad_norm")
    short = write_jsonl(tmp_path / "short.jsonl", good[:2])
    _one_line_error(capsys, ["calibrate", str(short)], "short.jsonl", "too few usable epochs")
    ok = write_jsonl(tmp_path / "ok.jsonl", good)
    _one_line_error(capsys, ["calibrate", str(ok), "--window", "0"], "window")
