"""The training step on CPU. The CUDA-graph step is exercised with its capture replaced by a fake graph
whose replay runs the captured function, so everything around the capture (static buffers, warm-up
that changes nothing, gradients zeroed in place, the functional SGD update with a tensor learning rate,
the cache by shape, fallback and OOM handling, state round trips) is tested without a GPU."""
import contextlib
import copy
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deba.errors import DebaError
from deba.models import build_model
from deba.signals import GradientSignals
from deba.training import step as step_mod
from deba.training.step import OOM_ERROR, EagerStep, GraphStep, make_step, sgd_update

torch.set_num_threads(1)
LR, MOM, WD = 0.05, 0.9, 5e-4


def _data(n, seed=0, dtype=torch.float32, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def _model(name, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return build_model(name, num_classes=10).to(dtype)


class _FakeGraph:
    def __init__(self, fn):
        self.fn = fn
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.fn()


def _fake_capture(self, x, y):
    return {"graph": _FakeGraph(lambda: self._captured_step(x, y)), "x": x, "y": y}


@pytest.fixture
def fake_graphs(monkeypatch):
    monkeypatch.setattr(GraphStep, "_capture", _fake_capture)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# --- eager step against a hand-written float64 reference --------------------------------------------
def test_eager_step_matches_hand_written_sgd():
    model = _model("tiny_mlp")
    reference = copy.deepcopy(model)
    step = make_step(model, lr=LR, momentum=MOM, weight_decay=WD, mode="eager")
    assert step.mode == "eager" and step.lr == LR
    ref_params = [p.detach().numpy().copy() for p in reference.parameters()]
    bufs = [None] * len(ref_params)
    lrs = [LR, LR, 0.2]  # the third step runs at a new learning rate
    for i, lr in enumerate(lrs):
        x, y = _data(16, seed=i, dtype=torch.float64)
        step.set_lr(lr)
        assert step.lr == lr
        step(x, y)
        # reference: gradient by autograd at the reference parameters, update by hand in NumPy
        with torch.no_grad():
            for p, v in zip(reference.parameters(), ref_params):
                p.copy_(torch.from_numpy(v))
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(x), y).backward()
        for j, p in enumerate(reference.parameters()):
            d_p = p.grad.numpy() + WD * ref_params[j]
            bufs[j] = d_p.copy() if bufs[j] is None else MOM * bufs[j] + d_p
            ref_params[j] = ref_params[j] - lr * bufs[j]
        for p, v in zip(model.parameters(), ref_params):
            np.testing.assert_allclose(p.detach().numpy(), v, rtol=1e-12, atol=1e-14)


def test_set_lr_takes_effect():
    x, y = _data(8)
    runs = {}
    for lr in (0.01, 0.1):
        model = _model("tiny_mlp", dtype=torch.float32)
        before = _params(model)
        step = make_step(model, lr=0.01, momentum=0.0, weight_decay=0.0, mode="eager")
        step.set_lr(lr)
        step(x, y)
        runs[lr] = [a - p.detach() for a, p in zip(before, model.parameters())]
    # plain SGD without momentum: the displacement is proportional to the learning rate
    for small, big in zip(runs[0.01], runs[0.1]):
        torch.testing.assert_close(big, 10 * small, rtol=1e-4, atol=1e-7)


# --- the functional update used by the graph step ----------------------------------------------------
@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.9, 0.0), (0.0, 1e-2)])
def test_functional_update_equals_torch_sgd(momentum, weight_decay):
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 3), (7,), (2, 3, 4), ()]
    ours = [torch.randn(s, generator=g) for s in shapes]
    theirs = [t.clone().requires_grad_() for t in ours]
    bufs = [torch.zeros_like(t) for t in ours]
    opt = torch.optim.SGD(theirs, lr=0.03, momentum=momentum, weight_decay=weight_decay)
    lr = torch.tensor(0.03)
    for new_lr in [0.03, 0.03, 0.1, 0.007, 0.007]:
        grads = [torch.randn(s, generator=g) for s in shapes]
        kept = [gr.clone() for gr in grads]
        for t, gr in zip(theirs, grads):
            t.grad = gr.clone()
        for group in opt.param_groups:
            group["lr"] = new_lr
        opt.step()
        lr.fill_(new_lr)
        sgd_update(ours, grads, bufs if momentum else None, lr, momentum, weight_decay)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
        assert all(torch.equal(a, b) for a, b in zip(grads, kept))  # gradients are left as they were
        if momentum:
            for buf, t in zip(bufs, theirs):
                torch.testing.assert_close(buf, opt.state[t]["momentum_buffer"], rtol=1e-6, atol=1e-7)


