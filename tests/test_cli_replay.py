"""`deba replay`: decisions over a recorded log, against a hand-worked expectation; option handling shared
through deba.commands._policy_args; one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deba.cli import main
from deba.commands._policy_args import add_policy_options, policy_from_args
from deba.errors import DebaError
from deba.logio import SCHEMA_VERSION
from deba.policy import DEFAULT_PRESET

RECORD_FIELDS = {
    "schema_version",
    "epoch",
    "batch_size",
    "grad_var",
    "grad_norm",
    "loss",
    "dnorm",
    "dloss",
    "conf",
    "decision",
    "in_cooldown",
    "non_finite",
    "reason",
    "next_batch_size",
}

# (grad_var, grad_norm, loss) per epoch; see test_replay_writes_the_hand_worked_decisions for the story
SIGNALS = [
    (1e-3, 2.0, 1.0),
    (1e-3, 2.0, 0.9),
    (1e-3, 2.2, 0.85),
    (None, 2.2, 0.85),
    (4e-3, 2.2, 0.8),
    (1e-3, 4.0, 0.8),
    (1e-3, 4.1, 0.79),
    (1e-3, 8.0, 0.79),
    (1e-3, 30.0, 0.79),
]


def write_log(path: Path, signals=SIGNALS, first_epoch=1, extra_lines=()):
    lines = []
    for i, (gv, gn, loss) in enumerate(signals):
        # the log's own batch size and decision must be ignored by the replay
        lines.append(
            json.dumps(
                {
                    "schema_version": 1,
                    "epoch": first_epoch + i,
                    "batch_size": 999,
                    "grad_var": gv,
                    "grad_norm": gn,
                    "loss": loss,
                    "decision": "increase",
                    "test_acc": 50.0,
                }
            )
        )
    lines.extend(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def deba(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit from inside parse_args
        return e.code


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rel(a, b):
    return abs(a - b) / (abs(b) + 1e-8)


def test_replay_writes_the_hand_worked_decisions(tmp_path, capsys):
    log = write_log(tmp_path / "epochs.jsonl")
    out = tmp_path / "sub" / "decisions.jsonl"
    assert (
        deba(
            "replay", log, "--arch", "resnet18", "--preset", "paper-bounded", "--cooldown", "1", "--out", out
        )
        == 0
    )
    recs = read_jsonl(out)
    assert [r["epoch"] for r in recs] == list(range(1, 10))
    for r in recs:
        assert set(r) == RECORD_FIELDS and r["schema_version"] == SCHEMA_VERSION
    # resnet18: theta_stab 0.55 (3 x = 1.65), theta_conf 0.6; bounded conf; cooldown 1
    # 1 first epoch: hold                          2 conf ~1/2, dnorm 0, dloss 0.1: increase 64 -> 96
    # 3 cooldown until epoch 3                     4 grad_var null: non-finite hold
    # 5 window 1,1,1,4 (e-3), median 1e-3: conf 4/5 > 0.6: rollback 96 -> floor(76.8) = 76
    # 6 cooldown until epoch 6                     7 median 1e-3, conf ~1/2, dnorm 0.1/4, dloss 0.01/0.8: 76 -> 114
    # 8 cooldown until epoch 8 (dnorm 3.9/4.1 would only hold anyway)
    # 9 conf ~1/2 but dnorm 22/8 = 2.75 > 1.65: rollback 114 -> floor(91.2) = 91
    assert [r["decision"] for r in recs] == [
        "hold",
        "increase",
        "hold",
        "hold",
        "rollback",
        "hold",
        "increase",
        "hold",
        "rollback",
    ]
    assert [r["batch_size"] for r in recs] == [64, 64, 96, 96, 96, 76, 76, 114, 114]
    assert [r["next_batch_size"] for r in recs] == [64, 96, 96, 96, 76, 76, 114, 114, 91]
    assert [r["in_cooldown"] for r in recs] == [False, False, True, False, False, True, False, True, False]
    assert [r["non_finite"] for r in recs] == [False, False, False, True, False, False, False, False, False]
    assert [recs[i]["reason"] for i in (2, 5, 7)] == [
        "cooldown until epoch 3",
        "cooldown until epoch 6",
        "cooldown until epoch 8",
    ]
    assert recs[0]["reason"].startswith("first epoch")
    assert recs[8]["reason"] == "dnorm 2.75 > 1.65 (3 x theta_stab)"
    assert (recs[0]["dnorm"], recs[0]["dloss"], recs[0]["conf"]) == (None, None, None)
    assert (recs[3]["grad_var"], recs[3]["conf"], recs[3]["dnorm"]) == (None, None, None)
    expected = {  # epoch: (conf, dnorm, dloss) by eqs. 2-4 with the bounded conf
        2: (1e-3 / (2e-3 + 1e-8), 0.0, 0.1 / (1.0 + 1e-8)),
        3: (1e-3 / (2e-3 + 1e-8), 0.2 / (2.0 + 1e-8), 0.05 / (0.9 + 1e-8)),
        5: (4e-3 / (5e-3 + 1e-8), 0.0, 0.05 / (0.85 + 1e-8)),  # against epoch 3, the last finite one
        7: (1e-3 / (2e-3 + 1e-8), 0.1 / (4.0 + 1e-8), 0.01 / (0.8 + 1e-8)),
        9: (1e-3 / (2e-3 + 1e-8), 22.0 / (8.0 + 1e-8), 0.0),
    }
    for epoch, (conf, dnorm, dloss) in expected.items():
        r = recs[epoch - 1]
        assert (
            rel(r["conf"], conf) < 1e-12 and rel(r["dnorm"], dnorm) < 1e-12 and rel(r["dloss"], dloss) < 1e-12
        )
    assert [r["grad_norm"] for r in recs] == [s[1] for s in SIGNALS]
    printed = capsys.readouterr().out
    assert "2 increases, 2 rollbacks, 5 holds (1 non-finite); final batch size 91" in printed


def test_replay_table_and_summary(tmp_path, capsys):
    log = write_log(tmp_path / "epochs.jsonl")
    assert deba("replay", log, "--arch", "resnet18", "--cooldown", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(
        i
        for i, line in enumerate(lines)
        if line.split()[:8] == ["epoch", "batch", "conf", "dnorm", "dloss", "decision", "next", "reason"]
    )
    rows = [line.split() for line in lines[header + 1 : header + 10]]
    assert [int(r[0]) for r in rows] == list(range(1, 10))
    assert [r[5] for r in rows] == [
        "hold",
        "increase",
        "hold",
        "hold",
        "rollback",
        "hold",
        "increase",
        "hold",
        "rollback",
    ]
    assert [int(r[6]) for r in rows] == [64, 96, 96, 96, 76, 76, 114, 114, 91]
    assert rows[0][2:5] == ["-", "-", "-"] and rows[3][2:5] == ["-", "-", "-"]
    assert float(rows[4][2]) == pytest.approx(0.8, rel=1e-3)
    assert lines[-1] == "9 epochs: 2 increases, 2 rollbacks, 5 holds (1 non-finite); final batch size 91"
    assert any("paper-bounded" in line for line in lines[:header])  # the default preset is named


def test_literal_paper_preset_differs(tmp_path, capsys):
    log = write_log(tmp_path / "epochs.jsonl")
    out = tmp_path / "d.jsonl"
    assert (
        deba("replay", log, "--arch", "resnet18", "--preset", "paper", "--cooldown", "1", "--out", out) == 0
    )
    recs = read_jsonl(out)
    # ratio conf of a constant grad_var is ~1 > 0.6: rollback at epoch 2, 64 -> 51
    assert recs[1]["conf"] == pytest.approx(1e-3 / (1e-3 + 1e-8), rel=1e-12)
    assert (recs[1]["decision"], recs[1]["next_batch_size"]) == ("rollback", 51)


def test_policy_options_reach_the_policy(tmp_path):
    log = write_log(tmp_path / "epochs.jsonl", signals=[(1e-3, 2.0, 1.0)] * 6)
    out = tmp_path / "d.jsonl"
    # explicit thresholds: no --arch needed; bounded conf 1/2 <= 0.7, nothing moves: increase every epoch
    assert (
        deba(
            "replay",
            log,
            "--theta-stab",
            "0.2",
            "--theta-conf",
            "0.7",
            "--cooldown",
            "0",
            "--start-batch",
            "100",
            "--b-min",
            "50",
            "--b-max",
            "250",
            "--grow-factor",
            "2",
            "--out",
            out,
        )
        == 0
    )
    assert [r["next_batch_size"] for r in read_jsonl(out)] == [100, 200, 250, 250, 250, 250]
    # universal thresholds (theta_conf 0.5 < 1) with the ratio conf: rollbacks, window and factor honoured
    assert (
        deba(
            "replay",
            log,
            "--preset",
            "paper",
            "--universal-thresholds",
            "--cooldown",
            "2",
            "--rollback-factor",
            "0.5",
            "--b-min",
            "20",
            "--out",
            out,
        )
        == 0
    )
    recs = read_jsonl(out)
    assert [r["next_batch_size"] for r in recs] == [64, 32, 32, 32, 20, 20]
    assert [r["in_cooldown"] for r in recs] == [False, False, True, True, False, True]


def test_full_history_and_window_options(tmp_path):
    # gv 8, 8, 1, 1 (e-3): with window 3 epoch 4's median is 1e-3 (conf 1: rollback), full history 4.5e-3
    log = write_log(
        tmp_path / "e.jsonl", signals=[(8e-3, 1.0, 1.0), (8e-3, 1.0, 1.0), (1e-3, 1.0, 1.0), (1e-3, 1.0, 1.0)]
    )
    out = tmp_path / "d.jsonl"
    common = ["replay", log, "--preset", "paper", "--arch", "resnet18", "--cooldown", "0", "--window", "3"]
    assert deba(*common, "--out", out) == 0
    assert [r["decision"] for r in read_jsonl(out)] == ["hold", "rollback", "increase", "rollback"]
    assert deba(*common, "--full-history", "--out", out) == 0
    recs = read_jsonl(out)
    assert [r["decision"] for r in recs] == ["hold", "rollback", "increase", "increase"]
    assert recs[3]["conf"] == pytest.approx(1e-3 / (4.5e-3 + 1e-8), rel=1e-12)


def test_replay_accepts_nan_and_any_first_epoch(tmp_path):
    log = tmp_path / "e.jsonl"
    log.write_text(
        '{"epoch": 11, "grad_var": 1e-3, "grad_norm": 2.0, "loss": 1.0}\n\n'
        '{"epoch": 12, "grad_var": NaN, "grad_norm": 2.0, "loss": 1.0}\n'
        '{"epoch": 13, "grad_var": 1e-3, "grad_norm": Infinity, "loss": 1.0}\n'
        '{"epoch": 14.0, "grad_var": 1e-3, "grad_norm": 2.0, "loss": 1.0}\n'
    )
    out = tmp_path / "d.jsonl"
    assert deba("replay", log, "--arch", "resnet18", "--out", out) == 0
    recs = read_jsonl(out)
    assert [r["epoch"] for r in recs] == [11, 12, 13, 14]
    assert [r["non_finite"] for r in recs] == [False, True, True, False]
    assert recs[1]["grad_var"] is None and recs[2]["grad_norm"] is None  # JSON has no NaN: null
    assert recs[3]["decision"] == "increase" and recs[3]["dnorm"] == 0.0


# --- errors ---------------------------------------------------------------------------------------------
def good_line(epoch):
    return json.dumps({"epoch": epoch, "grad_var": 1e-3, "grad_norm": 1.0, "loss": 1.0})


ERROR_LOGS = {
    "bad_json": (
        [good_line(1), good_line(2), '{"epoch": 3, "grad_var": 1e-3,'],
        r"e\.jsonl:3: not valid JSON",
    ),
    "not_object": ([good_line(1), "[1, 2]"], r"e\.jsonl:2: expected a JSON object"),
    "missing": (
        [good_line(1), '{"epoch": 2, "grad_var": 1e-3, "loss": 1.0}'],
        r"e\.jsonl:2: missing field.*grad_norm",
    ),
    "string": (
        [good_line(1), good_line(2), '{"epoch": 3, "grad_var": "abc", "grad_norm": 1, "loss": 1}'],
        r"e\.jsonl:3: field 'grad_var' must be a number",
    ),
    "list": (['{"epoch": 1, "grad_var": 1e-3, "grad_norm": 1, "loss": [1]}'], r"e\.jsonl:1: field 'loss'"),
    "bool": (['{"epoch": 1, "grad_var": true, "grad_norm": 1, "loss": 1}'], r"e\.jsonl:1: field 'grad_var'"),
    "gap": ([good_line(1), good_line(2), good_line(4)], r"e\.jsonl:3: epochs must be consecutive"),
    "repeat": ([good_line(1), good_line(2), good_line(2)], r"e\.jsonl:3: epochs must be consecutive"),
    "fractional_epoch": ([good_line(1.5)], r"e\.jsonl:1: epoch must be an integer"),
    "null_epoch": (
        ['{"epoch": null, "grad_var": 1e-3, "grad_norm": 1, "loss": 1}'],
        r"e\.jsonl:1: field 'epoch'",
    ),
    "empty": ([], r"e\.jsonl: no records"),
}


def assert_one_line_error(capsys, pattern):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deba replay: error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("case", sorted(ERROR_LOGS))
def test_bad_logs(tmp_path, capsys, case):
    lines, pattern = ERROR_LOGS[case]
    log = tmp_path / "e.jsonl"
    log.write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "d.jsonl"
    assert deba("replay", log, "--arch", "resnet18", "--out", out) == 2
    assert_one_line_error(capsys, pattern)
    assert not out.exists()


def test_missing_and_unreadable_files(tmp_path, capsys):
    assert deba("replay", tmp_path / "nope.jsonl", "--arch", "resnet18") == 2
    assert_one_line_error(capsys, r"nope\.jsonl: no such file")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    assert deba("replay", binary, "--arch", "resnet18") == 2
    assert_one_line_error(capsys, r"b\.jsonl")
    log = write_log(tmp_path / "e.jsonl")
    (tmp_path / "adir").mkdir()
    assert deba("replay", log, "--arch", "resnet18", "--out", tmp_path / "adir") == 2
    assert_one_line_error(capsys, r"cannot write .*adir")


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (
            ["--arch", "resnet34"],
            r"no thresholds for architecture 'resnet34'; known architectures: .*resnet18",
        ),
        ([], r"--arch is required unless both --theta-stab and --theta-conf are given"),
        (["--theta-stab", "0.5"], r"--arch is required"),
        (["--arch", "my_net", "--theta-conf", "0.5"], r"no thresholds for architecture 'my_net'"),
        (["--arch", "resnet18", "--window", "0"], r"--window must be >= 1, got 0"),
        (["--arch", "resnet18", "--cooldown", "-1"], r"--cooldown must be >= 0"),
        (["--arch", "resnet18", "--theta-stab", "0"], r"--theta-stab must be > 0"),
        (["--arch", "resnet18", "--theta-conf", "-0.5"], r"--theta-conf must be > 0"),
        (["--arch", "resnet18", "--theta-conf", "nan"], r"--theta-conf must be a finite number"),
        (
            ["--arch", "resnet18", "--b-min", "100", "--b-max", "50"],
            r"--b-min \(100\) must not exceed --b-max \(50\)",
        ),
        (
            ["--arch", "resnet18", "--start-batch", "8"],
            r"--start-batch \(8\) must lie in \[--b-min, --b-max\]",
        ),
        (["--arch", "resnet18", "--grow-factor", "1"], r"--grow-factor must be > 1"),
        (["--arch", "resnet18", "--rollback-factor", "1.5"], r"--rollback-factor must be in \(0, 1\)"),
        (["--arch", "resnet18", "--preset", "literal"], r"argument --preset: invalid choice: 'literal'"),
        (["--arch", "resnet18", "--cooldown", "ten"], r"argument --cooldown: invalid int value"),
    ],
)
def test_bad_options(tmp_path, capsys, argv, pattern):
    log = write_log(tmp_path / "e.jsonl")
    out = tmp_path / "d.jsonl"
    assert deba("replay", log, *argv, "--out", out) == 2
    assert_one_line_error(capsys, pattern)
    assert not out.exists()


def test_mobilenet_alias_and_explicit_thresholds_for_an_unknown_model(tmp_path):
    log = write_log(tmp_path / "e.jsonl")
    out = tmp_path / "d.jsonl"
    assert deba("replay", log, "--arch", "mobilenet_v3", "--out", out) == 0
    assert (
        deba(
            "replay",
            log,
            "--arch",
            "my_net",
            "--theta-stab",
            "0.55",
            "--theta-conf",
            "0.6",
            "--cooldown",
            "1",
            "--out",
            out,
        )
        == 0
    )
    assert read_jsonl(out)[-1]["next_batch_size"] == 91  # the resnet18 story with the same thresholds


# --- the shared option helpers ------------------------------------------------------------------------------
def parse(argv, **kw):
    p = argparse.ArgumentParser()
    p.add_argument("--arch")
    add_policy_options(p, **kw)
    return p.parse_args(argv)


def test_policy_from_args_defaults_and_overrides():
    args = parse(["--arch", "resnet50"])
    assert args.preset is None and args.start_batch is None and args.b_min is None and args.b_max is None
    pol = policy_from_args(args)
    assert pol.preset == DEFAULT_PRESET and pol.arch == "resnet50"
    c = pol.config
    assert (c.theta_stab, c.theta_conf, c.window, c.cooldown, c.full_history) == (12.0, 0.8, 15, 10, False)
    assert (c.start_batch, c.b_min, c.b_max, c.grow_factor, c.rollback_factor) == (64, 16, 2048, 1.5, 0.8)
    args = parse(
        [
            "--arch",
            "vit_b_16",
            "--preset",
            "paper",
            "--theta-conf",
            "0.9",
            "--window",
            "5",
            "--full-history",
            "--cooldown",
            "2",
            "--start-batch",
            "32",
            "--b-min",
            "8",
            "--b-max",
            "512",
            "--grow-factor",
            "2",
            "--rollback-factor",
            "0.5",
        ]
    )
    c = policy_from_args(args).config
    assert (c.theta_stab, c.theta_conf, c.window, c.full_history, c.cooldown, c.conf_mode) == (
        0.4,
        0.9,
        5,
        True,
        2,
        "ratio",
    )
    assert (c.start_batch, c.b_min, c.b_max, c.grow_factor, c.rollback_factor) == (32, 8, 512, 2.0, 0.5)


def test_policy_options_without_batch_options():
    # a command that defines --start-batch / --b-min / --b-max itself (deba train) leaves them out here
    p = argparse.ArgumentParser()
    p.add_argument("--start-batch", type=int, default=128)
    add_policy_options(p, batch_options=False)
    args = p.parse_args(["--universal-thresholds"])
    pol = policy_from_args(args)
    assert (pol.config.theta_stab, pol.config.theta_conf, pol.config.start_batch) == (0.1, 0.5, 128)
    with pytest.raises(DebaError, match="--arch is required"):
        policy_from_args(p.parse_args([]))


def test_python_dash_m_subprocess(tmp_path):
    log = write_log(tmp_path / "epochs.jsonl")
    out = tmp_path / "d.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "deba",
            "replay",
            str(log),
            "--arch",
            "resnet18",
            "--cooldown",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert [x["next_batch_size"] for x in read_jsonl(out)] == [64, 96, 96, 96, 76, 76, 114, 114, 91]
    r = subprocess.run(
        [sys.executable, "-m", "deba", "replay", str(tmp_path / "missing.jsonl"), "--arch", "resnet18"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("deba replay: error: ") and r.stderr.count("\n") == 1
