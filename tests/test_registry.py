"""deba.policy.registry: one list of policies read by the config, the CLI, the study and build_policy;
the cooldown scaled to short runs (issue 11, item 4); b_min > b_max refused everywhere (item 8)."""
from __future__ import annotations

import json

import pytest

from deba.cli import main
from deba.errors import DebaError
from deba.policy import BatchSizePolicy, DecisionRecord, EpochSignals, StepGrowPolicy, make_deba
from deba.policy.presets import scaled_cooldown
from deba.policy.registry import POLICIES, PolicySpec, build_policy, get_policy, register_policy
from deba.training.build import build_policy as build_from_config
from deba.training.config import TrainConfig

OPTIONS = {"start_batch": 32, "b_min": 8, "b_max": 256, "window": 5, "milestones": [2], "theta_stab": 0.5,
           "theta_conf": 0.6, "grow_factor": 2.0}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_registered_policy_builds_steps_and_round_trips(name):
    spec = get_policy(name)
    policy = build_policy(name, {k: v for k, v in OPTIONS.items() if k in spec.options}, "resnet18")
    assert isinstance(policy, spec.cls) and policy.name == name and policy.batch_size == 32
    for epoch, (var, norm, loss) in enumerate([(1.0, 2.0, 3.0), (1.1, 2.1, 2.9), (0.9, 2.0, 2.8)], 1):
        policy.step(EpochSignals(epoch, var, norm, loss))
    state = json.loads(json.dumps(policy.state_dict()))
    again = build_policy(name, {k: v for k, v in OPTIONS.items() if k in spec.options}, "resnet18")
    again.load_state_dict(state)
    assert again.state_dict() == state


