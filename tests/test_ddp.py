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
