"""--precise-bn: BatchNorm statistics recomputed before evaluation, against a NumPy float64 reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deba.errors import DebaError
from deba.training import TrainConfig, train
from deba.training.precise_bn import recompute_batchnorm_stats


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.LazyLinear(2))


def test_statistics_are_the_average_of_the_batches_statistics():
    net = _net()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 6, 6, generator=gen, dtype=torch.float64) * (i + 1) + i for i in range(5)]
    net = net.double()
    net(batches[0])  # materialise the lazy layer
    net.eval()
    params = [p.detach().clone() for p in net.parameters()]
    used = recompute_batchnorm_stats(net, iter(batches), 3)
    assert used == 3
    # reference: conv outputs by NumPy-side arithmetic on the conv's own output, batch statistics in float64
    conv = net[0]
    means, variances = [], []
    for x in batches[:3]:
        h = conv(x).detach().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
        means.append(h.mean(axis=1))
        variances.append(h.var(axis=1, ddof=1))
    bn = net[1]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean(variances, axis=0), rtol=1e-12)
    assert bn.momentum == 0.01 and not net.training  # restored
    assert all(torch.equal(p, q) for p, q in zip(params, net.parameters()))


def test_no_batches_keep_the_old_statistics():
    net = _net()
    net(torch.randn(4, 3, 6, 6))
    before = net[1].running_mean.clone()
    assert recompute_batchnorm_stats(net, iter([]), 3) == 0
    assert torch.equal(net[1].running_mean, before)


TINY = dict(arch="tiny_cnn", dataset="synthetic", device="cpu", quiet=True, start_batch=32, subset=256, epochs=2,
            eval_every=1, policy="fixed")


def _records(out):
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


def test_training_is_unchanged_and_only_the_evaluation_moves(tmp_path):
    train(TrainConfig(**TINY, out=str(tmp_path / "plain")))
    train(TrainConfig(**TINY, precise_bn=4, out=str(tmp_path / "precise")))
    plain, precise = _records(tmp_path / "plain"), _records(tmp_path / "precise")
    # the second epoch trains from the same weights: BatchNorm buffers play no part in a train-mode step
    assert [r["loss"] for r in plain] == [r["loss"] for r in precise]
    assert json.loads((tmp_path / "precise" / "config.json").read_text())["precise_bn"] == 4
    assert [r["test_acc"] for r in plain] != [r["test_acc"] for r in precise] or \
        [r["test_loss"] for r in plain] != [r["test_loss"] for r in precise]


def test_a_resumed_run_evaluates_as_the_uninterrupted_one(tmp_path):
    cfg = dict(TINY, precise_bn=3)
    train(TrainConfig(**dict(cfg, epochs=3), out=str(tmp_path / "full")))
    train(TrainConfig(**dict(cfg, epochs=1), out=str(tmp_path / "part")))
    train(TrainConfig(**dict(cfg, epochs=3), out=str(tmp_path / "part")), resume=True)
    full, part = _records(tmp_path / "full"), _records(tmp_path / "part")
    assert [(r["loss"], r["test_acc"], r["test_loss"]) for r in full] == \
        [(r["loss"], r["test_acc"], r["test_loss"]) for r in part]


def test_a_negative_count_is_refused():
    with pytest.raises(DebaError, match="precise_bn must be an integer >= 0"):
        TrainConfig(**dict(TINY, precise_bn=-1))
