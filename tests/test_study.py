"""deba.study: grid expansion, shards, resume, locks, packing; runs are a fake `deba train` script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from deba import study
from deba.cli import main
from deba.errors import DebaError
from deba.training.config import TrainConfig

# A stand-in for `deba train --config F --out D [--resume] --quiet`: one line per "epoch", a checkpoint after
# each, a summary at the end. FAKE_MODE=die: killed right after the first checkpoint unless resuming;
# FAKE_MODE=sleep: sleeps after each checkpoint (for the time limit); FAKE_SLEEP: seconds per epoch;
# FAKE_FAIL=text: runs whose name contains it exit 1 at once.
FAKE_TRAIN = textwrap.dedent(r"""
    import argparse, json, os, signal, sys, time
    from pathlib import Path
    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--out"); p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    cfg = json.loads(Path(a.config).read_text())
    out = Path(a.out)
    ckpt = out / "checkpoint.pt"
    resuming = a.resume and ckpt.exists()
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"run": cfg["run_name"], "resume": a.resume, "quiet": a.quiet, "pid": os.getpid(),
                            "concurrent_runs": cfg["concurrent_runs"], "lr": cfg["lr"],
                            "start_batch": cfg["start_batch"], "thresholds": cfg.get("thresholds"),
                            "leftovers": sorted(x.name for x in out.iterdir()
                                                if x.name not in (".lock", "run.log", "study-config.json"))}) + "\n")
    (out / "config.json").write_text(json.dumps({"schema_version": 1, **cfg}))
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in cfg["run_name"]:
        sys.exit(1)
    start = int(ckpt.read_text()) if resuming else 0
    mode = os.environ.get("FAKE_MODE", "")
    seed = cfg["seed"]
    for e in range(start + 1, cfg["epochs"] + 1):
        # signals that differ by seed and epoch, for calibration from these logs
        rec = {"schema_version": 1, "epoch": e, "batch_size": cfg["start_batch"],
               "grad_var": 1e-3 * (1 + 0.1 * ((7 * seed + 3 * e) % 5)),
               "grad_norm": 1 + 0.05 * ((seed + 2 * e) % 7),
               "loss": 2.0 / e + 0.01 * (seed % 3)}
        if cfg.get("decision_interval"):  # signals per period in decisions.jsonl, as the trainer writes them
            rec.update(grad_var=None, grad_norm=None)
            for i in (2 * e - 1, 2 * e):
                period = {"schema_version": 1, "epoch": i, "grad_var": 2e-3 * (1 + 0.1 * ((5 * seed + i) % 7)),
                          "grad_norm": 1 + 0.03 * ((seed + 3 * i) % 5), "loss": 1.5 / i}
                with open(out / "decisions.jsonl", "a") as f:
                    f.write(json.dumps(period) + "\n")
        with open(out / "epochs.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        ckpt.write_text(str(e))
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        if mode == "die" and not a.resume:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sleep":
            time.sleep(60)
    # a DEBA run "grows" to a batch size that depends on its seed
    max_b = 2 * cfg["start_batch"] + seed if cfg["policy"] == "deba" else cfg["start_batch"]
    (out / "summary.json").write_text(json.dumps({"schema_version": 1, "status": "complete", "seed": cfg["seed"],
                                                  "final_test_acc": 50.0, "train_time_s": 1.0,
                                                  "batch_sizes": [cfg["start_batch"]], "final_batch_size": 64,
                                                  "max_batch_size": max_b}))
""")

SPEC = {
    "name": "t",
    "epochs": 2,
    "datasets": ["synthetic"],
    "archs": ["tiny_cnn", "resnet18"],
    "seeds": [1, 2],
    "common": {"lr": 0.05, "device": "cpu"},
    "arch_overrides": {"resnet18": {"lr": 0.02, "start-batch": 32}},
    "arms": {
        "fixed": {"policy": "fixed"},
        "bounded": {"policy": "deba", "preset": "paper-bounded", "archs": ["resnet18"]},
        "universal": {"policy": "deba", "universal_thresholds": True, "lr": 0.1},
    },
}


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    log = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_MODE", raising=False)
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    monkeypatch.delenv("FAKE_FAIL", raising=False)

    class Fake:
        command = [sys.executable, str(script)]

        @staticmethod
        def calls() -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return Fake


def quiet(_msg: str) -> None:
    pass


def run(spec, out, fake, **kw):
    return study.run_study(spec, out, train_command=fake.command, log=quiet, poll_s=0.02, **kw)


# --- spec and grid ---------------------------------------------------------------------------------
def test_expand_counts_ids_and_precedence():
    spec = study.parse_spec(SPEC)
    plans = study.expand(spec)
    # tiny_cnn: fixed + universal; resnet18: fixed + bounded + universal; two seeds each
    assert len(plans) == (2 + 3) * 2
    ids = [p.run_id for p in plans]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert "synthetic/resnet18/bounded/seed1" in ids and "synthetic/tiny_cnn/bounded/seed1" not in ids
    by_id = {p.run_id: p for p in plans}
    # precedence: common < arch_overrides < arm; grid keys set by the grid; every config valid
    assert by_id["synthetic/tiny_cnn/fixed/seed2"].config["lr"] == 0.05
    assert by_id["synthetic/resnet18/fixed/seed2"].config["lr"] == 0.02
    assert by_id["synthetic/resnet18/fixed/seed2"].config["start_batch"] == 32
    assert by_id["synthetic/resnet18/universal/seed1"].config["lr"] == 0.1
    p = by_id["synthetic/resnet18/bounded/seed2"]
    assert (p.config["arch"], p.config["dataset"], p.config["seed"], p.config["epochs"]) == (
        "resnet18",
        "synthetic",
        2,
        2,
    )
    assert p.config["run_name"] == p.run_id
    for p in plans:
        TrainConfig.from_dict(p.config)


def test_epochs_axis_and_arm_dataset_filter():
    spec = study.parse_spec(
        {
            **SPEC,
            "epochs": [2, 5],
            "datasets": ["synthetic", "cifar10"],
            "arms": {
                "fixed": {"policy": "fixed"},
                "universal": {"policy": "deba", "universal_thresholds": True, "datasets": ["cifar10"]},
            },
        }
    )
    plans = study.expand(spec)
    # fixed on 2 datasets, universal on cifar10 only; x 2 archs x 2 epochs x 2 seeds
    assert len(plans) == (2 + 1) * 2 * 2 * 2
    assert "cifar10/tiny_cnn/universal-5ep/seed2" in {p.run_id for p in plans}
    assert not any(p.dataset == "synthetic" and p.arm == "universal" for p in plans)
    assert {p.config["epochs"] for p in plans if p.run_id.endswith("-5ep/seed1") or "-5ep/" in p.run_id} == {
        5
    }


@pytest.mark.parametrize(
    "change, words",
    [
        ({"arms": {"x": {"policy": "fixed", "lerning_rate": 1}}}, "unknown key(s) lerning_rate"),
        ({"arms": {"x": {"policy": "sometimes"}}}, "policy must be one of"),
        ({"common": {"epochs": 3}}, "common sets epochs"),
        ({"arms": {}}, "missing 'arms'"),
        ({"seeds": [1, 1]}, "lists a value twice"),
        ({"arms": {"a/b": {"policy": "fixed"}}}, "arm name 'a/b'"),
        (
            {"arms": {"x": {"policy": "deba", "preset": "paper"}}},
            "no thresholds",
        ),  # tiny_cnn is not in Table 1
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"arch_overrides": {"tiny_cnn": {"lr": "fast"}}}, "lr must be a number"),
        ({"archs": ["tiny_cnn", "resnet19"]}, "archs: unknown model 'resnet19'"),
        ({"datasets": ["cifar10", "imagenet"]}, "datasets: unknown dataset 'imagenet'"),
    ],
)
def test_bad_spec_is_one_line_error(change, words):
    with pytest.raises(DebaError) as e:
        study.expand(study.parse_spec({**SPEC, **change}))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_spec_before_anything_starts(tmp_path, fake, capsys):
    path = write_spec(tmp_path, {**SPEC, "arms": {"fixed": {"policy": "fixed"}, "bad": {"momentum": -1}}})
    code = main(
        ["study", str(path), "--out", str(tmp_path / "out"), "--train-command", " ".join(fake.command)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "momentum must be" in err
    assert fake.calls() == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "0/0"])
def test_bad_shard(text):
    with pytest.raises(DebaError):
        study.parse_shard(text)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 11, 20])
def test_shards_cover_grid_exactly_once(n):
    plans = study.expand(study.parse_spec(SPEC))
    seen = [p.run_id for i in range(n) for p in study.shard_plans(plans, study.parse_shard(f"{i}/{n}"))]
    assert sorted(seen) == sorted(p.run_id for p in plans)
    assert len(seen) == len(set(seen))


# --- running -----------------------------------------------------------------------------------------
def test_runs_all_then_never_redoes_finished(tmp_path, fake):
    spec = study.parse_spec(SPEC)
    out = tmp_path / "out"
    res = run(spec, out, fake, parallel=3)
    assert res.exit_code == 0 and res.count("complete") == 10
    calls = fake.calls()
    assert len(calls) == 10 and all(c["quiet"] and not c["resume"] for c in calls)
    assert {c["concurrent_runs"] for c in calls} == {3}  # shared timings are labelled
    for p in study.expand(spec):
        assert study.run_status(p, out)[0] == "complete"
        assert json.loads((p.dir(out) / "config.json").read_text())["lr"] == p.config["lr"]
        assert not (p.dir(out) / ".lock").exists()
    res2 = run(spec, out, fake, parallel=3)
    assert res2.exit_code == 0 and res2.count("complete") == 10
    assert len(fake.calls()) == 10  # nothing started again


def test_resume_after_killed_run(tmp_path, fake, monkeypatch):
    spec = study.parse_spec({**SPEC, "epochs": 3, "archs": ["resnet18"], "seeds": [1]})
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_MODE", "die")
    res = run(spec, out, fake, parallel=2)
    assert res.exit_code == study.EXIT_FAILED and res.count("failed") == 3
    assert all("exit code -9" in o.detail for o in res.outcomes)
    plans = study.expand(spec)
    assert [study.run_status(p, out)[0] for p in plans] == ["resumable"] * 3
    res = run(spec, out, fake, parallel=2)
    assert res.exit_code == 0 and res.count("complete") == 3
    second = fake.calls()[3:]
    assert len(second) == 3 and all(c["resume"] for c in second)
    for p in plans:  # continued from the checkpoint: each epoch trained exactly once
        epochs = [json.loads(x)["epoch"] for x in (p.dir(out) / "epochs.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]


def test_partial_run_without_checkpoint_restarts_clean(tmp_path, fake):
    spec = study.parse_spec(
        {**SPEC, "archs": ["tiny_cnn"], "seeds": [1], "arms": {"fixed": {"policy": "fixed"}}}
    )
    out = tmp_path / "out"
    (plan,) = study.expand(spec)
    d = plan.dir(out)
    d.mkdir(parents=True)
    (d / "epochs.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (d / "summary.json").write_text('{"status": "running"}')
    assert study.run_status(plan, out)[0] == "partial"
    res = run(spec, out, fake)
    assert res.count("complete") == 1
    (call,) = fake.calls()
    assert call["resume"] is False and call["leftovers"] == []
    assert len((d / "epochs.jsonl").read_text().splitlines()) == 2


def test_stopped_run_is_final(tmp_path, fake):
    spec = study.parse_spec(
        {**SPEC, "archs": ["tiny_cnn"], "seeds": [1], "arms": {"fixed": {"policy": "fixed"}}}
    )
    out = tmp_path / "out"
    (plan,) = study.expand(spec)
    plan.dir(out).mkdir(parents=True)
    (plan.dir(out) / "summary.json").write_text('{"status": "stopped: non-finite"}')
    res = run(spec, out, fake)
    assert [o.status for o in res.outcomes] == ["stopped"] and fake.calls() == [] and res.exit_code == 0


def test_shard_runs_only_its_share(tmp_path, fake):
    spec = study.parse_spec(SPEC)
    out = tmp_path / "out"
    run(spec, out, fake, shard=(1, 3))
    expected = {p.run_id for p in study.shard_plans(study.expand(spec), (1, 3))}
    assert {c["run"] for c in fake.calls()} == expected and len(fake.calls()) == len(expected)


def test_lock_held_elsewhere_is_skipped_and_stale_lock_taken_over(tmp_path, fake):
    spec = study.parse_spec({**SPEC, "archs": ["tiny_cnn"], "seeds": [1]})
    out = tmp_path / "out"
    held, stale = study.expand(spec)
    holder = study.RunLock(held.dir(out))
    assert holder.acquire()
    # a lock file left by a process that died: its pid is dead, nobody holds the flock
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale.dir(out).mkdir(parents=True)
    (stale.dir(out) / ".lock").write_text(f"{dead.stdout.strip()} somehost\n")
    assert study.run_status(held, out)[0] == "running"
    res = run(spec, out, fake)
    statuses = {o.run_id: o.status for o in res.outcomes}
    assert statuses == {held.run_id: "skipped-running", stale.run_id: "complete"}
    assert [c["run"] for c in fake.calls()] == [stale.run_id]
    holder.release()
    res = run(spec, out, fake)
    assert res.count("complete") == 2 and [c["run"] for c in fake.calls()][1:] == [held.run_id]


@pytest.mark.slow
def test_two_study_processes_never_run_a_run_twice(tmp_path, fake, monkeypatch):
    spec_path = write_spec(tmp_path, SPEC)
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_SLEEP", "0.15")
    other = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deba",
            "study",
            str(spec_path),
            "--out",
            str(out),
            "--parallel",
            "2",
            "--train-command",
            " ".join(fake.command),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    mine = run(study.load_spec(spec_path), out, fake, parallel=2)
    assert other.wait(timeout=60) == 0, other.stderr.read()
    assert mine.exit_code == 0
    runs = [c["run"] for c in fake.calls()]
    assert sorted(runs) == sorted(p.run_id for p in study.expand(study.load_spec(spec_path)))
    assert all(study.run_status(p, out)[0] == "complete" for p in study.expand(study.load_spec(spec_path)))


def test_time_limit_stops_runs_resumably(tmp_path, fake, monkeypatch):
    spec = study.parse_spec(
        {**SPEC, "archs": ["tiny_cnn"], "seeds": [1, 2, 3], "arms": {"fixed": {"policy": "fixed"}}}
    )
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_MODE", "sleep")
    res = run(spec, out, fake, parallel=2, time_limit_s=0.5)
    assert res.exit_code == study.EXIT_TIME_LIMIT
    assert sorted(o.status for o in res.outcomes) == ["interrupted", "interrupted", "not-started"]
    statuses = [study.run_status(p, out)[0] for p in study.expand(spec)]
    assert sorted(statuses) == ["pending", "resumable", "resumable"]
    monkeypatch.delenv("FAKE_MODE")
    res = run(spec, out, fake, parallel=2)
    assert res.exit_code == 0 and res.count("complete") == 3
    assert sum(c["resume"] for c in fake.calls()) == 2


def test_sigterm_to_the_study_stops_its_runs_resumably(tmp_path, fake, monkeypatch):
    spec = {**SPEC, "archs": ["tiny_cnn"], "seeds": [1], "arms": {"fixed": {"policy": "fixed"}}}
    spec_path = write_spec(tmp_path, spec)
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_MODE", "sleep")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deba",
            "study",
            str(spec_path),
            "--out",
            str(out),
            "--train-command",
            " ".join(fake.command),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    (plan,) = study.expand(study.parse_spec(spec))
    deadline = time.monotonic() + 30
    while not (fake.calls() and (plan.dir(out) / "checkpoint.pt").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    (call,) = fake.calls()
    with pytest.raises(ProcessLookupError):
        os.kill(call["pid"], 0)
    assert study.run_status(plan, out)[0] == "resumable"


def test_changed_spec_conflicts_with_existing_runs(tmp_path, fake):
    out = tmp_path / "out"
    run(study.parse_spec(SPEC), out, fake)
    changed = study.parse_spec({**SPEC, "common": {"lr": 0.3, "device": "cpu"}})
    with pytest.raises(DebaError, match="made with another config"):
        run(changed, out, fake)
    # where a run is, and how it logs, are not part of what it is
    moved = study.parse_spec({**SPEC, "common": {"lr": 0.05, "device": "cuda", "checkpoint_every": 5}})
    assert run(moved, out, fake).count("complete") == 10


# --- packing and the CLI ------------------------------------------------------------------------------
def test_pack_and_restore(tmp_path, fake, capsys):
    spec_path = write_spec(tmp_path, SPEC)
    out = tmp_path / "out"
    archive = tmp_path / "packs" / "t.tar.gz"
    code = main(
        [
            "study",
            str(spec_path),
            "--out",
            str(out),
            "--parallel",
            "2",
            "--shard",
            "0/2",
            "--train-command",
            " ".join(fake.command),
            "--pack",
            str(archive),
        ]
    )
    assert code == 0
    n_shard0 = len(study.shard_plans(study.expand(study.load_spec(spec_path)), (0, 2)))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "study.yaml" in names and not any(n.endswith(("checkpoint.pt", ".lock")) for n in names)
    assert sum(n.endswith("/summary.json") for n in names) == n_shard0
    assert sum(n.endswith("/epochs.jsonl") for n in names) == n_shard0
    # a later session on a fresh machine: restore, then shard 0 has nothing to do
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    main(
        [
            "study",
            str(spec_path),
            "--out",
            str(fresh),
            "--restore",
            str(archive),
            "--shard",
            "0/2",
            "--train-command",
            " ".join(fake.command),
        ]
    )
    assert "restored" in capsys.readouterr().out
    assert len(fake.calls()) == n_shard0
    main(["study", str(spec_path), "--out", str(fresh), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("10 runs:") and f"{n_shard0} complete" in lines[-1]
    assert sum(" complete " in ln for ln in lines[:-1]) == n_shard0


def test_cli_dry_run_lists_runs(tmp_path, capsys):
    spec_path = write_spec(tmp_path, SPEC)
    assert main(["study", str(spec_path), "--out", str(tmp_path / "o"), "--dry-run", "--shard", "1/4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = study.shard_plans(study.expand(study.load_spec(spec_path)), (1, 4))
    assert [ln.split()[0] for ln in lines[:-1]] == [p.run_id for p in expected]
    assert all(ln.split()[1] == "pending" for ln in lines[:-1])
    assert not (tmp_path / "o").exists()


def test_missing_data_path_is_an_error(tmp_path, fake):
    spec = study.parse_spec({**SPEC, "data": {"synthetic": str(tmp_path / "nowhere")}})
    with pytest.raises(DebaError, match="data for synthetic not found"):
        run(spec, tmp_path / "out", fake)


ALL_ARMS = {"fixed", "fixed-cosine", "fixed-large", "paper", "paper-bounded", "calibrated", "step-grow",
            "deba-sqrt-cosine"}


@pytest.mark.parametrize("name, arms, n_runs", [
    ("paper.yaml", ALL_ARMS, None), ("quick.yaml", ALL_ARMS, None), ("cpu-smoke.yaml", ALL_ARMS, 16),
    ("cpu-30ep.yaml", {"fixed", "fixed-cosine", "calibrated", "deba-sqrt-cosine", "sqrt-cosine-varscaled", "bounded-conf06", "sqrt-cosine-conf06"}, 21),
])
def test_shipped_specs_expand(name, arms, n_runs):
    path = Path(__file__).resolve().parents[1] / "studies" / name
    spec = study.load_spec(path)
    plans = study.expand(spec)
    assert plans and len({p.run_id for p in plans}) == len(plans)
    assert {p.arm for p in plans} >= arms
    assert n_runs is None or len(plans) == n_runs


@pytest.mark.slow
def test_end_to_end_with_the_real_trainer(tmp_path):
    """Two tiny real runs through `deba train`, then `deba report` on them."""
    from deba import report

    spec = study.parse_spec(
        {
            "name": "e2e",
            "epochs": 3,
            "datasets": ["synthetic"],
            "archs": ["tiny_cnn"],
            "seeds": [0],
            "common": {"device": "cpu", "graphs": "off", "subset": 512, "start_batch": 16, "lr": 0.02},
            "arms": {
                "fixed": {"policy": "fixed"},
                "deba": {
                    "policy": "deba",
                    "preset": "paper-bounded",
                    "theta_stab": 0.5,
                    "theta_conf": 0.6,
                    "cooldown": 1,
                },
            },
        }
    )
    out = tmp_path / "out"
    res = study.run_study(spec, out, parallel=2, log=quiet)
    assert res.exit_code == 0, [(o.run_id, o.detail) for o in res.outcomes]
    for p in study.expand(spec):
        summary = json.loads((p.dir(out) / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["concurrent_runs"] == 2
        assert len((p.dir(out) / "epochs.jsonl").read_text().splitlines()) == 3
    rep = report.build_report([out], tmp_path / "rep", figures=False)
    t4 = rep["table4"].set_index("arm")
    assert set(t4.index) == {"fixed", "deba"} and t4.loc["deba", "n_pairs"] == 1
    assert t4.loc["deba", "timing"] == "shared x2"


# --- dependencies between arms ----------------------------------------------------------------------------
DEP_SPEC = {
    "name": "deps",
    "epochs": 4,
    "datasets": ["synthetic"],
    "archs": ["tiny_cnn"],
    "seeds": [1, 2, 3],
    "common": {"device": "cpu", "window": 3},
    "arms": {
        "fixed": {"policy": "fixed"},
        "bounded": {"policy": "deba", "preset": "paper-bounded", "theta_stab": 0.5, "theta_conf": 0.6},
        "large": {"policy": "fixed", "start_batch": {"max_batch_of": "bounded"}},
        "cal": {"policy": "deba", "preset": "paper-bounded", "thresholds": {"calibrate_from": "fixed"}},
        "cal-ratio": {
            "policy": "deba",
            "preset": "paper",
            "window": 2,
            "thresholds": {"calibrate-from": "fixed"},
        },
    },
}


def _numpy_thresholds(logs: list[list[dict]], window: int, conf_mode: str) -> tuple[float, float]:
    """Spec section 2 worked out with NumPy float64: 75th percentile of dnorm, median of conf, epochs 2..T."""
    dnorm, conf = [], []
    for recs in logs:
        gv = np.array([r["grad_var"] for r in recs], dtype=np.float64)
        norm = np.array([r["grad_norm"] for r in recs], dtype=np.float64)
        dnorm += list(np.abs(np.diff(norm)) / (np.abs(norm[:-1]) + 1e-8))
        med = np.array([np.median(gv[max(0, t - window + 1) : t + 1]) for t in range(1, len(gv))])
        conf += list(gv[1:] / (med + 1e-8) if conf_mode == "ratio" else gv[1:] / (gv[1:] + med + 1e-8))
    return float(np.percentile(dnorm, 75)), float(np.median(conf))


def test_dependencies_expand_to_the_runs_they_read():
    plans = {p.run_id: p for p in study.expand(study.parse_spec(DEP_SPEC))}
    large = plans["synthetic/tiny_cnn/large/seed2"]
    assert large.needs == ["synthetic/tiny_cnn/bounded/seed2"]  # the same seed's run
    assert (
        large.config["start_batch"] == {"max_batch_of": "bounded"} and "start_batch" not in large.identity()
    )
    cal = plans["synthetic/tiny_cnn/cal/seed3"]
    assert cal.needs == [f"synthetic/tiny_cnn/fixed/seed{s}" for s in (1, 2, 3)]  # every seed, pooled
    assert cal.config["thresholds"] == {"calibrate_from": "fixed"}
    assert plans["synthetic/tiny_cnn/fixed/seed1"].needs == []
    # with an epochs axis, a run reads the runs of its own length
    spec = study.parse_spec({**DEP_SPEC, "epochs": [2, 4]})
    plans = {p.run_id: p for p in study.expand(spec)}
    assert plans["synthetic/tiny_cnn/large-2ep/seed1"].needs == ["synthetic/tiny_cnn/bounded-2ep/seed1"]
    assert study.arm_depths(spec) == {"fixed": 0, "bounded": 0, "large": 1, "cal": 1, "cal-ratio": 1}


@pytest.mark.parametrize(
    "arms, words",
    [
        (
            {"large": {"policy": "fixed", "start_batch": {"max_batch_of": "bounded-x"}}},
            "names arm 'bounded-x', which the spec does not define",
        ),
        ({"large": {"policy": "fixed", "thresholds": {"max_batch_of": "fixed"}}}, "max_batch_of can set"),
        ({"large": {"policy": "fixed", "start_batch": {"max_batch": "fixed"}}}, "must be one dependency"),
        ({"large": {"policy": "fixed", "start_batch": {"max_batch_of": "large"}}}, "cannot depend on itself"),
        (
            {
                "a": {"policy": "fixed", "start_batch": {"max_batch_of": "b"}},
                "b": {"policy": "fixed", "b_max": {"max_batch_of": "a"}},
            },
            "cycle (a -> b -> a)",
        ),
        ({"c": {"policy": "fixed", "thresholds": {"calibrate_from": "fixed"}}}, "need policy deba"),
        (
            {"c": {"policy": "deba", "theta_stab": 0.3, "thresholds": {"calibrate_from": "fixed"}}},
            "both set the thresholds",
        ),
        (
            {
                "c": {"policy": "deba", "preset": "paper", "thresholds": {"calibrate_from": "only-c10"}},
                "only-c10": {"policy": "fixed", "datasets": ["cifar10"]},
            },
            "filter leaves it out",
        ),
    ],
)
def test_bad_dependency_is_one_line_error(arms, words):
    with pytest.raises(DebaError) as e:
        study.expand(study.parse_spec({**DEP_SPEC, "arms": {"fixed": {"policy": "fixed"}, **arms}}))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_dependency_outside_an_arm_is_refused():
    with pytest.raises(DebaError, match=r"common.start_batch depends on other runs; only an arm may"):
        study.parse_spec({**DEP_SPEC, "common": {"start_batch": {"max_batch_of": "bounded"}}})


def _fake_finished(
    out: Path, run_id: str, seed: int, max_b: int | None, status: str = "complete"
) -> list[dict]:
    d = Path(out, *run_id.split("/"))
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs = [
        {
            "schema_version": 1,
            "epoch": e,
            "batch_size": 64,
            "grad_var": float(1e-3 * (1 + rng.random())),
            "grad_norm": float(1 + rng.random()),
            "loss": float(2.0 / e + 0.1 * rng.random()),
        }
        for e in range(1, 5)
    ]
    (d / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = {"schema_version": 1, "status": status, "seed": seed, "batch_sizes": [64, 96, 144, 96]}
    if max_b is not None:
        summary["max_batch_size"] = max_b
    (d / "summary.json").write_text(json.dumps(summary))
    return recs


def test_resolve_from_fake_finished_runs(tmp_path):
    from deba.calibration import read_thresholds_file

    spec = study.parse_spec(DEP_SPEC)
    plans = {p.run_id: p for p in study.expand(spec)}
    out = tmp_path / "out"
    base = "synthetic/tiny_cnn"
    large2 = plans[f"{base}/large/seed2"]
    with pytest.raises(DebaError, match="bounded/seed2 is not finished"):
        study.resolve_config(large2, out)
    assert [row[1] for row in study.plan_table(spec, out) if row[0].run_id == large2.run_id] == ["waiting"]
    _fake_finished(out, f"{base}/bounded/seed2", 2, max_b=216)
    _fake_finished(out, f"{base}/bounded/seed3", 3, max_b=None)  # older summary: from batch_sizes
    _fake_finished(out, f"{base}/bounded/seed1", 1, max_b=324, status="stopped: non-finite")  # final too
    assert study.resolve_config(large2, out)["start_batch"] == 216
    assert study.resolve_config(plans[f"{base}/large/seed3"], out)["start_batch"] == 144
    assert study.resolve_config(plans[f"{base}/large/seed1"], out)["start_batch"] == 324
    resolved = study.resolve_config(large2, out)
    TrainConfig.from_dict(resolved)
    assert {k: v for k, v in resolved.items() if k != "start_batch"} == large2.identity()

    # calibration: every seed of the fixed arm must be finished; then NumPy float64 decides the values
    logs = [_fake_finished(out, f"{base}/fixed/seed{s}", s, 64) for s in (1, 2)]
    with pytest.raises(DebaError, match="fixed/seed3 is not finished"):
        study.resolve_config(plans[f"{base}/cal/seed1"], out)
    logs.append(_fake_finished(out, f"{base}/fixed/seed3", 3, 64))
    for arm, window, conf_mode in (("cal", 3, "bounded"), ("cal-ratio", 2, "ratio")):
        conf = study.resolve_config(plans[f"{base}/{arm}/seed1"], out)
        path = Path(conf["thresholds"])
        assert path == (out / "synthetic" / "tiny_cnn" / arm / "thresholds.json").resolve()
        th = read_thresholds_file(path)
        stab, cf = _numpy_thresholds(logs, window, conf_mode)
        assert (th["conf_mode"], th["window"], th["arch"]) == (conf_mode, window, "tiny_cnn")
        assert th["theta_stab"] == pytest.approx(stab, rel=1e-12)
        assert th["theta_conf"] == pytest.approx(cf, rel=1e-12)
        assert json.loads(path.read_text())["schema_version"] >= 1
    # a summary without any batch size cannot give one: a one-line error naming the file
    d = out / base / "bounded" / "seed3"
    (d / "summary.json").write_text(json.dumps({"schema_version": 1, "status": "complete"}))
    with pytest.raises(DebaError, match=r"seed3/summary.json: no max_batch_size"):
        study.resolve_config(plans[f"{base}/large/seed3"], out)


def test_dependent_runs_start_after_their_dependencies(tmp_path, fake):
    spec = study.parse_spec(DEP_SPEC)
    out = tmp_path / "out"
    res = run(spec, out, fake, parallel=3)
    assert res.exit_code == 0 and res.count("complete") == 15, [
        (o.run_id, o.status, o.detail) for o in res.outcomes
    ]
    calls = fake.calls()
    order = {c["run"]: i for i, c in enumerate(calls)}
    by_run = {c["run"]: c for c in calls}
    plans = study.expand(spec)
    for p in plans:
        for need in p.needs:  # started after every run it needs (which finished before it was started)
            assert order[need] < order[p.run_id]
    for seed in (1, 2, 3):
        # the fake DEBA run reached 2 * 64 + seed
        assert by_run[f"synthetic/tiny_cnn/large/seed{seed}"]["start_batch"] == 128 + seed
        th = by_run[f"synthetic/tiny_cnn/cal/seed{seed}"]["thresholds"]
        assert th == str((out / "synthetic" / "tiny_cnn" / "cal" / "thresholds.json").resolve())
    fixed_logs = [
        [
            json.loads(x)
            for x in (out / "synthetic/tiny_cnn/fixed" / f"seed{s}" / "epochs.jsonl").read_text().splitlines()
        ]
        for s in (1, 2, 3)
    ]
    th = json.loads(Path(by_run["synthetic/tiny_cnn/cal/seed1"]["thresholds"]).read_text())
    assert th["theta_conf"] == pytest.approx(_numpy_thresholds(fixed_logs, 3, "bounded")[1], rel=1e-12)
    # nothing is redone, and resolved values in the runs' config.json are not conflicts with the spec
    res = run(spec, out, fake, parallel=3)
    assert res.exit_code == 0 and res.count("complete") == 15 and len(fake.calls()) == 15
    # the pack carries the thresholds the calibrated arms were given
    archive = tmp_path / "p.tar.gz"
    assert study.pack_study(spec, out, archive) == 15
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert (
        "synthetic/tiny_cnn/cal/thresholds.json" in names
        and "synthetic/tiny_cnn/cal-ratio/thresholds.json" in names
    )
    fresh = tmp_path / "fresh"
    assert study.restore_archives([archive], fresh) == 15
    assert all(st == "complete" for _, st, _ in study.plan_table(spec, fresh))


def test_calibration_reads_the_period_log_of_runs_with_decision_periods(tmp_path, fake):
    """With a decision interval a run's signals are per period, in decisions.jsonl (its epochs.jsonl has none):
    calibrate_from reads those, and the thresholds equal the NumPy reference on them."""
    spec = study.parse_spec({**DEP_SPEC, "common": {**DEP_SPEC["common"], "decision_interval": 100,
                                                    "decision_interval_unit": "samples"},
                             "arms": {k: DEP_SPEC["arms"][k] for k in ("fixed", "cal")}})
    out = tmp_path / "out"
    res = run(spec, out, fake, parallel=2)
    assert res.exit_code == 0 and res.count("complete") == 6, [(o.run_id, o.status, o.detail) for o in res.outcomes]
    logs = [[json.loads(x) for x in (out / f"synthetic/tiny_cnn/fixed/seed{s}/decisions.jsonl").read_text().splitlines()]
            for s in (1, 2, 3)]
    assert len(logs[0]) == 8  # two periods per epoch
    th = json.loads((out / "synthetic/tiny_cnn/cal/thresholds.json").read_text())
    stab, conf = _numpy_thresholds(logs, 3, "bounded")
    assert th["theta_stab"] == pytest.approx(stab, rel=1e-12) and th["theta_conf"] == pytest.approx(conf, rel=1e-12)
    assert all(name.endswith("/decisions.jsonl") for name in th["logs"])


def test_runs_other_runs_need_start_first(tmp_path, fake):
    """One at a time: within a depth, the runs a dependent arm reads go first (fixed before an-arm, though
    an-arm sorts first by id), then the rest, then the dependent arm."""
    spec = study.parse_spec({**DEP_SPEC, "seeds": [1, 2], "arms": {
        "an-arm": {"policy": "fixed"}, "fixed": {"policy": "fixed"},
        "cal": {"policy": "deba", "preset": "paper-bounded", "thresholds": {"calibrate_from": "fixed"}}}})
    res = run(spec, tmp_path / "out", fake, parallel=1)
    assert res.exit_code == 0
    assert [c["run"].split("/", 2)[2] for c in fake.calls()] == [
        "fixed/seed1", "fixed/seed2", "an-arm/seed1", "an-arm/seed2", "cal/seed1", "cal/seed2"]


def test_dependency_in_another_shard_waits(tmp_path, fake, capsys):
    spec = study.parse_spec({**DEP_SPEC, "arms": {k: DEP_SPEC["arms"][k] for k in ("bounded", "large")}})
    out = tmp_path / "out"
    # bounded/seed1..3, large/seed1..3: shard 1/2 holds bounded/seed2, large/seed1 and large/seed3
    plans = study.expand(spec)
    shard = (1, 2)
    mine = {p.run_id for p in study.shard_plans(plans, shard)}
    assert mine == {
        "synthetic/tiny_cnn/bounded/seed2",
        "synthetic/tiny_cnn/large/seed1",
        "synthetic/tiny_cnn/large/seed3",
    }
    rows = {p.run_id: (st, d) for p, st, d in study.plan_table(spec, out, shard)}
    assert rows["synthetic/tiny_cnn/large/seed1"] == (
        "waiting",
        "needs synthetic/tiny_cnn/bounded/seed1 (another shard)",
    )
    res = run(spec, out, fake, shard=shard)
    assert res.exit_code == study.EXIT_WAITING
    st = {o.run_id: o.status for o in res.outcomes}
    assert st == {
        "synthetic/tiny_cnn/bounded/seed2": "complete",
        "synthetic/tiny_cnn/large/seed1": "waiting",
        "synthetic/tiny_cnn/large/seed3": "waiting",
    }
    assert run(spec, out, fake, shard=(0, 2)).exit_code == 0  # the other shard: bounded 1 and 3, large 2
    res = run(spec, out, fake, shard=shard)
    assert res.exit_code == 0 and res.count("complete") == 3
    assert {c["run"]: c["start_batch"] for c in fake.calls()}["synthetic/tiny_cnn/large/seed3"] == 131


def test_failed_dependency_blocks_its_dependents(tmp_path, fake, monkeypatch, capsys):
    spec_path = write_spec(tmp_path, {**DEP_SPEC, "seeds": [1]})
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", "/bounded/")
    code = main(["study", str(spec_path), "--out", str(out), "--train-command", " ".join(fake.command)])
    text = capsys.readouterr().out
    assert code == study.EXIT_FAILED
    assert "FAILED synthetic/tiny_cnn/bounded/seed1" in text
    assert (
        "BLOCKED synthetic/tiny_cnn/large/seed1: needs synthetic/tiny_cnn/bounded/seed1, which failed here"
        in text
    )
    assert "synthetic/tiny_cnn/large/seed1" not in {c["run"] for c in fake.calls()}
    monkeypatch.delenv("FAKE_FAIL")
    assert main(["study", str(spec_path), "--out", str(out), "--train-command", " ".join(fake.command)]) == 0