# --- micro-batches ------------------------------------------------------------------------------------
class _LossLog:
    """Stand-in for GradientSignals: records the losses and gradient observations the step reports."""

    mode = "last"

    def __init__(self):
        self.losses = []
        self.grad_observations = 0

    def observe_loss(self, loss):
        self.losses.append(loss.detach().clone())

    def observe_gradients(self):
        self.grad_observations += 1


@pytest.mark.parametrize("micro", [4, 5])  # 12 = 3 x 4, and 5 + 5 + 2 (a remainder weighted by its size)
def test_micro_batches_equal_full_batch(micro):
    x, y = _data(12, dtype=torch.float64)
    results = []
    for mb in (None, micro):
        model = _model("tiny_mlp")
        log = _LossLog()
        step = make_step(model, log, lr=LR, momentum=MOM, weight_decay=WD, mode="eager", micro_batch=mb)
        step(x, y)
        grads = [p.grad.clone() for p in model.parameters()]
        step(x, y)  # a second step exercises the momentum on the accumulated gradient
        results.append((grads, _params(model), torch.stack(log.losses)))
    (g_full, p_full, l_full), (g_mb, p_mb, l_mb) = results
    for a, b in zip(g_full + p_full, g_mb + p_mb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(l_full, l_mb, rtol=1e-6, atol=1e-9)


def test_micro_batch_validation():
    with pytest.raises(DebaError, match="micro_batch"):
        make_step(_model("tiny_mlp"), mode="eager", micro_batch=0)
    with pytest.raises(DebaError, match="amp"):
        make_step(_model("tiny_mlp"), mode="eager", amp="fp8")


def test_bf16_autocast_path_runs_on_cpu():
    model = _model("tiny_cnn", dtype=torch.float32)
    dtypes = []
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    log = _LossLog()
    before = _params(model)
    step = make_step(model, log, mode="eager", amp="bf16", channels_last=True)
    x, y = _data(8)
    step(x, y)
    assert dtypes == [torch.bfloat16]
    assert torch.isfinite(log.losses[0]) and log.losses[0].dtype == torch.float32
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


# --- no host sync -------------------------------------------------------------------------------------
def _forbid_host_reads(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("host read of a tensor inside the training step")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@pytest.mark.parametrize("kind", ["eager", "graph", "graph-micro"])
def test_no_host_read_inside_a_step(monkeypatch, fake_graphs, kind):
    model = _model("tiny_cnn", dtype=torch.float32)
    signals = GradientSignals(model.parameters(), mode="epoch-avg")
    micro = 4 if kind == "graph-micro" else None
    cls = EagerStep if kind == "eager" else GraphStep
    step = cls(model, signals, micro_batch=micro)
    x, y = _data(8)
    with monkeypatch.context() as m:
        _forbid_host_reads(m)
        for i in range(3):
            step.set_lr(0.01 * (i + 1))
            step.observe_gradients_next = i % 2 == 0
            step(x, y)
    out = signals.end_epoch()
    assert out["steps"] == 3 and out["grad_observations"] == 2
    assert np.isfinite(out["loss"]) and out["grad_var"] > 0


# --- the graph step (fake capture) against the eager step ----------------------------------------------
def _run(step, batches, lrs):
    for (x, y), lr in zip(batches, lrs):
        step.set_lr(lr)
        step(x, y)


@pytest.mark.parametrize("micro", [None, 4])
def test_graph_step_equals_eager_step(fake_graphs, micro):
    """Same parameters, BatchNorm statistics, gradients and loss sums after steps at two batch sizes and
    three learning rates: the warm-up before a capture changes nothing, the update reads the lr tensor."""
    batches = [_data(8, seed=0, dtype=torch.float64), _data(16, seed=1, dtype=torch.float64),
               _data(8, seed=2, dtype=torch.float64), _data(16, seed=3, dtype=torch.float64)]
    lrs = [0.05, 0.05, 0.2, 0.01]
    out = []
    for cls in (EagerStep, GraphStep):
        model = _model("tiny_cnn")
        signals = GradientSignals(model.parameters(), mode="last")
        step = cls(model, signals, lr=0.05, micro_batch=micro)
        _run(step, batches, lrs)
        out.append((model.state_dict(), [p.grad.clone() for p in model.parameters()], signals.end_epoch(), step))
    (sd_e, g_e, sig_e, _), (sd_g, g_g, sig_g, graph_step) = out
    assert graph_step.mode == "graph" and len(graph_step._graphs) == 2  # one graph per batch size
    assert [e["graph"].replays for e in graph_step._graphs.values()] == [2, 2]
    for k in sd_e:
        torch.testing.assert_close(sd_g[k], sd_e[k], rtol=1e-10, atol=1e-12, msg=k)
    for a, b in zip(g_e, g_g):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert sig_e["steps"] == sig_g["steps"] == 4
    assert sig_g["loss"] == pytest.approx(sig_e["loss"], rel=1e-10)
    assert sig_g["grad_norm"] == pytest.approx(sig_e["grad_norm"], rel=1e-6)


class _DropoutNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 32))
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.drop(self.body(x))))


