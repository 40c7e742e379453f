"""--accumulate: past device memory by gradient accumulation. The out-of-memory error is injected at the
model's forward (above a number of samples, as a GPU would raise it), so it depends on the micro-batch the
step actually runs. Reference: the same run without a memory limit."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deba.data import make_synthetic
from deba.errors import DebaError
from deba.models import tiny_mlp
from deba.training.config import TrainConfig
from deba.training.trainer import OOM_ERRORS, Trainer, train

# tiny_mlp has no BatchNorm: accumulation is numerically the full-batch update.
# Thresholds that grow at every decision after the first: 32, 32, 48, 72, 108.
GROW = dict(arch="tiny_mlp", device="cpu", quiet=True, start_batch=32, policy="deba", theta_stab=50.0,
            theta_conf=0.999, cooldown=0, deterministic=True, seed=1)
TIMING = {"train_time_s", "eval_time_s", "schema_version"}
EPOCHS = 5


def _data():
    return make_synthetic(n_train=512, n_test=64, image_size=8, seed=3)


class MemoryLimited(nn.Module):
    """tiny_mlp whose training forward raises torch's out-of-memory error above ``limit`` samples."""

    def __init__(self, limit: int):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every run
        self.net = tiny_mlp(10)
        self.limit = limit
        self.train_batches: list[int] = []  # sizes of the training forwards that ran
        self.ooms = 0

    def forward(self, x):
        if self.training:
            if x.shape[0] > self.limit:
                self.ooms += 1
                raise OOM_ERRORS[0]("CUDA out of memory (injected)")
            self.train_batches.append(int(x.shape[0]))
        return self.net(x)


def _records(run):
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


def _strip(records):
    """Records without timings and without the note a resume leaves."""
    return [{**{k: v for k, v in r.items() if k not in TIMING},
             "events": [e for e in r["events"] if not e.startswith("resumed from checkpoint")]} for r in records]


def _run(out, limit, epochs=EPOCHS, resume=False, **overrides):
    model = MemoryLimited(limit)
    summary = train(TrainConfig(**{**GROW, **overrides}, epochs=epochs, out=str(out)), model=model, dataset=_data(),
                    resume=resume)
    return model, summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc")
    ref_model, ref_summary = _run(root / "ref", limit=10**9)
    acc_model, acc_summary = _run(root / "acc", limit=40, accumulate=True)
    return root, (ref_model, ref_summary), (acc_model, acc_summary)


def test_accumulation_keeps_the_policy_batch_and_the_update(runs):
    root, (ref_model, ref_summary), (acc_model, acc_summary) = runs
    ref, acc = _records(root / "ref"), _records(root / "acc")
    # the policy saw the same batches: same sizes, decisions and steps, no cap
    assert [r["batch_size"] for r in ref] == [32, 32, 48, 72, 108]
    for key in ("batch_size", "decision", "next_batch_size", "steps", "samples"):
        assert [r[key] for r in acc] == [r[key] for r in ref], key
    assert acc_summary["b_max_cap"] is None and acc_summary["status"] == "complete"
    # every forward that ran fitted; the failed attempt ran none, so the same samples were trained on
    assert max(acc_model.train_batches) <= 40 and acc_model.ooms == 1
    assert sum(acc_model.train_batches) == sum(ref_model.train_batches) == sum(r["samples"] for r in ref)
    n = 512
    assert acc_model.train_batches[-(n // 108) * 5:] == [24, 24, 24, 24, 12] * (n // 108)  # 108 = 4 x 24 + 12
    # one change, logged where it happened, remembered in the records, the summary and the checkpoint
    assert [r["micro_batch"] for r in acc] == [None, None, 24, 24, 24]
    assert acc[2]["events"] == ["micro-batch set to 24 after out of memory at batch size 48"]
    assert all(not r["events"] for i, r in enumerate(acc) if i != 2)
    assert acc_summary["micro_batch"] == 24
    ckpt = torch.load(root / "acc" / "checkpoint.pt", weights_only=False)
    assert ckpt["run"]["micro_batch"] == 24
    # numerically the same update: losses, signals and weights agree
    for a, r in zip(acc, ref):
        for key in ("loss", "grad_var", "grad_norm"):
            assert a[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), (r["epoch"], key)
    for pa, pr in zip(acc_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(pa, pr, rtol=1e-5, atol=1e-5)


def test_micro_batch_is_remembered_across_a_resume(runs, tmp_path):
    root = runs[0]
    part = tmp_path / "part"
    first, _ = _run(part, limit=40, epochs=3, accumulate=True)
    assert first.ooms == 1
    resumed, summary = _run(part, limit=40, epochs=EPOCHS, resume=True, accumulate=True)
    assert resumed.ooms == 0  # the restored micro-batch fits from the first step on
    assert max(resumed.train_batches) <= 40 and summary["micro_batch"] == 24
    assert _strip(_records(part)) == _strip(_records(root / "acc"))


@pytest.mark.parametrize("limit, micro_batch, events", [
    (10, None, ["micro-batch set to 16 after out of memory at batch size 32",
                "micro-batch set to 8 after out of memory at batch size 32"]),
    (20, 30, ["micro-batch set to 15 after out of memory at batch size 32"]),  # halved from the user's 30
])
def test_halving_until_a_step_fits(tmp_path, limit, micro_batch, events):
    model, summary = _run(tmp_path / "h", limit=limit, epochs=3, accumulate=True, micro_batch=micro_batch)
    recs = _records(tmp_path / "h")
    assert [e["event"] for e in summary["events"]] == events
    assert model.ooms == len(events) and max(model.train_batches) <= limit
    assert [r["batch_size"] for r in recs] == [32, 32, 48] and summary["b_max_cap"] is None
    assert summary["micro_batch"] == int(events[-1].split()[3])


def test_without_accumulate_the_batch_is_capped(tmp_path):
    model, summary = _run(tmp_path / "c", limit=40, epochs=4)
    assert summary["b_max_cap"] == 32 and summary["micro_batch"] is None
    assert [r["batch_size"] for r in _records(tmp_path / "c")] == [32, 32, 32, 32]
    assert "B_max capped at 32" in summary["events"][0]["event"]


def test_out_of_memory_at_micro_batch_one_is_an_error(tmp_path):
    cfg = TrainConfig(**GROW, epochs=1, accumulate=True, out=str(tmp_path / "e"))
    trainer = Trainer(cfg, model=MemoryLimited(0), dataset=_data())
    with pytest.raises(DebaError, match="micro-batches of 1 sample"):
        trainer.fit()
    assert [e["event"].split()[3] for e in trainer.state.events] == ["16", "8", "4", "2", "1"]


def test_accumulate_option_validated_and_on_the_command_line():
    from deba.cli import build_parser

    with pytest.raises(DebaError, match="accumulate"):
        TrainConfig(accumulate="yes")
    args = build_parser().parse_args(["train", "--accumulate", "--micro-batch", "8"])
    from deba.commands.train import config_from_args

    cfg = config_from_args(args)
    assert cfg.accumulate is True and cfg.micro_batch == 8
