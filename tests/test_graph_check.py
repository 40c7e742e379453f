"""`deba bench --check` (deba.graph_check) on the CPU, with the graph step's capture replaced by a fake graph
whose replay runs the captured function: a correct graph step passes, and the failures a graph step is prone
to (a learning rate baked into the graph, dropout masks that repeat at every replay) are caught."""
import pytest
import torch
from torch import nn

from deba import graph_check
from deba.training.step import EagerStep, GraphStep

torch.set_num_threads(1)


class _FakeGraph:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def _fake_capture(self, x, y):
    return {"graph": _FakeGraph(lambda: self._captured_step(x, y)), "x": x, "y": y}


@pytest.fixture
def fake_graphs(monkeypatch):
    monkeypatch.setattr(GraphStep, "_capture", _fake_capture)


def dropout_cnn(num_classes=10):
    """BatchNorm, an in-place Dropout2d inside, an in-place Dropout before the classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout2d(0.05, inplace=True),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(128, 64), nn.Dropout(0.2, inplace=True), nn.ReLU(), nn.Linear(64, num_classes),
    )


@pytest.fixture
def with_dropout(monkeypatch):
    monkeypatch.setattr(graph_check, "build_model", lambda name, n, size=32: dropout_cnn(n))


def _dropout_check(**kwargs):
    result = graph_check.check_graph_numerics(["tiny_cnn"], device="cpu", batch_sizes=[8, 16], steps=2,
                                              dropout=["on"], **kwargs)
    (check,) = result["checks"]
    assert check["dropout"] == "on" and check["error"] is None and check["skipped"] is None
    return result, check


def test_bench_check_passes_for_a_correct_graph_step(fake_graphs):
    bench = graph_check

    result = bench.check_graph_numerics(["tiny_cnn"], device="cpu", batch_sizes=[8, 16], steps=2)
    assert result["ok"] and [(c["dropout"], c["signals_mode"]) for c in result["checks"]] == [
        ("off", "last"), ("off", "epoch-avg"), ("on", "last")]
    assert result["checks"][2]["skipped"].startswith("no dropout")  # tiny_cnn has none: nothing more to compare
    for c in result["checks"][:2]:
        assert c["graph_step_mode"] == "graph" and c["error"] is None
        assert [(p["batch_size"], p["lr"]) for p in c["phases"]] == [(8, 0.01), (16, 0.02), (8, 0.05)]
        assert set(c["max_rel"]) == {"loss", "grad_var", "grad_norm", "params", "buffers"}
        assert all(0 <= v < 1e-5 for v in c["max_rel"].values()), c["max_rel"]
    assert "| tiny_cnn | epoch-avg |" in bench.check_markdown(result)


def test_bench_check_catches_a_learning_rate_baked_into_the_graph(fake_graphs, monkeypatch):
    """The failure a graph step is most prone to: the update keeps the learning rate it was captured with."""
    bench = graph_check

    monkeypatch.setattr(GraphStep, "set_lr", EagerStep.set_lr)  # the Python lr changes, the lr tensor does not
    result = bench.check_graph_numerics(["tiny_cnn"], device="cpu", batch_sizes=[8, 16], steps=2,
                                        signals_modes=["last"], dropout=["off"])
    (check,) = result["checks"]
    assert not result["ok"] and not check["ok"] and check["error"] is None
    assert check["max_rel"]["params"] > 1e-3
    assert check["worst_step"]["loss"] >= 2  # the first phase (captured lr) agrees; the later ones do not


def test_bench_check_records_a_capture_that_cannot_work():
    bench = graph_check

    result = bench.check_graph_numerics(["tiny_mlp"], device="cpu", batch_sizes=[8], steps=1, signals_modes=["last"],
                                        dropout=["off"])
    (check,) = result["checks"]
    assert not result["ok"] and check["error"].startswith("DebaError: CUDA graphs: capturing the step")
    assert "\n" not in check["error"]


# --- dropout on ------------------------------------------------------------------------------------------
def test_dropout_on_with_the_masks_eager_draws_agrees_number_for_number(fake_graphs, with_dropout):
    result, check = _dropout_check()
    assert result["ok"] and check["ok"] and check["graph_step_mode"] == "graph"
    assert check["comparison"] == "same masks"
    masks = check["masks"]
    assert masks["layers"] == 2 and masks["p"] == [0.05, 0.2]
    assert masks["same_as_eager_steps"] == masks["steps"] == 6  # phases 8, 16, 8 of 2 steps
    assert masks["replays_compared"] == 4 and masks["repeated"] == 0 and masks["worst_rate_z"] < 6
    assert all(v <= 1e-5 for v in check["max_rel"].values()), check["max_rel"]
    # the eager runs with other masks do differ: dropout was on
    assert check["eager_spread"]["params"] > 1e-2 and check["eager_spread"]["loss"] > 1e-4
    md = graph_check.check_markdown(result)
    assert "| tiny_cnn | same masks (6/6 steps) |" in md and "All passed: yes" in md


def _draws_after_warm_up(monkeypatch):
    """A step whose graph does not draw what eager draws (the warm-up's draws left in the stream)."""
    import contextlib

    monkeypatch.setattr(torch.random, "fork_rng", lambda *a, **k: contextlib.nullcontext())


def test_dropout_on_with_other_masks_tracks_eager(fake_graphs, with_dropout, monkeypatch):
    _draws_after_warm_up(monkeypatch)
    result, check = _dropout_check()
    assert check["comparison"] == "other masks" and check["masks"]["same_as_eager_steps"] < 6
    assert check["ok"] and check["masks"]["repeated"] == 0
    assert check["max_rel"]["params"] > 1e-3  # not number for number, yet within the spread of eager runs
    for k, v in check["tracking"].items():
        assert v <= graph_check.TRACK_FACTOR * check["eager_spread"][k], k
    assert "| tiny_cnn | other masks (" in graph_check.check_markdown(result)


def test_dropout_on_catches_masks_that_repeat_at_every_replay(monkeypatch, with_dropout):
    """A graph whose random kernels replay with the offset they were captured with: the same masks each step."""

    def frozen_rng_capture(self, x, y):
        def replay():
            with torch.random.fork_rng():
                torch.manual_seed(1234)
                self._captured_step(x, y)

        return {"graph": _FakeGraph(replay), "x": x, "y": y}

    monkeypatch.setattr(GraphStep, "_capture", frozen_rng_capture)
    result, check = _dropout_check()
    assert not result["ok"] and not check["ok"]
    assert check["masks"]["repeated"] == check["masks"]["replays_compared"] == 4


def test_dropout_on_catches_a_learning_rate_baked_into_the_graph(fake_graphs, with_dropout, monkeypatch):
    monkeypatch.setattr(GraphStep, "set_lr", EagerStep.set_lr)
    result, check = _dropout_check()
    assert check["comparison"] == "same masks" and check["masks"]["repeated"] == 0
    assert not check["ok"] and check["max_rel"]["params"] > 1e-3


def test_dropout_on_catches_a_graph_without_dropout(fake_graphs, with_dropout, monkeypatch):
    """Dropout switched off in the captured step (a model captured in eval mode, say): drop rate 0."""
    real = GraphStep._captured_step

    def no_dropout(self, x, y):
        layers = [m for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        for m in layers:
            m.train(False)
        try:
            real(self, x, y)
        finally:
            for m in layers:
                m.train(True)

    monkeypatch.setattr(GraphStep, "_captured_step", no_dropout)
    result, check = _dropout_check()
    assert not check["ok"] and check["masks"]["mean_drop_rate"] == 0.0 and check["masks"]["worst_rate_z"] > 6


def test_a_check_that_cannot_run_is_recorded_and_the_others_go_on(fake_graphs, monkeypatch):
    real = graph_check.build_model

    def build(name, n, size=32):
        if name == "tiny_mlp":
            raise RuntimeError("this model cannot be built here\nsecond line")
        return real(name, n, size)

    monkeypatch.setattr(graph_check, "build_model", build)
    result = graph_check.check_graph_numerics(["tiny_mlp", "tiny_cnn"], device="cpu", batch_sizes=[8], steps=1,
                                              signals_modes=["last"], dropout=["off"])
    first, second = result["checks"]
    assert first["error"] == "RuntimeError: this model cannot be built here" and not first["ok"]
    assert second["ok"] and not result["ok"]
