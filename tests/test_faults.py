"""Fault injection (issue 14): each of the twelve faults found by hand, reproduced and checked.

Every test is tagged with its fault number (``@fault(n)``); ``scripts/fault_table.py`` runs this file and
writes the table in docs/reliability.md from the results. A test that tries many cases in one go (the bit
flips) reports ``tried`` and ``survived`` as properties; otherwise a test is one case.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deba.cli import main
from deba.errors import DebaError, StorageError
from deba.logio import atomic_write_text
from deba.runlock import LOCK_FD_ENV, RunLock
from deba.training import safety
from deba.training.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, CheckpointDamaged, load_checkpoint
from deba.training.checkpoint import save_checkpoint
from deba.training.config import TrainConfig
from deba.training.trainer import Interrupted, Trainer, init_distributed, train

from hooked_step import HookedStep

# fault number -> (what was found, what is checked); the table's rows (scripts/fault_table.py)
FAULTS = {
    1: "a diverged run (--lr 50) reported complete, its checkpoint holding inf BatchNorm buffers",
    2: "two deba train processes writing one --out",
    3: "single-bit flips in checkpoint.pt loaded without a word",
    4: "disk full (or read-only, no permission) while writing: a traceback",
    5: "a checkpoint that loads but does not fit the model or run: a traceback",
    6: "--resume with more --epochs under cosine silently restarts the decay",
    7: "temporary files of a killed write stay forever",
    8: "a seed out of range (or a non-finite number) for an option: a traceback",
    9: "a DDP rank that stops responding hangs the job for 30 minutes",
    10: "deba study killed with SIGKILL leaves its deba train children running",
    11: "output files created -rw------- whatever the umask",
    12: "SIGTERM exits 143 at once, losing the epoch in progress",
}

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = dict(arch="tiny_cnn", dataset="synthetic", subset=256, device="cpu", quiet=True, start_batch=32,
            policy="fixed", deterministic=True, graphs="off")
TIMING = {"train_time_s", "eval_time_s", "events", "schema_version"}


def fault(n: int):
    """Tag a test with the fault it checks (read by scripts/fault_table.py through the junit XML)."""
    assert n in FAULTS

    def mark(fn):
        fn = pytest.mark.fault(n)(fn)
        return fn

    return mark


@pytest.fixture(autouse=True)
def _record_fault(request, record_property):
    for m in request.node.iter_markers("fault"):
        record_property("fault", m.args[0])


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "epochs.jsonl").read_text().splitlines()]


def _cli_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--subset", "256", "--device", "cpu",
            "--quiet", "--start-batch", "32", "--policy", "fixed", "--deterministic", "--graphs", "off",
            "--out", str(out), *extra]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


# --- 1: non-finite covers parameters, gradients and buffers -------------------------------------------------
@fault(1)
def test_nonfinite_state_names_the_buffer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    assert safety.nonfinite_tensors(model) == []
    model[1].running_var[2] = float("inf")
    assert safety.nonfinite_tensors(model) == ["1.running_var"]
    model[1].running_var.fill_(1.0)
    model[0].weight.grad = torch.full_like(model[0].weight, float("nan"))
    assert safety.nonfinite_tensors(model) == ["0.weight.grad"]
    assert safety.nonfinite_tensors(model, grads=False) == []


@fault(1)
@fault(11)
def test_lr_50_ends_diverged_exit_3_with_a_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    old = os.umask(0o022)
    try:
        # all 2000 samples at batch 64: BatchNorm's running_var overflows in epoch 1 while the loss stays finite
        code = main(_cli_args(out, "--lr", "50", "--epochs", "3", "--max-nonfinite", "1", "--subset", "2000",
                              "--start-batch", "64"))
    finally:
        os.umask(old)
    line = _one_error_line(capsys.readouterr().err)
    assert code == 3 and "diverged" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["non_finite_epochs"] == 1
    recs = _records(out)
    assert [r["non_finite"] for r in recs] == [True] and recs[0]["nonfinite_steps"] == 0  # loss, grads finite
    assert "running_var" in json.loads((out / "epochs.jsonl").read_text().splitlines()[0])["events"][0]
    assert _all_finite(load_checkpoint(out / CHECKPOINT_NAME)["model"])
    # fault 11: every file the run wrote is -rw-r--r-- under umask 022
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@fault(11)
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}\n")
        save_checkpoint(tmp_path / CHECKPOINT_NAME, {"run": {}})
        save_checkpoint(tmp_path / CHECKPOINT_NAME, {"run": {}})  # the first becomes checkpoint.prev.pt
    finally:
        os.umask(old)
    for name in ("summary.json", CHECKPOINT_NAME, PREVIOUS_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# --- 2: one writer per run folder -----------------------------------------------------------------------
HOLD = ("import sys, time; from deba.runlock import RunLock; lock = RunLock(sys.argv[1]); "
        "assert lock.acquire(); print('held', flush=True); time.sleep(120)")


@fault(2)
def test_second_writer_is_refused_naming_the_live_holder(tmp_path, capsys):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(_cli_args(out, "--epochs", "1"))
        line = _one_error_line(capsys.readouterr().err)
        assert code == 2 and f"pid {holder.pid} on {socket.gethostname()}" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the run goes ahead, and leaves no lock behind
    assert main(_cli_args(out, "--epochs", "1")) == 0
    assert not (out / ".lock").exists()


@fault(2)
def test_train_under_a_study_adopts_the_study_lock(tmp_path, monkeypatch):
    out = tmp_path / "r"
    study_lock = RunLock(out)
    assert study_lock.acquire()  # as deba study does before starting deba train
    monkeypatch.setenv(LOCK_FD_ENV, str(study_lock.fd))
    seen = {}

    class Peek:
        def on_epoch_end(self, trainer, rec):
            seen["holder"] = RunLock(out).holder()
            seen["third"] = RunLock(out).acquire()

    train(TrainConfig(**TINY, epochs=1, out=str(out)), callbacks=[Peek()])
    assert seen == {"holder": f"pid {os.getpid()} on {socket.gethostname()}", "third": False}
    assert (out / ".lock").exists() and not RunLock(out).acquire()  # still the study's until it releases
    study_lock.release()
    assert RunLock(out).acquire()


# --- 3: checkpoint checksum, previous checkpoint, fallback --------------------------------------------------
@fault(3)
def test_single_bit_flips_are_all_caught_and_fallback_resumes(tmp_path, capsys, record_property):
    out = tmp_path / "r"
    train(TrainConfig(**TINY, epochs=2, out=str(out)))
    ckpt = out / CHECKPOINT_NAME
    good = ckpt.read_bytes()
    assert (out / PREVIOUS_NAME).is_file()
    rng = random.Random(14)
    tried, caught = 40, 0
    for _ in range(tried):
        raw = bytearray(good)
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
        ckpt.write_bytes(bytes(raw))
        try:
            load_checkpoint(ckpt)
        except CheckpointDamaged as e:
            caught += str(ckpt) in str(e)
    record_property("tried", tried)
    record_property("survived", caught)
    assert caught == tried
    # a damaged checkpoint stops --resume with one line naming it; --resume-fallback takes the previous one
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x10
    ckpt.write_bytes(bytes(raw))
    assert main(_cli_args(out, "--epochs", "3", "--resume")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and "checksum" in line and "--resume-fallback" in line
    assert main(_cli_args(out, "--epochs", "3", "--resume", "--resume-fallback")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_completed"] == 3
    assert any("damaged" in e["event"] and PREVIOUS_NAME in e["event"] for e in summary["events"])


# --- 4: file-system failures: one line naming the file, exit 74, nothing partial, resumable ----------------
@fault(4)
@pytest.mark.parametrize("where", ["mkstemp", "write", "rename"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_refused_write_is_a_storage_error_and_leaves_the_old_file(tmp_path, monkeypatch, where, err):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    def refuse(*a, **k):
        raise OSError(err, os.strerror(err))

    import deba.logio as logio

    if where == "mkstemp":
        monkeypatch.setattr(logio.tempfile, "mkstemp", refuse)
    elif where == "write":
        monkeypatch.setattr(logio.os, "fsync", refuse)
    else:
        monkeypatch.setattr(logio.os, "replace", refuse)
    with pytest.raises(StorageError) as e:
        atomic_write_text(target, "new\n")
    assert e.value.exit_code == 74 and str(target) in str(e.value) and os.strerror(err) in str(e.value)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@fault(4)
@fault(7)
def test_disk_full_at_the_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    train(TrainConfig(**TINY, epochs=3, out=str(ref)))
    out = tmp_path / "full"
    real_fsync = os.fsync
    writes = {"checkpoint": 0}

    def fsync(fd):  # the disk fills while the checkpoint of epoch 2 is written
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{CHECKPOINT_NAME}."):
            writes["checkpoint"] += 1
            if writes["checkpoint"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(_cli_args(out, "--epochs", "3"))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 74 and str(out / CHECKPOINT_NAME) in line and "No space left on device" in line
    assert not list(out.glob(".*.tmp"))  # nothing partial left
    monkeypatch.setattr(os, "fsync", real_fsync)
    # fault 7: a killed write's temporary file is removed when the run resumes
    (out / f".{CHECKPOINT_NAME}.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    assert main(_cli_args(out, "--epochs", "3", "--resume")) == 0
    assert not list(out.glob(".*.tmp"))
    assert _records(out) == _records(ref)
    events = json.loads((out / "summary.json").read_text())["events"]
    assert any("removed 1 temporary file" in e["event"] for e in events)


# --- 5: a checkpoint that does not fit ---------------------------------------------------------------------
def _mlp(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


@fault(5)
@pytest.mark.parametrize("change, words", [
    ("no model key", "lacks 'model'"),
    ("wider model", "model tensor 2.weight has shape (16, 48) in the checkpoint, (32, 48) in the model"),
    ("unknown run key", "unknown key(s) warp_drive"),
    ("bad optimizer state", "does not fit this run's optimizer, policy or RNG"),
])
def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, change, words):
    out = tmp_path / "r"
    cfg = TrainConfig(**TINY, epochs=2, out=str(out))
    train(TrainConfig(**TINY, epochs=1, out=str(out)), model=_mlp(16))
    width = 16
    if change != "wider model":
        payload = load_checkpoint(out / CHECKPOINT_NAME)
        payload.pop("checkpoint_version")
        if change == "no model key":
            del payload["model"]
        elif change == "unknown run key":
            payload["run"]["warp_drive"] = 1
        else:
            payload["step"] = {"momentum_buffers": "garbage"}
        save_checkpoint(out / CHECKPOINT_NAME, payload)
    else:
        width = 32
    with pytest.raises(DebaError) as e:
        train(cfg, resume=True, model=_mlp(width))
    assert e.value.exit_code == 2 and words in str(e.value) and "\n" not in str(e.value)
    assert str(out / CHECKPOINT_NAME) in str(e.value)


# --- 6: extending a run under a schedule with a horizon ----------------------------------------------------
@fault(6)
def test_resume_with_other_epochs_under_cosine_is_refused_and_config_stays(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_cli_args(out, "--epochs", "1", "--lr-schedule", "cosine")) == 0
    config = (out / "config.json").read_text()
    assert main(_cli_args(out, "--epochs", "2", "--lr-schedule", "cosine", "--resume")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cosine" in line and "--epochs 1" in line
    assert (out / "config.json").read_text() == config  # describes the run that happened
    # a constant schedule has no horizon: extending it is the run that then happens
    flat = tmp_path / "flat"
    assert main(_cli_args(flat, "--epochs", "1")) == 0
    assert main(_cli_args(flat, "--epochs", "2", "--resume")) == 0
    assert json.loads((flat / "config.json").read_text())["epochs"] == 2 and len(_records(flat)) == 2


# --- 8: seeds and every number validated in one line ---------------------------------------------------
@fault(8)
@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--seed", str(2 ** 32)), ("--lr", "nan"),
                                         ("--lr", "inf"), ("--momentum", "inf"), ("--dist-timeout", "0"),
                                         ("--subset-seed", str(2 ** 40)), ("--epochs", str(2 ** 70))])
def test_out_of_range_number_is_one_line_exit_2(tmp_path, capsys, flag, value):
    code = main(_cli_args(tmp_path / "r", "--epochs", "1", flag, value))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and flag in line
    assert not (tmp_path / "r").exists()


@fault(8)
def test_every_numeric_option_refuses_nan_inf_and_out_of_range():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type).split("|")[0].strip()
        if kind not in ("int", "float"):
            continue
        for bad in ([-1, 2 ** 64, -(2 ** 64)] if kind == "int" else [float("nan"), float("inf"), -float("inf")]):
            with pytest.raises(DebaError):  # never another exception type, and never accepted
                TrainConfig(**{f.name: bad})


# --- 9: --dist-timeout --------------------------------------------------------------------------------
@fault(9)
def test_dist_timeout_reaches_the_process_group(monkeypatch):
    import datetime

    import torch.distributed as dist

    rdzv = sys.modules["torch.distributed.rendezvous"]
    got = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(rdzv, "rendezvous", lambda url: iter([(dist.HashStore(), 0, 2)]))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: got.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("deba.training.trainer._STARTED_GROUP", False)
    info = init_distributed("cpu", TrainConfig().dist_timeout)
    assert info.world_size == 2 and got["timeout"] == datetime.timedelta(seconds=300)
    assert TrainConfig().dist_timeout < 30 * 60


# --- 12: SIGTERM / SIGINT stop at the next step with a checkpoint -------------------------------------------
class _SignalAt(HookedStep):
    """The real step; sends ``sig`` to this process during call number ``at`` (as a scheduler would)."""

    def __init__(self, at: int, sig: int):
        super().__init__()
        self.at, self.sig = at, sig

    def after(self) -> None:
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)


@fault(12)
@pytest.mark.parametrize("sig, code, interval, at", [(signal.SIGTERM, 143, None, 21), (signal.SIGINT, 130, 3, 10)])
def test_signal_stops_at_the_step_and_resume_loses_nothing(tmp_path, sig, code, interval, at):
    """Stopped mid-epoch (and, with decision periods, mid-period), resumed: the records, decisions and step
    count equal those of the run that was never stopped."""
    grow = dict(TINY, policy="deba", theta_stab=5.0, theta_conf=0.9, cooldown=0, start_batch=16,
                decision_interval=interval)
    ref = tmp_path / "ref"
    train(TrainConfig(**grow, epochs=3, out=str(ref)))
    out = tmp_path / "r"
    hit = _SignalAt(at=at, sig=sig)  # epochs: 256 // 16 = 16 steps in epoch 1, so step 5 of epoch 2
    # as in a foreground terminal (a background job starts with SIGINT ignored: the next test)
    handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    before = signal.signal(sig, handler)
    try:
        with pytest.raises(Interrupted) as e:
            Trainer(TrainConfig(**grow, epochs=3, out=str(out)), step_factory=hit.factory).fit()
        assert e.value.exit_code == code and f"stopped by {signal.Signals(sig).name}" in str(e.value)
        assert hit.calls == at  # stopped at the boundary after the step it was in
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == f"interrupted: {signal.Signals(sig).name}" and summary["steps"] == at
        assert signal.getsignal(sig) is handler  # the handler given back
    finally:
        signal.signal(sig, before)
    train(TrainConfig(**grow, epochs=3, out=str(out)), resume=True)
    assert _records(out) == _records(ref)
    if interval:
        assert (out / "decisions.jsonl").read_text() == (ref / "decisions.jsonl").read_text()
    assert json.loads((out / "summary.json").read_text())["steps"] == json.loads(
        (ref / "summary.json").read_text())["steps"]


@fault(12)
def test_a_signal_ignored_at_start_stays_ignored(tmp_path):
    """A background job starts with SIGINT ignored; training leaves it so: the run is not stopped by it."""
    hit = _SignalAt(at=3, sig=signal.SIGINT)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = Trainer(TrainConfig(**dict(TINY, policy="fixed"), epochs=1, out=str(tmp_path / "r")),
                          step_factory=hit.factory).fit()
        assert summary["status"] == "complete" and hit.calls > 3
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@fault(12)
def test_sigterm_to_the_command_exits_143_with_one_line(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "deba", *_cli_args(out, "--epochs", "30", "--subset", "512")],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "epochs.jsonl").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    line = _one_error_line(err)
    assert proc.returncode == 143 and "stopped by SIGTERM" in line and "--resume" in line
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted: SIGTERM"


# --- 10: deba study killed with SIGKILL takes its runs with it -------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@fault(10)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killed_study_takes_its_training_with_it_and_frees_the_run(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({
        "name": "k", "epochs": 40, "datasets": ["synthetic"], "archs": ["tiny_cnn"], "seeds": [0],
        "common": {"device": "cpu", "graphs": "off", "subset": 256, "start_batch": 32, "checkpoint_every": 1},
        "arms": {"fixed": {"policy": "fixed"}}}))
    out = tmp_path / "out"
    study_proc = subprocess.Popen([sys.executable, "-m", "deba", "study", str(spec), "--out", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    child = None
    while time.time() < deadline and child is None:
        for lock in out.glob("**/.lock"):
            pid = int((lock.read_text().split() or ["0"])[0] or 0)
            if pid and pid != study_proc.pid and list(lock.parent.glob("epochs.jsonl")):
                child, run_dir = pid, lock.parent
        time.sleep(0.1)
    assert child is not None, "the study's deba train never wrote its pid into the lock"
    study_proc.kill()
    study_proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "deba train outlived the study killed with SIGKILL"
    assert RunLock(run_dir).acquire()  # nobody holds the run any more


# --- 9 for real: a stuck rank under torchrun ------------------------------------------------------------
def _rank_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers whose parent is ``parent``."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().split(")")[-1].split()[1])
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and "RANK" in env and "LOCAL_RANK" in env:
            found[int(env["RANK"])] = int(d.name)
    return found


@fault(9)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stopped_rank_ends_the_job_after_dist_timeout(tmp_path):
    out = tmp_path / "ddp"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "deba", *_cli_args(out, "--arch", "tiny_mlp", "--epochs", "500", "--dist-timeout", "5")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    stopped = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "epochs.jsonl").exists():
            time.sleep(0.2)
        ranks = _rank_pids(proc.pid)
        assert 1 in ranks, ranks
        stopped = ranks[1]
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.time()
        while time.time() < t0 + 120 and _alive(ranks[0]):
            time.sleep(0.1)
        waited = time.time() - t0  # rank 0 gave up: not torch's 30 minutes
        os.kill(stopped, signal.SIGKILL)  # torchrun would too, after its own grace period
        _, err = proc.communicate(timeout=120)
    finally:
        if stopped:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and waited < 60
    assert "waited longer than --dist-timeout 5 s" in err and "rank 0 of 2" in err
    assert json.loads((out / "config.json").read_text())["dist_timeout"] == 5