def test_building_a_graph_leaves_the_random_stream_as_eager_has_it(fake_graphs):
    """The warm-up before a capture draws dropout masks; the generators are put back, so from one seed the graph
    step trains with the masks the eager step draws (a replay draws at replay time, as a CUDA graph does)."""
    batches = [_data(8, seed=0, dtype=torch.float64), _data(16, seed=1, dtype=torch.float64),
               _data(8, seed=2, dtype=torch.float64)]
    out = []
    for cls in (EagerStep, GraphStep):
        torch.manual_seed(3)
        model = _DropoutNet().double()
        step = cls(model, lr=0.05)
        torch.manual_seed(4)
        _run(step, batches, [0.05, 0.1, 0.1])
        out.append((model.state_dict(), torch.rand(3)))
    (sd_e, next_e), (sd_g, next_g) = out
    for k in sd_e:
        torch.testing.assert_close(sd_g[k], sd_e[k], rtol=1e-12, atol=1e-14, msg=k)
    assert torch.equal(next_e, next_g)  # and the stream continues where eager's does


def test_graph_step_rebinds_gradients_set_to_none(fake_graphs):
    model = _model("tiny_mlp")
    step = GraphStep(model)
    x, y = _data(8, dtype=torch.float64)
    step(x, y)
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    step(x, y)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


# --- graph availability, fallback and out of memory ------------------------------------------------------
def test_graph_modes_on_cpu():
    model = _model("tiny_mlp")
    step = make_step(model, mode="auto")
    assert isinstance(step, EagerStep) and step.mode == "eager" and "cuda" in step.graph_off_reason.lower()
    with pytest.raises(DebaError, match="CUDA graphs requested") as info:
        make_step(model, mode="on")
    assert "\n" not in str(info.value)
    assert make_step(model, mode="off").mode == "eager"
    with pytest.raises(DebaError, match="step mode"):
        make_step(model, mode="sometimes")


