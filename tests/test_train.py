"""End-to-end `deba train` on generated data: outputs, schema, policies, CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deba.cli import main
from deba.errors import DebaError
from deba.logio import SCHEMA_VERSION
from deba.training.config import TrainConfig
from deba.training.trainer import train

EPOCH_KEYS = {"schema_version", "epoch", "batch_size", "steps", "train_time_s", "eval_time_s", "loss", "grad_var",
              "grad_norm", "dnorm", "dloss", "conf", "decision", "next_batch_size", "test_acc", "reason", "lr"}
SUMMARY_KEYS = {"schema_version", "final_test_acc", "best_test_acc", "best_epoch", "train_time_s", "increases",
                "rollbacks", "batch_sizes", "torch_version", "device_name", "status", "concurrent_runs"}

TINY = dict(arch="tiny_cnn", dataset="synthetic", device="cpu", quiet=True, start_batch=32)


def _read(run):
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    return json.loads((run / "config.json").read_text()), epochs, json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("policy", ["fixed", "deba"])
def test_train_writes_three_files_with_schema(tmp_path, policy):
    extra = {"theta_stab": 5.0, "theta_conf": 0.9, "cooldown": 0} if policy == "deba" else {}
    cfg = TrainConfig(**TINY, epochs=3, policy=policy, out=str(tmp_path / "run"), **extra)
    summary = train(cfg)
    config, epochs, saved = _read(tmp_path / "run")
    assert config["schema_version"] == SCHEMA_VERSION and config["policy"] == policy
    assert TrainConfig.from_dict(config).to_dict() == cfg.to_dict()  # config.json reruns the same run
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for e in epochs:
        assert EPOCH_KEYS <= set(e), EPOCH_KEYS - set(e)
        assert 0.0 <= e["test_acc"] <= 100.0
    assert SUMMARY_KEYS <= set(saved)
    assert saved["status"] == "complete" and saved == {**summary, "schema_version": SCHEMA_VERSION}
    assert saved["batch_sizes"] == [e["batch_size"] for e in epochs]
    assert saved["final_test_acc"] == epochs[-1]["test_acc"]
    assert epochs[0]["dnorm"] is None and epochs[0]["conf"] is None  # undefined at epoch 1
    if policy == "fixed":
        assert {e["batch_size"] for e in epochs} == {32}
    else:  # thresholds chosen so that every decision point grows: 32 -> 48 -> 72
        assert [e["batch_size"] for e in epochs] == [32, 32, 48]
        assert saved["increases"] == 2


def test_steps_per_epoch_follow_batch_size(tmp_path):
    cfg = TrainConfig(**TINY, epochs=3, policy="deba", theta_stab=5.0, theta_conf=0.9, cooldown=0,
                      out=str(tmp_path / "r"))
    train(cfg)
    _, epochs, _ = _read(tmp_path / "r")
    from deba.data import load_dataset

    n = load_dataset("synthetic").train_x.shape[0]
    assert [e["steps"] for e in epochs] == [n // e["batch_size"] for e in epochs]


def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--epochs", "1",
               "--policy", "fixed", "--quiet", "--out", str(out)])
    assert rc == 0 and (out / "summary.json").exists()

    def err(args):
        rc = main(args)
        e = capsys.readouterr().err.strip()
        assert rc == 2, e
        assert len(e.splitlines()) == 1 and "Traceback" not in e
        return e

    assert "resnet18" in err(["train", "--arch", "no_such_net", "--dataset", "synthetic", "--epochs", "1", "--quiet"])
    assert "--data" in err(["train", "--dataset", "cifar10", "--data", str(tmp_path / "missing"), "--epochs", "1"])
    assert "100000" in err(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--start-batch", "100000",
                                 "--epochs", "1", "--quiet"])
    assert "policy" in err(["train", "--policy", "bogus"])
    assert "--b-min (128)" in err(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--b-min", "128", "--b-max", "64",
                           "--epochs", "1", "--quiet", "--theta-stab", "1", "--theta-conf", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nno_such_key: 1\n")
    assert "no_such_key" in err(["train", "--config", str(bad)])


def test_config_file_and_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("arch: tiny_cnn\ndataset: synthetic\ndevice: cpu\nepochs: 5\npolicy: fixed\nquiet: true\n")
    out = tmp_path / "o"
    assert main(["train", "--config", str(cfg_file), "--epochs", "1", "--out", str(out)]) == 0
    config, epochs, _ = _read(out)
    assert config["epochs"] == 1 and config["arch"] == "tiny_cnn" and len(epochs) == 1


def test_unknown_arch_for_preset_needs_thresholds(tmp_path, capsys):
    rc = main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--policy", "deba", "--epochs", "1",
               "--quiet", "--device", "cpu"])
    assert rc == 2 and "theta" in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "deba", "train", "--arch", "tiny_cnn", "--dataset", "synthetic",
                        "--epochs", "1", "--policy", "fixed", "--device", "cpu", "--quiet", "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_no_host_read_per_step(tmp_path, monkeypatch):
    """The loop reads device values once per epoch (signals) plus once per evaluation, never per step."""
    import torch

    cfg = TrainConfig(**TINY, epochs=2, policy="deba", theta_stab=5.0, theta_conf=0.9, cooldown=0,
                      out=str(tmp_path / "s"), checkpoint_every=0)
    from deba.training.trainer import Trainer

    trainer = Trainer(cfg)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    trainer.fit()
    steps = sum(r["steps"] for r in trainer.state.records)
    assert steps > 50
    # per epoch: one signal read, one evaluation read, one non-finite check of parameters, gradients and
    # buffers (deba.training.safety); and one last check of the model before the run may end complete
    assert len(reads) <= 3 * cfg.epochs + 1, reads


def test_tensorboard_logs_per_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    train(TrainConfig(**TINY, epochs=2, policy="fixed", out=str(tmp_path / "r"), tensorboard=str(tb)))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"batch_size", "loss", "grad_var", "test_acc"} <= tags
    assert [e.step for e in acc.Scalars("batch_size")] == [1, 2]
    assert [e.value for e in acc.Scalars("batch_size")] == [32, 32]


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_train_on_generated_cifar_format_folder(tmp_path, name, classes):
    """The standard python-format folders (cifar-10-batches-py / cifar-100-python), generated here."""
    from deba.data import write_cifar_fixture

    root = tmp_path / "data"
    write_cifar_fixture(root, name, n_train=300, n_test=100, seed=1)
    out = tmp_path / "run"
    rc = main(["train", "--arch", "tiny_cnn", "--dataset", name, "--data", str(root), "--device", "cpu",
               "--epochs", "2", "--policy", "fixed", "--start-batch", "50", "--quiet", "--out", str(out)])
    assert rc == 0
    config, epochs, summary = _read(out)
    assert [e["steps"] for e in epochs] == [6, 6] and summary["status"] == "complete"
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=False)
    classifier = [v for v in state["model"].values() if v.dim() == 2][-1]  # the last Linear layer
    assert classifier.shape[0] == classes


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("arch: tiny_cnn\nlr: 1e-3\nweight_decay: 5e-4\nepochs: 1\n")
    from deba.training.config import TrainConfig

    cfg = TrainConfig.from_file(cfg_file)
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-4
    cfg_file.write_text("lr: fast\n")
    from deba.errors import DebaError

    with pytest.raises(DebaError, match="lr must be a number"):
        TrainConfig.from_file(cfg_file)


@pytest.mark.parametrize("policy, extra, unused", [
    ("fixed", {}, []),
    ("deba", {"theta_stab": 5.0, "cooldown": 0}, []),
    ("fixed", {"theta_stab": 5.0, "cooldown": 0, "preset": "paper", "b_max": 128}, ["preset", "theta_stab", "cooldown", "b_max"]),
    ("fixed", {"cooldown": 10}, ["cooldown"]),  # a value equal to a preset's still counts: it was set
    ("step-grow", {"milestones": [2], "b_max": 128, "thresholds": "t.json"}, ["thresholds"]),
    ("deba", {"milestones": [2]}, ["milestones"]),
    ("fixed", {"var_scaling": "batch"}, ["var_scaling"]),
])
def test_options_the_policy_does_not_read_are_named(policy, extra, unused):
    assert TrainConfig(**TINY, policy=policy, **extra).unused_options() == unused


def test_ignored_options_are_an_event_of_the_run(tmp_path):
    train(TrainConfig(**TINY, epochs=1, policy="fixed", theta_conf=0.5, out=str(tmp_path / "r")))
    _, epochs, _ = _read(tmp_path / "r")
    assert "policy fixed does not use theta_conf: ignored" in epochs[0]["events"]
    assert epochs[0]["batch_size"] == 32


def test_var_scaling_reaches_the_policy():
    from deba.training.build import build_policy

    cfg = TrainConfig(**TINY, policy="deba", theta_stab=0.5, theta_conf=0.6, var_scaling="batch")
    assert build_policy(cfg, None, 1000).config.var_scaling == "batch"
    assert build_policy(TrainConfig(**TINY, policy="deba", theta_stab=0.5, theta_conf=0.6), None,
                        1000).config.var_scaling == "none"
    with pytest.raises(DebaError, match="var_scaling must be one of"):
        TrainConfig(**TINY, var_scaling="sqrt")
