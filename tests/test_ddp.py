"""`torchrun --nproc-per-node 2 -m deba train` (gloo, CPU) makes the decisions a single process makes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

ARGS = ["--arch", "tiny_mlp", "--dataset", "synthetic", "--device", "cpu", "--quiet",
        "--start-batch", "32", "--policy", "deba", "--theta-stab", "5", "--theta-conf", "0.9", "--cooldown", "0",
        "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epochs(run):
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_rank_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "deba", "train", *ARGS, "--epochs", "4", "--out", str(single)], check=True, env=env,
                   timeout=600)
    ddp = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), "-m", "deba", "train", *ARGS, "--epochs", "4", "--out", str(ddp)],
                       env=env, timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _epochs(single), _epochs(ddp)
    assert [e["batch_size"] for e in a] == [e["batch_size"] for e in b] == [32, 32, 48, 72]
    assert [e["decision"] for e in a] == [e["decision"] for e in b]
    assert [e["steps"] for e in a] == [e["steps"] for e in b]
    for ea, eb in zip(a, b):
        for key in ("loss", "grad_var", "grad_norm"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-4), (ea["epoch"], key)
        assert eb["test_acc"] == pytest.approx(ea["test_acc"], abs=0.5)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2

    # checkpoints are written by rank 0 and restored on every rank: stop after 2 epochs, resume to 4
    part = tmp_path / "ddp-resumed"
    for epochs, extra in (("2", []), ("4", ["--resume"])):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            str(_free_port()), "-m", "deba", "train", *ARGS, "--epochs", epochs, "--out", str(part), *extra],
                           env=env, timeout=600, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    timing = {"train_time_s", "eval_time_s", "events", "schema_version"}
    strip = lambda recs: [{k: v for k, v in e.items() if k not in timing} for e in recs]  # noqa: E731
    assert strip(_epochs(part)) == strip(b)


@pytest.mark.slow
def test_out_of_memory_on_one_rank_stops_and_the_restart_applies_the_cap(tmp_path):
    """Rank 1 runs out of memory at the grown batch 72 (36 per rank) in epoch 4. Rank 0 is then inside the
    gradient all-reduce, so the run cannot recover in place: rank 1 writes its cap and exits 75, torchrun
    (--max-restarts 1) restarts both ranks with the same arguments, --resume loads the epoch-3 checkpoint
    and every rank applies the cap (48, the largest size that worked), so epoch 4 trains at 48."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    args = [a if a != "tiny_mlp" else "oom_on_rank1:mlp" for a in ARGS]
    run = tmp_path / "ddp-oom"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
                        "--monitor-interval", "0.2", "--master-port", str(_free_port()), "-m", "deba", "train", *args,
                        "--epochs", "5", "--out", str(run), "--resume"],
                       env=env, timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "out of memory at batch size 72 on rank 1 of 2" in r.stderr
    limit = json.loads((run / "oom-rank1.json").read_text())
    assert (limit["b_max_cap"], limit["failed_batch_size"], limit["epoch"]) == (48, 72, 4)
    assert not (run / "oom-rank0.json").exists()
    recs = _epochs(run)
    # the same decisions as the unconstrained run up to epoch 3, then the cap
    assert [e["batch_size"] for e in recs] == [32, 32, 48, 48, 48]
    assert [e["epoch"] for e in recs] == [1, 2, 3, 4, 5]
    assert recs[3]["b_max_cap"] == 48
    assert any("B_max capped at 48" in ev for ev in recs[3]["events"])
    assert all(max(b for b, _ in e["batch_steps"]) <= 48 for e in recs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"


FIT_THEN_REPORT = """
import os
import sys
import torch.distributed as dist
from deba.training.config import TrainConfig
from deba.training.trainer import Trainer

cfg = TrainConfig(arch="tiny_mlp", dataset="synthetic", device="cpu", quiet=True, start_batch=32, epochs=1, policy="fixed",
                  out=sys.argv[1])
trainer = Trainer(cfg)
started = dist.is_initialized()
trainer.fit()
print(f"rank {trainer.dist.rank}: started {started} alive-after-fit {dist.is_initialized()}", flush=True)
# DDP keeps the gloo group's threads alive past destroy_process_group, and their teardown in interpreter
# finalization can abort the process (PyTorch, not deba); leave as `deba train` does (deba.cli.main)
os._exit(0)
"""


@pytest.mark.slow
def test_fit_ends_the_process_group_it_started(tmp_path):
    # A process left with a live gloo group can abort in interpreter teardown (SIGABRT, "terminate called
    # without an active exception"); fit must end the group the trainer started.
    script = tmp_path / "fit.py"
    script.write_text(FIT_THEN_REPORT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), str(script), str(tmp_path / "run")],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0: started True alive-after-fit False", "rank 1: started True alive-after-fit False"]


def test_the_cli_leaves_a_distributed_run_with_os_exit_and_its_own_code(monkeypatch, capsys):
    # DDP keeps the gloo group alive past destroy_process_group; its teardown in interpreter finalization can
    # abort a run that completed. Where deba started a process group, `deba` exits with os._exit instead.
    import deba.cli as cli
    import deba.training.trainer as trainer

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    assert cli.main(["report", "/nonexistent-run-folder"]) == 2
    assert exits == []  # no process group: an ordinary return
    monkeypatch.setattr(trainer, "_STARTED_GROUP", True)
    assert cli.main(["report", "/nonexistent-run-folder"]) == 2
    assert exits == [2]
    assert "error" in capsys.readouterr().err
