"""A user's own torch.utils.data.Dataset through train(train_dataset=..., test_dataset=...): an ordinary
DataLoader rebuilt per batch size, the seeded per-epoch order, the policy's batch sizes, resume."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deba.data import epoch_permutation
from deba.errors import DebaError
from deba.logio import SCHEMA_VERSION
from deba.training.config import TrainConfig
from deba.training.trainer import train

N = 192
SEED = 4
# DEBA thresholds under which every decision after the first grows: 16, 16, 24, 36
CFG = dict(arch="tiny_mlp", device="cpu", quiet=True, start_batch=16, policy="deba", theta_stab=50.0,
           theta_conf=0.999, cooldown=0, deterministic=True, seed=SEED)
TIMING = {"train_time_s", "eval_time_s", "schema_version"}


def _datasets():
    g = torch.Generator().manual_seed(0)
    # channel 0 of each image is constant and says which sample it is, so the order can be read back
    x = torch.randn(N, 3, 8, 8, generator=g)
    x[:, 0] = torch.arange(N, dtype=torch.float32).view(N, 1, 1)
    y = torch.randint(0, 10, (N,), generator=g)
    test_x = torch.randn(40, 3, 8, 8, generator=g)
    test_y = torch.randint(0, 10, (40,), generator=g)
    return TensorDataset(x, y), TensorDataset(test_x, test_y)


class UserModel(nn.Module):
    """A user's model; records the sample ids of every training batch it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
        self.batches: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.batches.append(x[:, 0, 0, 0].round().long().tolist())
        return self.net(x / 100.0)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strip(records):
    return [{**{k: v for k, v in r.items() if k not in TIMING},
             "events": [e for e in r["events"] if not e.startswith("resumed from checkpoint")]} for r in records]


def _run(out, epochs, resume=False, **kwargs):
    model = UserModel()
    train_ds, test_ds = _datasets()
    summary = train(TrainConfig(**CFG, epochs=epochs, out=str(out)), model=model, train_dataset=train_ds,
                    test_dataset=test_ds, resume=resume, **kwargs)
    return model, summary


def test_user_dataset_trains_in_the_policy_batches_and_seeded_order(tmp_path):
    run = tmp_path / "u"
    model, summary = _run(run, epochs=3)
    config = json.loads((run / "config.json").read_text())
    epochs = _jsonl(run / "epochs.jsonl")
    saved = json.loads((run / "summary.json").read_text())
    assert config["schema_version"] == SCHEMA_VERSION and saved == {**summary, "schema_version": SCHEMA_VERSION}
    assert saved["dataset"] == "user:TensorDataset" and saved["status"] == "complete"
    assert [e["batch_size"] for e in epochs] == [16, 16, 24]
    assert [e["next_batch_size"] for e in epochs] == [16, 24, 36]
    assert [e["steps"] for e in epochs] == [N // 16, N // 16, N // 24]
    assert all(0.0 <= e["test_acc"] <= 100.0 and e["test_loss"] > 0 for e in epochs)
    # the batches the model saw: each epoch's seeded permutation, cut at that epoch's batch size
    seen = iter(model.batches)
    for epoch, e in enumerate(epochs, 1):
        order = epoch_permutation(N, SEED, epoch).tolist()
        b = e["batch_size"]
        expected = [order[i:i + b] for i in range(0, e["steps"] * b, b)]
        assert [next(seen) for _ in expected] == expected, epoch
    assert next(seen, None) is None


def test_user_dataset_resume_equals_uninterrupted(tmp_path):
    _, full = _run(tmp_path / "full", epochs=4)
    part = tmp_path / "part"
    _run(part, epochs=2)
    _, resumed = _run(part, epochs=4, resume=True)
    assert _strip(_jsonl(part / "epochs.jsonl")) == _strip(_jsonl(tmp_path / "full" / "epochs.jsonl"))
    assert resumed["batch_sizes"] == full["batch_sizes"] == [16, 16, 24, 36]
    assert resumed["final_test_acc"] == full["final_test_acc"]


def test_model_by_name_needs_num_classes_and_test_set_is_optional(tmp_path):
    train_ds, _ = _datasets()
    cfg = TrainConfig(**{**CFG, "policy": "fixed"}, epochs=1, out=str(tmp_path / "n"))
    with pytest.raises(DebaError, match="num_classes"):
        train(cfg, train_dataset=train_ds)
    summary = train(cfg, train_dataset=train_ds, num_classes=10)
    assert summary["final_test_acc"] is None and summary["status"] == "complete"
    assert _jsonl(tmp_path / "n" / "epochs.jsonl")[0]["test_acc"] is None


def test_user_dataset_bad_combinations(tmp_path):
    from deba.data import make_synthetic

    train_ds, test_ds = _datasets()
    cfg = TrainConfig(**CFG, epochs=1)
    with pytest.raises(DebaError, match="either dataset= .* or train_dataset="):
        train(cfg, dataset=make_synthetic(n_train=64, n_test=16, image_size=8), train_dataset=train_ds)
    with pytest.raises(DebaError, match="test_dataset needs train_dataset"):
        train(cfg, test_dataset=test_ds)
    with pytest.raises(DebaError, match="batch_size"):
        train(cfg, train_dataset=train_ds, num_classes=10, dataloader_kwargs={"batch_size": 8})