def _failing_capture(self, x, y):
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def test_capture_failure_under_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(GraphStep, "_capture", _failing_capture)
    batches = [_data(8, seed=i, dtype=torch.float64) for i in range(3)]
    model = _model("tiny_cnn")
    step = GraphStep(model, requested="auto", lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(step, batches, [0.05, 0.1, 0.1])
    relevant = [w for w in caught if "CUDA graphs off" in str(w.message)]
    assert len(relevant) == 1 and "operation not permitted" in str(relevant[0].message)
    assert step.mode == "eager" and "batch size 8" in step.graph_off_reason
    reference = _model("tiny_cnn")
    _run(EagerStep(reference, lr=0.05), batches, [0.05, 0.1, 0.1])
    for k, v in reference.state_dict().items():  # the failed capture left no trace
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-12, atol=1e-14, msg=k)


def test_capture_failure_under_graph_is_an_error(monkeypatch):
    monkeypatch.setattr(GraphStep, "_capture", _failing_capture)
    step = GraphStep(_model("tiny_mlp"), requested="graph")
    with pytest.raises(DebaError, match="CUDA graphs: capturing the step at batch size 8 failed") as info:
        step(*_data(8, dtype=torch.float64))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("error", [OOM_ERROR("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_oom_during_capture_propagates_and_leaves_state_untouched(monkeypatch, error):
    def oom_capture(self, x, y):
        raise error

    model = _model("tiny_cnn")
    step = GraphStep(model, requested="auto")
    fake_entry = step._graphs
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(GraphStep, "_capture", oom_capture)
    with pytest.raises(OOM_ERROR):
        step(*_data(16, dtype=torch.float64))
    assert fake_entry == {} and step.mode == "graph"
    for k, v in before.items():  # parameters and BatchNorm statistics (the warm-up ran) as before
        assert torch.equal(model.state_dict()[k], v), k
    # a smaller batch then captures and trains
    monkeypatch.setattr(GraphStep, "_capture", _fake_capture)
    step(*_data(8, dtype=torch.float64))
    assert len(step._graphs) == 1
    step.free_graphs()
    assert step._graphs == {}


# --- optimizer state ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("first, second", [(EagerStep, EagerStep), (EagerStep, GraphStep), (GraphStep, EagerStep),
                                           (GraphStep, GraphStep)])
def test_optimizer_state_round_trip(fake_graphs, first, second):
    batches = [_data(8, seed=i, dtype=torch.float64) for i in range(5)]
    lrs = [0.05, 0.05, 0.1, 0.1, 0.1]
    # uninterrupted
    model_a = _model("tiny_mlp")
    _run(first(model_a, lr=0.05), batches, lrs)
    # two steps, save, then a fresh step object (of the other kind) resumes
    model_b = _model("tiny_mlp")
    step_b = first(model_b, lr=0.05)
    _run(step_b, batches[:3], lrs[:3])
    saved = copy.deepcopy(step_b.state_dict())
    model_state = copy.deepcopy(model_b.state_dict())
    model_c = _model("tiny_mlp", seed=5)
    model_c.load_state_dict(model_state)
    step_c = second(model_c, lr=0.05)
    if second is GraphStep:
        step_c(*batches[0])  # a graph already captured: loading must write into the buffers it reads
        model_c.load_state_dict(model_state)
        held = [step_c.optimizer.state[p]["momentum_buffer"] for p in model_c.parameters()]
    step_c.load_state_dict(saved)
    assert step_c.lr == 0.1
    if second is GraphStep:
        assert all(step_c.optimizer.state[p]["momentum_buffer"] is b for p, b in zip(model_c.parameters(), held))
        assert [t.item() for t in step_c._lr_tensors] == [0.1]
    # the loaded buffers are copies: stepping does not change the saved state
    before_saved = copy.deepcopy(saved)
    _run(step_c, batches[3:], lrs[3:])
    for a, b in zip(model_a.parameters(), model_c.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    for k, st in saved["state"].items():
        assert torch.equal(st["momentum_buffer"], before_saved["state"][k]["momentum_buffer"])


def test_state_from_another_model_is_rejected():
    step = EagerStep(_model("tiny_mlp"))
    other = EagerStep(_model("tiny_cnn"))
    with pytest.raises(DebaError, match="optimizer state does not fit"):
        step.load_state_dict(other.state_dict())


def test_oom_error_type_is_torchs():
    assert issubclass(step_mod.OOM_ERROR, RuntimeError)
    assert step_mod._is_oom(RuntimeError("CUDA out of memory"))
    wrapped = RuntimeError("capture invalidated")
    wrapped.__context__ = OOM_ERROR("x")
    assert step_mod._is_oom(wrapped) and not step_mod._is_oom(RuntimeError("other"))


# --- graph cache key, capture stream and pool, cleanup after a failed capture ----------------------------
def test_changing_micro_batch_builds_a_new_graph(fake_graphs):
    """A graph holds one split of the batch into micro-batches: a new micro_batch must not replay the old
    split (the fake graph re-runs Python, so the count of graphs is what tells)."""
    x, y = _data(8, dtype=torch.float64)
    step = GraphStep(_model("tiny_mlp"))
    step(x, y)
    step.micro_batch = 4
    step(x, y)
    assert len(step._graphs) == 2
    step(x, y)
    assert len(step._graphs) == 2


class _Recorder:
    def __init__(self):
        self.calls = []


def test_captures_share_one_pool_each_graph_on_its_own_stream_on_the_model_device(monkeypatch):
    """Every graph of a step goes into one pool, each captured on a stream of its own created on the step's
    device (torch.cuda.graph's default capture stream belongs to whichever device was current at first use;
    graphs sharing a capture stream share its cuBLAS workspaces, pytorch#193402)."""
    rec = _Recorder()
    monkeypatch.setattr(torch.cuda, "device", lambda d: rec.calls.append(("device", d)) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool", len(rec.calls)))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: ("stream", device, len(rec.calls)))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(step_mod, "_capture_graph",
                        lambda graph, pool, stream, fn: rec.calls.append(("capture", pool, stream)))
    model = _model("tiny_mlp")
    step = GraphStep(model, GradientSignals(model.parameters(), mode="epoch-avg"))
    first = step._capture(*_data(8, dtype=torch.float64))
    second = step._capture(*_data(16, dtype=torch.float64))
    captures = [c for c in rec.calls if c[0] == "capture"]
    assert len(captures) == 3  # step graph and observe graph, then only the second step graph
    assert len({c[1] for c in captures}) == 1 and len({c[2] for c in captures}) == 3
    assert all(c[2][1] == step.device for c in captures)
    assert first["stream"] == captures[0][2] and step._observe_graph[1] == captures[1][2]
    assert second["stream"] == captures[2][2]  # the stream lives as long as its graph
    assert [c for c in rec.calls if c[0] == "device"] == [("device", step.device)] * 2
    step.free_graphs()
    step._capture(*_data(8, dtype=torch.float64))
    assert [c for c in rec.calls if c[0] == "capture"][-1][1] != captures[0][1]  # a fresh pool after freeing


class _WorkspaceModel:
    """CUDA-graph stand-ins that model pytorch#193402: a graph embeds the cuBLAS workspace of its capture
    stream; destroying (resetting) a graph clears that stream's workspaces, and a live graph captured on the
    same stream then faults at its next replay. A capture can be made to fail (out of memory, or a refused
    operation) after it began."""

    def __init__(self):
        self.fail_at: dict[int, BaseException] = {}  # batch size -> error raised inside that capture
        self.live = weakref.WeakSet()  # graphs captured and not yet destroyed (the step owns them)

    def install(self, monkeypatch):
        model = self

        class Graph:
            def __init__(self):
                self.stream, self.fn, self.broken, self.alive = None, None, False, False

            def replay(self):
                if self.broken:
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                self.fn()

            def reset(self):
                if not self.alive:
                    return
                self.alive = False
                model.live.discard(self)
                for other in model.live:
                    if other.stream is self.stream:
                        other.broken = True

            def __del__(self):
                self.reset()

        def capture(graph, pool, stream, fn):
            graph.stream, graph.fn, graph.alive = stream, fn, True
            model.live.add(graph)
            batch = getattr(fn, "batch", None)
            if batch in model.fail_at:
                raise model.fail_at[batch]

        shared = object()
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
        monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: object() if model.own_streams else shared)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(step_mod, "_capture_graph", capture)
        self.own_streams = True

        original = GraphStep._captured_step

        def captured_step(step_self, x, y):
            return original(step_self, x, y)

        def capture_method(step_self, x, y):
            fn = lambda: captured_step(step_self, x, y)  # noqa: E731
            fn.batch = int(x.shape[0])
            with torch.cuda.device(step_self.device):
                if step_self._pool is None:
                    step_self._pool = torch.cuda.graph_pool_handle()
                graph, stream = step_mod._new_graph(step_self._pool, step_self.device, fn)
            return {"graph": graph, "stream": stream, "x": x, "y": y}

        monkeypatch.setattr(GraphStep, "_capture", capture_method)


@pytest.mark.parametrize("error", [OOM_ERROR("CUDA out of memory. Tried to allocate 9.00 GiB"),
                                   RuntimeError("operation not permitted when stream is capturing")])
@pytest.mark.parametrize("own_streams", [True, False])
def test_a_failed_capture_never_breaks_the_graphs_that_live_on(monkeypatch, error, own_streams):
    """Graphs at B=8 and 16, then a capture at 32 fails: the graphs replayed afterwards must not be ones whose
    capture stream lost its workspace. Holds with one stream per graph, and also where streams repeat (torch
    hands out streams from a pool of 32 per device), because no graph is destroyed alone while others live."""
    ws = _WorkspaceModel()
    ws.install(monkeypatch)
    ws.own_streams = own_streams
    ws.fail_at[32] = error
    model = _model("tiny_mlp")
    step = GraphStep(model, requested="auto", lr=0.05)
    reference = EagerStep(_model("tiny_mlp"), lr=0.05)
    batches = [_data(b, seed=i, dtype=torch.float64) for i, b in enumerate((8, 16, 8))]
    for s in (step, reference):
        _run(s, batches, [0.05] * 3)
    assert len(step._graphs) == 2 and len(ws.live) == 2
    with warnings.catch_warnings(record=True), contextlib.suppress(OOM_ERROR):
        warnings.simplefilter("always")
        step(*_data(32, seed=9, dtype=torch.float64))
    assert len(ws.live) == 0 and step._graphs == {}  # the failed graph and every other one, together
    if isinstance(error, OOM_ERROR):
        assert step.mode == "graph"  # memory: the caller shrinks the batch and graphs go on
    else:
        assert step.mode == "eager"  # fell back, and trained that batch eagerly
        reference(*_data(32, seed=9, dtype=torch.float64))
    more = [_data(b, seed=10 + i, dtype=torch.float64) for i, b in enumerate((8, 16))]
    for s in (step, reference):
        _run(s, more, [0.1, 0.1])  # a live graph with a cleared workspace would raise here
    assert not any(g.broken for g in ws.live)
    for a, b in zip(model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_workspace_model_faults_when_one_graph_dies_alone(monkeypatch):
    """The stand-in can fail: two graphs on one stream, one reset alone, the other's replay faults."""
    ws = _WorkspaceModel()
    ws.install(monkeypatch)
    ws.own_streams = False
    a, _ = step_mod._new_graph(None, torch.device("cpu"), lambda: None)
    b, _ = step_mod._new_graph(None, torch.device("cpu"), lambda: None)
    a.reset()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        b.replay()


class _FakeCaptureContext:
    """torch.cuda.graph stand-in: entering switches the current stream; exiting restores it unless
    ``end_fails`` (what capture_end does when the capture was invalidated)."""

    def __init__(self, state, end_fails):
        self.state, self.end_fails = state, end_fails

    def __call__(self, graph, pool=None, stream=None, capture_error_mode="global"):
        self.state["pool"] = pool
        self.state["capture_error_mode"] = capture_error_mode
        return self

    def __enter__(self):
        self.state["stream"] = "capture"

    def __exit__(self, *exc):
        if self.end_fails:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        self.state["stream"] = "main"
        return False


def _patch_capture_context(monkeypatch, end_fails, end_raises=False):
    state = {"stream": "main", "ended": [], "released": [], "set": []}
    monkeypatch.setattr(torch.cuda, "graph", _FakeCaptureContext(state, end_fails))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["stream"])

    def set_stream(s):
        state["set"].append(s)
        state["stream"] = s

    def end(device, pool):
        if end_raises:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        state["ended"].append((device, pool))

    monkeypatch.setattr(torch.cuda, "set_stream", set_stream)
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda d, p: state["released"].append((d, p)), raising=False)
    return state


