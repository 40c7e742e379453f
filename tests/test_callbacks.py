"""The trainer's callbacks: a declared interface (deba.training.TrainerCallback), duck typing still accepted."""
from __future__ import annotations

import pytest

from deba.training import TrainConfig, TrainerCallback, train
from deba.training.callbacks import HOOKS, call_hook

TINY = dict(arch="tiny_cnn", dataset="synthetic", device="cpu", quiet=True, start_batch=32, epochs=2, policy="fixed")


def test_a_subclass_and_a_plain_object_both_receive_on_epoch_end_with_the_record():
    class Sub(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, trainer, record):
            self.seen.append((trainer.state.epoch, record))

    class Plain:  # no base class: any object with the hook works
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, trainer, record):
            self.seen.append(record["epoch"])

    sub, plain = Sub(), Plain()
    train(TrainConfig(**TINY), callbacks=[sub, TrainerCallback(), object(), plain])
    assert [(e, r["epoch"]) for e, r in sub.seen] == [(1, 1), (2, 2)]
    assert all("batch_size" in r and "test_acc" in r for _, r in sub.seen)
    assert plain.seen == [1, 2]


def test_call_hook_knows_only_the_declared_hooks():
    assert "on_epoch_end" in HOOKS and callable(TrainerCallback().on_epoch_end)
    with pytest.raises(ValueError, match="unknown trainer hook"):
        call_hook([], "on_epoch_begin")