class Halving(BatchSizePolicy):
    name = "halving-test"

    def step(self, signals):
        s = signals if isinstance(signals, EpochSignals) else EpochSignals.from_mapping(signals)
        b, nxt = self._batch_size, max(self.b_min, self._batch_size // 2)
        self.last_epoch, self._batch_size = s.epoch, nxt
        return DecisionRecord(s.epoch, b, s.grad_var, s.grad_norm, s.loss, None, None, None,
                              "rollback" if nxt < b else "hold", False, False, "halve", nxt)


def test_a_new_policy_is_one_register_call_and_every_reader_sees_it():
    import argparse

    from deba.commands import train as train_cmd

    spec = register_policy(PolicySpec("halving-test", Halving, "halve every period (a test policy)",
                                      options=("start_batch", "b_min"),
                                      build=lambda o, arch: Halving(o["start_batch"], o["b_min"])))
    try:
        config = TrainConfig(policy="halving-test", start_batch=64, b_min=8, theta_conf=0.5)
        assert config.unused_options() == ["theta_conf"]
        policy = build_from_config(config, "tiny_cnn", 1000)
        assert isinstance(policy, Halving) and policy.b_min == 8
        parser = argparse.ArgumentParser()
        train_cmd.add_train_options(parser)
        assert "halving-test (halve every period" in " ".join(parser.format_help().split())
        with pytest.raises(ValueError, match="taken by Halving"):
            register_policy(PolicySpec("halving-test", StepGrowPolicy, "", (), lambda o, a: None))
        assert register_policy(spec) is spec  # the same class again: a re-import, accepted
    finally:
        POLICIES.pop("halving-test", None)


def test_unknown_policy_and_missing_requirements_are_one_line():
    with pytest.raises(DebaError, match="policy must be one of fixed, deba, step-grow"):
        TrainConfig(policy="nope")
    with pytest.raises(DebaError, match="policy step-grow needs milestones"):
        TrainConfig(policy="step-grow")
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        build_policy("nope", {})


# --- item 4: the cooldown of a short run ---------------------------------------------------------------

@pytest.mark.parametrize("epochs,expected", [(100, 10), (30, 3), (14, 2), (10, 1), (5, 1), (1, 1), (250, 25)])
def test_cooldown_scaled_as_c_times_epochs_over_100_rounded_up_at_least_1(epochs, expected):
    assert scaled_cooldown(10, epochs) == expected
    policy = make_deba("paper-bounded", arch="resnet18", epochs=epochs)
    assert policy.config.cooldown == expected
    assert bool(policy.notes) == (expected != 10)
    if policy.notes:
        assert f"cooldown {expected}" in policy.notes[0] and f"{epochs}-epoch run" in policy.notes[0]


def test_explicit_cooldown_stands_and_zero_stays_zero():
    assert make_deba("paper", arch="resnet18", epochs=14, cooldown=5).config.cooldown == 5
    assert scaled_cooldown(0, 14) == 0 and scaled_cooldown(5, 30) == 2 and scaled_cooldown(2, 30) == 1


def test_short_run_decisions_with_the_scaled_cooldown():
    # 14 epochs: cooldown 2. Thresholds that grow at every chance: epoch 1 holds, 2 grows, 3-4 cool down,
    # 5 grows, ... (the paper's 10 would hold from epoch 3 to the end)
    policy = make_deba("paper-bounded", theta_stab=1e9, theta_conf=0.9, window=1, epochs=14)
    decisions = [policy.step(EpochSignals(e, 1.0, 1.0, 1.0)).decision for e in range(1, 15)]
    grew = [e for e, d in zip(range(1, 15), decisions) if d == "increase"]
    assert grew == [2, 5, 8, 11, 14]


def test_deba_train_scales_the_cooldown_records_it_and_says_so(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--subset", "256", "--device", "cpu",
                 "--epochs", "2", "--policy", "deba", "--theta-stab", "0.5", "--theta-conf", "0.6", "--quiet",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    notes = [e["event"] for e in summary["events"] if "cooldown" in e["event"]]
    assert notes and notes[0].startswith("cooldown 1: the preset's 10 epochs") and "2-epoch run" in notes[0]
    import torch

    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert _cooldown_in(state) == 1  # the policy's saved settings hold the value used


def _cooldown_in(obj):
    if isinstance(obj, dict):
        if "cooldown" in obj and isinstance(obj["cooldown"], int) and "theta_stab" in obj:
            return obj["cooldown"]
        for v in obj.values():
            found = _cooldown_in(v)
            if found is not None:
                return found
    return None


def test_config_cooldown_given_is_not_scaled():
    policy = build_from_config(TrainConfig(epochs=14, cooldown=10, theta_stab=0.5, theta_conf=0.6), "resnet18", 5000)
    assert policy.config.cooldown == 10 and policy.notes == []
    interval = TrainConfig(epochs=14, decision_interval=5, theta_stab=0.5, theta_conf=0.6)
    assert build_from_config(interval, "resnet18", 5000).config.cooldown == 10  # periods, not epochs


# --- item 8: b_min > b_max -----------------------------------------------------------------------------

def test_b_min_above_b_max_is_refused_in_every_python_entry_point():
    with pytest.raises(ValueError, match=r"^b_min \(64\) must not exceed b_max \(32\)$"):
        make_deba("paper", arch="resnet18", b_min=64, b_max=32, start_batch=48)
    with pytest.raises(ValueError, match=r"b_min \(64\) must not exceed b_max \(32\)"):
        StepGrowPolicy([2], b_min=64, b_max=32)
    with pytest.raises(DebaError, match=r"^b_min \(64\) must not exceed b_max \(32\)$"):
        TrainConfig(b_min=64, b_max=32)
    with pytest.raises(DebaError, match=r"b_min 600 exceeds the training set \(500 images\)"):
        build_from_config(TrainConfig(b_min=600, b_max=4096, start_batch=64, theta_stab=0.5, theta_conf=0.6),
                          "resnet18", 500)


@pytest.mark.parametrize("command", ["train", "replay"])
def test_b_min_above_b_max_is_one_line_exit_2_on_the_command_line(command, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "grad_var": 1.0, "grad_norm": 1.0, "loss": 1.0}) + "\n"
                           for e in (1, 2, 3)))
    args = {"train": ["train", "--arch", "tiny_cnn", "--dataset", "synthetic", "--device", "cpu", "--epochs", "1",
                      "--quiet", "--theta-stab", "0.5", "--theta-conf", "0.6"],
            "replay": ["replay", str(log), "--arch", "resnet18"]}[command]
    assert main([*args, "--b-min", "100", "--b-max", "50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"deba {command}: error: --b-min (100) must not exceed --b-max (50)"]