def test_invalidated_capture_restores_stream_and_allocator(monkeypatch):
    state = _patch_capture_context(monkeypatch, end_fails=True)

    def sync_inside_capture():
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="previous error during capture") as info:
        step_mod._capture_graph(object(), (0, 7), "capture", sync_inside_capture)
    assert "not permitted" in str(info.value.__context__)  # the cause stays visible (and _is_oom sees it)
    assert state["stream"] == "main" and state["set"] == ["main"]
    assert state["ended"] == [(0, (0, 7))] and state["released"] == [(0, (0, 7))]


def test_capture_refuses_only_this_threads_unsafe_calls(monkeypatch):
    """capture_error_mode "thread_local": a DataLoader worker thread pinning host memory during a lazy capture
    must not invalidate it (the default "global" mode refuses such calls from every thread)."""
    state = _patch_capture_context(monkeypatch, end_fails=False)
    step_mod._capture_graph(object(), (0, 7), "capture", lambda: None)
    assert state["capture_error_mode"] == "thread_local"


def test_oom_inside_capture_needs_no_cleanup(monkeypatch):
    state = _patch_capture_context(monkeypatch, end_fails=False)

    def oom():
        raise OOM_ERROR("CUDA out of memory. Tried to allocate 8.00 GiB")

    with pytest.raises(OOM_ERROR):
        step_mod._capture_graph(object(), (0, 7), "capture", oom)
    assert state["stream"] == "main" and state["set"] == [] and state["ended"] == [] and state["released"] == []


