"""Faults a long adaptive run meets: killed and resumed, out of memory at a grown batch, non-finite loss,
a corrupt checkpoint, a crash in the middle of writing a file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from deba.errors import DebaError
from deba.logio import atomic_write_text
from deba.training.config import TrainConfig
from deba.training.trainer import OOM_ERRORS, NonFiniteStop, Trainer, train

from hooked_step import HookedStep

GROWING = dict(arch="tiny_cnn", dataset="synthetic", device="cpu", quiet=True, start_batch=16, policy="deba",
               theta_stab=5.0, theta_conf=0.9, cooldown=0, deterministic=True)
TIMING = {"train_time_s", "eval_time_s", "events", "schema_version"}


def _epochs(run):
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _cli(out, epochs, *extra):
    return [sys.executable, "-m", "deba", "train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu",
            "--quiet", "--start-batch", "16", "--policy", "deba", "--theta-stab", "5", "--theta-conf", "0.9",
            "--cooldown", "0", "--deterministic", "--epochs", str(epochs), "--out", str(out), *extra]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_records(tmp_path):
    """Kill a run (SIGKILL) at several points; resuming reproduces the uninterrupted run exactly."""
    epochs = 5
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref, epochs), check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    reference = _strip(_epochs(ref))

    run = tmp_path / "killed"
    for kill_after_lines in (1, 3):
        proc = subprocess.Popen(_cli(run, epochs, "--resume"), env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            f = run / "epochs.jsonl"
            if f.exists() and len(f.read_text().splitlines()) >= kill_after_lines:
                time.sleep(0.3)  # somewhere inside the next epoch (or its checkpoint write)
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = (run / "epochs.jsonl").read_text().splitlines()
        assert all(json.loads(line) for line in lines)  # never a half line
    subprocess.run(_cli(run, epochs, "--resume"), check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    resumed = _epochs(run)
    assert [r["epoch"] for r in resumed] == list(range(1, epochs + 1))  # no duplicate, no gap
    assert _strip(resumed) == reference
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == reference[-1]["test_acc"] and summary["status"] == "complete"


def test_resume_in_process_is_bit_identical(tmp_path):
    full = train(TrainConfig(**GROWING, epochs=4, out=str(tmp_path / "full")))
    part = tmp_path / "part"
    train(TrainConfig(**GROWING, epochs=2, out=str(part)))
    resumed = train(TrainConfig(**GROWING, epochs=4, out=str(part)), resume=True)
    assert _strip(_epochs(part)) == _strip(_epochs(tmp_path / "full"))
    assert resumed["final_test_acc"] == full["final_test_acc"]
    assert resumed["batch_sizes"] == full["batch_sizes"]


def test_resume_refuses_a_different_config(tmp_path):
    train(TrainConfig(**GROWING, epochs=1, out=str(tmp_path / "r")))
    with pytest.raises(DebaError, match="different config"):
        train(TrainConfig(**{**GROWING, "seed": 7}, epochs=2, out=str(tmp_path / "r")), resume=True)


def test_corrupt_checkpoint_is_reported_not_crashing(tmp_path):
    run = tmp_path / "r"
    train(TrainConfig(**GROWING, epochs=1, out=str(run)))
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DebaError, match="corrupt"):
        train(TrainConfig(**GROWING, epochs=2, out=str(run)), resume=True)
    assert len(_epochs(run)) == 1  # what was written stays intact


def test_atomic_write_keeps_old_file_on_crash(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    def boom(*a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


class _OOMAbove(HookedStep):
    """Wraps the real step; raises an out-of-memory error for batches larger than `limit`, like a GPU would."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.samples = []

    def before(self, x):
        if x.shape[0] > self.limit:
            raise OOM_ERRORS[0]("CUDA out of memory (injected)")
        self.samples.append(int(x.shape[0]))
        return x


def test_oom_at_grown_batch_caps_and_finishes_epoch(tmp_path):
    oom = _OOMAbove(limit=24)  # 16 works, 24 works, 36 does not
    cfg = TrainConfig(**GROWING, epochs=5, out=str(tmp_path / "o"))
    trainer = Trainer(cfg, step_factory=oom.factory)
    summary = trainer.fit()
    recs = _epochs(tmp_path / "o")
    n = trainer.loader.num_samples
    assert summary["b_max_cap"] == 24 and summary["status"] == "complete"
    assert max(summary["batch_sizes"]) <= 36
    assert all(b <= 24 for b in oom.samples)
    # every epoch trained on whole batches of its permutation: no sample lost or trained twice
    per_epoch = [r["steps"] for r in recs]
    assert sum(per_epoch) == len(oom.samples)
    hit = [r for r in recs if r["events"]]
    assert hit and "out of memory at batch size 36" in hit[0]["events"][0]
    assert hit[0]["steps"] == n // 24
    # the cap survives a resume: a checkpoint holds it
    state = torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=False)
    assert state["policy"]["b_max_cap"] == 24


class _NaNAt(HookedStep):
    """The real step, with the input of the calls numbered in ``epoch_step`` (1-based) made NaN."""

    def __init__(self, epoch_step):
        super().__init__()
        self.bad = epoch_step

    def before(self, x):
        return x * float("nan") if self.calls in self.bad else x


def test_nonfinite_epoch_is_discarded_and_model_restored(tmp_path):
    cfg = TrainConfig(**{**GROWING, "policy": "fixed", "start_batch": 200}, epochs=3, out=str(tmp_path / "n"))
    nan = _NaNAt({12})  # 2000 // 200 = 10 steps per epoch: step 12 is in epoch 2
    trainer = Trainer(cfg, step_factory=nan.factory)
    trainer.fit()
    recs = _epochs(tmp_path / "n")
    assert [r["non_finite"] for r in recs] == [False, True, False]
    assert recs[1]["decision"] == "hold" and "discarded" in recs[1]["events"][0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert recs[2]["loss"] is not None and recs[2]["loss"] == recs[2]["loss"]


def test_nonfinite_stops_after_limit_with_valid_checkpoint(tmp_path):
    cfg = TrainConfig(**{**GROWING, "policy": "fixed", "start_batch": 200}, epochs=4, max_nonfinite=1,
                      out=str(tmp_path / "s"))
    nan = _NaNAt({15})
    trainer = Trainer(cfg, step_factory=nan.factory)
    with pytest.raises(NonFiniteStop, match="non-finite"):
        trainer.fit()
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["status"].startswith("stopped")
    state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