def test_cleanup_never_masks_the_capture_error(monkeypatch):
    """capture_end failed after the allocator's routing had ended: ending it again raises, which must
    neither replace the capture's error nor release the pool a second time."""
    state = _patch_capture_context(monkeypatch, end_fails=True, end_raises=True)

    def boom():
        raise RuntimeError("capture went wrong")

    with pytest.raises(RuntimeError, match="previous error during capture"):
        step_mod._capture_graph(object(), (0, 7), "capture", boom)
    assert state["stream"] == "main" and state["released"] == []


def test_bench_check_needs_cuda_one_line(capsys):
    from deba.cli import main

    assert main(["bench", "--check", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA device" in err


class _BNThenLimit(torch.nn.Module):
    """BatchNorm, then an out-of-memory error above ``limit`` samples: the error comes after the running
    statistics have moved, as when a real forward runs out of memory in a later layer."""

    def __init__(self, limit):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)
        self.limit = limit

    def forward(self, x):
        x = self.bn(x)
        if x.shape[0] > self.limit:
            raise OOM_ERROR("CUDA out of memory (simulated)")
        return self.fc(x.flatten(1))


def test_eager_oom_at_a_new_batch_size_leaves_batchnorm_statistics_untouched():
    torch.manual_seed(0)
    model = _BNThenLimit(limit=8).double()
    step = EagerStep(model, lr=LR, momentum=MOM, weight_decay=WD)
    x, y = _data(16, dtype=torch.float64)
    step(x[:8], y[:8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(OOM_ERROR):
        step(x, y)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # and the statistics did move in the failed forward (so the test can fail): the same forward
    # without the rollback changes them
    probe = copy.deepcopy(model)
    probe.train()
    with contextlib.suppress(OOM_ERROR):
        probe(x)
    assert not torch.equal(probe.bn.running_mean, before["bn.running_mean"])
    # a step at the size that fits still trains and moves them
    step(x[8:], y[8:])
    assert not torch.equal(model.bn.running_mean, before["bn.running_mean"])
