"""`deba bench --check`: the CUDA-graph step against the eager step, the same SGD steps from identical models.

Per architecture, two comparisons on the same random batches, with a new learning rate per phase (batch sizes
``batch_sizes``, then the first again: a graph replayed after another was captured into the shared pool):

- **dropout off** (dropout and stochastic depth switched off), once per signals mode (``last``,
  ``epoch-avg``): number for number. After every step both runs' signals are read (``end_epoch``); at the end
  their parameters and buffers (BatchNorm statistics) are compared. ``max_rel`` holds the largest relative
  difference of the loss, gradient variance and norm over the steps, and that of all parameters / floating
  buffers together; the check passes when every one is at most ``rtol`` and the graph step really ran as graphs.
- **dropout on** (the model as built, for models that have dropout or stochastic depth): the graph's masks
  differ from those of an eager run that starts from another generator state, so the check (a) requires every
  dropout layer's mask in the graph run to change from one replay to the next (a graph that replays one mask
  would still train) and to drop a fraction p of its inputs, and (b) compares the runs. Both take each step
  from the same seeded generator state; a graph draws at replay what the eager step draws from that state
  (:mod:`deba.training.step` puts the generators back after its warm-up), and where every mask of the graph
  run equals the eager run's ("same masks") the runs must agree number for number as with dropout off.
  Where the masks differ ("other masks": a torch whose graphs draw otherwise) the graph run must track the
  eager run: the per-step loss, gradient variance and norm, and the displacement of the parameters and
  buffers from their initial values differ from the eager run's by at most ``TRACK_FACTOR`` times as much as
  ``REFERENCE_RUNS`` further eager runs (other seeds, same everything else) differ from it (or ``rtol``).
  Over a few steps that tracking is loose (dropout noise is large); the masks' checks are not. The masks are
  recorded by hooks that write into preallocated tensors, so a captured graph refreshes them at every replay.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from .bench import AMP_MODES, _free, _positive_int, machine_info
from .errors import DebaError
from .models import build_model, canonical_model_name

CHECK_BATCH_SIZES = (64, 256)
CHECK_STEPS = 3  # per phase
CHECK_RTOL = 1e-3
CHECK_LRS = (0.01, 0.02, 0.05)  # a new learning rate per phase: it must reach the captured update
CHECK_SIGNALS_MODES = ("last", "epoch-avg")
DROPOUT_MODES = ("off", "on")
TRACK_FACTOR = 3.0
REFERENCE_RUNS = 2
TRACKED = ("loss", "grad_var", "grad_norm")


def _random_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Dropout layers and stochastic depth with a drop probability above 0."""
    return [m for m in model.modules()
            if (isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth")
            and getattr(m, "p", 0) > 0]


def _without_randomness(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout and stochastic depth off: the two steps draw random numbers in different orders (the graph's
    warm-up draws too), so with them on the runs could not be compared number for number."""
    for m in _random_modules(model):
        m.p = 0.0
    return model


class MaskProbe:
    """Which inputs each dropout layer of ``model`` zeroed in its latest forward, per input shape.

    The hooks write with in-place ops into tensors allocated at the first forward of a shape (the graph step's
    warm-up, outside any capture), so a capture records the writes and every replay refreshes them.
    """

    def __init__(self, model: torch.nn.Module):
        self.modules = [m for m in _random_modules(model) if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
        self.nonzero: dict[tuple, torch.Tensor] = {}
        self.dropped: dict[tuple, torch.Tensor] = {}
        self._current: dict[int, tuple] = {}
        for i, m in enumerate(self.modules):
            m.register_forward_pre_hook(partial(self._before, i))
            m.register_forward_hook(partial(self._after, i))

    def _before(self, i: int, module, args) -> None:
        x = args[0]
        key = (i, tuple(x.shape))
        if key not in self.nonzero:
            self.nonzero[key] = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
            self.dropped[key] = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        self.nonzero[key].copy_(x != 0)  # before an in-place dropout overwrites its input
        self._current[i] = key

    def _after(self, i: int, module, args, out) -> None:
        key = self._current[i]
        torch.logical_and(out == 0, self.nonzero[key], out=self.dropped[key])

    def masks(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(dropped, nonzero input) masks of the latest step at ``batch`` samples, one pair per layer (copies)."""
        out = []
        for j in range(len(self.modules)):
            key = next(k for k in self.dropped if k[0] == j and k[1][0] == batch)
            out.append((self.dropped[key].clone(), self.nonzero[key].clone()))
        return out


def _independent_units(module: torch.nn.Module, shape: torch.Size) -> int:
    """How many independent keep/drop draws a layer makes: one per element for ``Dropout``, one per
    (sample, channel) for the channel-wise ``Dropout1d/2d/3d``."""
    if type(module) is torch.nn.Dropout or len(shape) < 3:
        return int(math.prod(shape))
    return int(shape[0] * shape[1])


def _rel_diff(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float:
    """||reference - other|| / ||reference|| over all elements together (float64); integer tensors (BatchNorm's
    step counter) must be equal (0.0, else inf); 0.0 when both are zero; NaN when anything is not finite."""
    if any(not t.is_floating_point() for t in reference):
        return 0.0 if all(torch.equal(a, b) for a, b in zip(reference, other)) else math.inf
    if not reference:
        return 0.0
    diff = torch.stack([torch.linalg.vector_norm((a.double() - b.double()).flatten()) for a, b in zip(reference, other)])
    ref = torch.stack([torch.linalg.vector_norm(a.double().flatten()) for a in reference])
    num, den = diff.square().sum().sqrt().item(), ref.square().sum().sqrt().item()
    if not (math.isfinite(num) and math.isfinite(den)):
        return math.nan
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def _rel_scalar(reference: float, other: float) -> float:
    if not (math.isfinite(reference) and math.isfinite(other)):
        return 0.0 if reference == other else math.nan  # equal infinities agree; NaN never does
    if reference == other:
        return 0.0
    return abs(reference - other) / abs(reference) if reference else math.inf


def _end_state_diffs(reference: torch.nn.Module, other: torch.nn.Module,
                     start: torch.nn.Module | None = None) -> dict[str, float]:
    """Relative difference of all parameters together, and of all buffers (floating ones; integer ones exact).

    With ``start`` (the models' common initial state) the floating tensors compared are the displacements from
    it, what training did, so the difference is relative to how far the run moved, not to the weights' size.
    """
    def floats(model):
        tensors = [t.detach() for t in model.parameters()], [b for b in model.buffers() if b.is_floating_point()]
        if start is None:
            return tensors
        origin = [t.detach() for t in start.parameters()], [b for b in start.buffers() if b.is_floating_point()]
        return tuple([a - o for a, o in zip(ts, os_)] for ts, os_ in zip(tensors, origin))

    (ref_p, ref_b), (oth_p, oth_b) = floats(reference), floats(other)
    int_bufs = [(a, b) for a, b in zip(reference.buffers(), other.buffers()) if not a.is_floating_point()]
    return {
        "params": _rel_diff(ref_p, oth_p),
        "buffers": max(_rel_diff(ref_b, oth_b), _rel_diff([a for a, _ in int_bufs], [b for _, b in int_bufs])),
    }


def _token_model(model: torch.nn.Module) -> tuple[int, int] | None:
    """(vocab_size, block_size) for a language model with a nanoGPT-style ``config``; None for image models."""
    config = getattr(model, "config", None)
    vocab, block = getattr(config, "vocab_size", None), getattr(config, "block_size", None)
    return (int(vocab), int(block)) if isinstance(vocab, int) and isinstance(block, int) else None


def _sequence_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


class _Batches:
    """The same random batch for every run of a check: images, or token sequences, with learnable targets (a
    fixed random linear rule decides an image's class; the next token is the current one plus 1), so that
    training makes progress that the runs can be compared on."""

    def __init__(self, model: torch.nn.Module, device: torch.device, num_classes: int, image_size: int, seed: int):
        self.tokens = _token_model(model)
        self.device, self.num_classes, self.image_size, self.seed = device, num_classes, image_size, seed
        self.gen = torch.Generator(device=device)
        self.loss_fn = _sequence_loss if self.tokens else None
        self.gen.manual_seed(seed)
        self.rule = None if self.tokens else torch.randn(3 * 4 * 4, num_classes, device=device, generator=self.gen)

    def __call__(self, batch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.gen.manual_seed(self.seed * 100_003 + index)
        if self.tokens:
            vocab, block = self.tokens
            start = torch.randint(0, vocab, (batch, 1), device=self.device, generator=self.gen)
            seq = (start + torch.arange(block + 1, device=self.device)) % vocab
            return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        x = torch.randn(batch, 3, self.image_size, self.image_size, device=self.device, generator=self.gen)
        y = (F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.rule).argmax(1)
        return x, y


def _phases(batch_sizes: Sequence[int]) -> list[tuple[int, float]]:
    sizes = list(batch_sizes) + ([batch_sizes[0]] if len(batch_sizes) > 1 else [])  # back to a graph built earlier
    return [(b, CHECK_LRS[i % len(CHECK_LRS)]) for i, b in enumerate(sizes)]


def _base_record(arch: str, dropout: str, signals_mode: str, amp: str, channels_last: bool,
                 phases: list[tuple[int, float]], steps: int, rtol: float) -> dict[str, Any]:
    return {
        "arch": arch, "dropout": dropout, "signals_mode": signals_mode, "amp": amp, "channels_last": channels_last,
        "phases": [{"batch_size": b, "lr": lr, "steps": steps} for b, lr in phases], "rtol": rtol,
        "max_rel": {}, "worst_step": {}, "graph_step_mode": None, "error": None, "skipped": None, "ok": False,
    }


def _build(arch: str, device: torch.device, channels_last: bool, num_classes: int, image_size: int,
           seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, image_size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def _make_runs(models: Sequence[torch.nn.Module], kinds: Sequence[str], signals_mode: str, lr: float, amp: str,
               channels_last: bool, loss_fn) -> list[tuple[torch.nn.Module, Any, Any]]:
    from .signals import GradientSignals
    from .training.step import EagerStep, GraphStep

    runs = []
    for model, kind in zip(models, kinds):
        signals = GradientSignals([p for p in model.parameters() if p.requires_grad], mode=signals_mode)
        common = {"lr": lr, "amp": amp, "channels_last": channels_last, "loss_fn": loss_fn}
        step = GraphStep(model, signals, requested="graph", **common) if kind == "graph" else \
            EagerStep(model, signals, **common)
        runs.append((model, signals, step))
    return runs


def _error_text(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _strict_check(arch: str, signals_mode: str, device: torch.device, batch_sizes: Sequence[int], steps: int,
                  amp: str, channels_last: bool, num_classes: int, image_size: int, rtol: float,
                  seed: int) -> dict[str, Any]:
    """Dropout off: the eager run (first) against the graph run, number for number."""
    eager_model = _without_randomness(_build(arch, device, channels_last, num_classes, image_size, seed))
    phases = _phases(batch_sizes)
    record = _base_record(arch, "off", signals_mode, amp, channels_last, phases, steps, rtol)
    batches = _Batches(eager_model, device, num_classes, image_size, seed)
    runs = _make_runs([eager_model, copy.deepcopy(eager_model)], ["eager", "graph"], signals_mode, phases[0][1],
                      amp, channels_last, batches.loss_fn)
    per_step: dict[str, list[float]] = {k: [] for k in TRACKED}
    try:
        index = 0
        for batch, lr in phases:
            for _ in range(steps):
                x, y = batches(batch, index)
                values = []
                for _model, signals, step in runs:
                    step.set_lr(lr)
                    step.observe_gradients_next = signals_mode == "epoch-avg"
                    step(x, y)
                    values.append(signals.end_epoch())  # a host read per step: fine for a check
                for key, diffs in per_step.items():
                    diffs.append(_rel_scalar(float(values[0][key]), float(values[1][key])))
                index += 1
        record["graph_step_mode"] = runs[1][2].mode
    finally:
        for _model, _signals, step in runs:
            step.free_graphs()
    record["max_rel"] = {k: max(v) if not any(math.isnan(x) for x in v) else math.nan for k, v in per_step.items()}
    record["worst_step"] = {k: max(range(len(v)), key=lambda i: -1 if math.isnan(v[i]) else v[i])
                            for k, v in per_step.items()}
    record["max_rel"].update(_end_state_diffs(runs[0][0], runs[1][0]))
    record["ok"] = (record["graph_step_mode"] == "graph"
                    and all(math.isfinite(v) and v <= rtol for v in record["max_rel"].values()))
    return record


class _MaskStats:
    """Per dropout layer of the graph run: did the mask change since the previous step at the same batch size,
    how far its drop rate sits from p (in binomial standard deviations), and is it the eager run's mask."""

    def __init__(self, probe: MaskProbe, eager_probe: MaskProbe):
        self.probe, self.eager_probe = probe, eager_probe
        self.previous: dict[int, list[torch.Tensor]] = {}
        self.compared = self.repeated = self.steps = self.same_as_eager = 0
        self.rates: list[float] = []
        self.worst_z = 0.0

    def add(self, batch: int) -> None:
        pairs = self.probe.masks(batch)
        for m, (dropped, nonzero) in zip(self.probe.modules, pairs):
            kept_or_dropped = nonzero.sum().item()  # inputs already zero tell nothing
            rate = dropped.sum().item() / kept_or_dropped if kept_or_dropped else math.nan
            self.rates.append(rate)
            sd = math.sqrt(m.p * (1 - m.p) / _independent_units(m, dropped.shape))
            self.worst_z = max(self.worst_z, abs(rate - m.p) / sd if sd > 0 and math.isfinite(rate) else math.inf)
        masks = [d for d, _ in pairs]
        self.steps += 1
        self.same_as_eager += all(torch.equal(a, b) for a, (b, _) in zip(masks, self.eager_probe.masks(batch)))
        before = self.previous.get(batch)
        if before is not None:
            self.compared += 1
            self.repeated += any(torch.equal(a, b) for a, b in zip(before, masks))
        self.previous[batch] = masks

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self.probe.modules), "replays_compared": self.compared, "repeated": self.repeated,
                "same_as_eager_steps": self.same_as_eager, "steps": self.steps,
                "mean_drop_rate": sum(self.rates) / len(self.rates) if self.rates else None,
                "p": [m.p for m in self.probe.modules], "worst_rate_z": self.worst_z}

    def ok(self) -> bool:
        # a drop rate 6 standard deviations from p is not chance
        return not self.probe.modules or (self.compared > 0 and self.repeated == 0 and self.worst_z <= 6.0)


def _seeded_steps(runs, phases, steps: int, batches: _Batches, seed: int, after_step) -> None:
    """Every run takes each step from a seeded generator state: the eager run and the graph run (first two)
    from the same one, each further run from its own."""
    index = 0
    for batch, lr in phases:
        for _ in range(steps):
            x, y = batches(batch, index)
            values = []
            for j, (_model, signals, step) in enumerate(runs):
                step.set_lr(lr)
                torch.manual_seed(seed * 7_919 + index * 104_729 + max(0, j - 1))
                step(x, y)
                values.append(signals.end_epoch())
            after_step(batch, values)
            index += 1


def _dropout_check(arch: str, device: torch.device, batch_sizes: Sequence[int], steps: int, amp: str,
                   channels_last: bool, num_classes: int, image_size: int, rtol: float,
                   seed: int) -> dict[str, Any]:
    """Dropout on: the eager run (first) against the graph run (second) from the same generator states; further
    eager runs from other states measure how far runs with other masks drift apart."""
    base = _build(arch, device, channels_last, num_classes, image_size, seed)
    phases = _phases(batch_sizes)
    record = _base_record(arch, "on", "last", amp, channels_last, phases, steps, rtol)
    if not _random_modules(base):
        record.update(skipped="no dropout or stochastic depth in this model: the dropout-off check covers it",
                      ok=True)
        return record
    kinds = ["eager", "graph"] + ["eager"] * REFERENCE_RUNS
    models = [base] + [copy.deepcopy(base) for _ in kinds[1:]]
    start = copy.deepcopy(base)  # tracking compares displacements from here
    stats = _MaskStats(MaskProbe(models[1]), MaskProbe(models[0]))
    batches = _Batches(base, device, num_classes, image_size, seed)
    runs = _make_runs(models, kinds, "last", phases[0][1], amp, channels_last, batches.loss_fn)
    diffs: dict[str, list[list[float]]] = {k: [[] for _ in kinds[1:]] for k in TRACKED}

    def after_step(batch: int, values: list[dict]) -> None:
        stats.add(batch)
        for key in TRACKED:
            for j, v in enumerate(values[1:]):
                diffs[key][j].append(_rel_scalar(float(values[0][key]), float(v[key])))

    try:
        _seeded_steps(runs, phases, steps, batches, seed, after_step)
        record["graph_step_mode"] = runs[1][2].mode
    finally:
        for _model, _signals, step in runs:
            step.free_graphs()
    record["max_rel"] = {k: _max(diffs[k][0]) for k in TRACKED} | _end_state_diffs(models[0], models[1])
    moved = [_end_state_diffs(models[0], m, start) for m in models[1:]]
    tracking = {k: _max(diffs[k][0]) for k in TRACKED} | moved[0]
    spread = {k: max(_max(d) for d in diffs[k][1:]) for k in TRACKED}
    spread |= {k: max(e[k] for e in moved[1:]) for k in ("params", "buffers")}
    masks = stats.summary()
    same = masks["steps"] > 0 and masks["same_as_eager_steps"] == masks["steps"]
    if same:  # the masks are eager's: the runs must agree number for number
        agrees = all(math.isfinite(v) and v <= rtol for v in record["max_rel"].values())
    else:
        agrees = all(math.isfinite(tracking[k]) and tracking[k] <= max(TRACK_FACTOR * spread[k], rtol)
                     for k in tracking)
    record.update(comparison="same masks" if same else "other masks", tracking=tracking, eager_spread=spread,
                  masks=masks, track_factor=TRACK_FACTOR)
    record["ok"] = record["graph_step_mode"] == "graph" and agrees and stats.ok()
    return record


def _max(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def check_graph_numerics(archs: Sequence[str], device: str | torch.device = "cuda",
                         batch_sizes: Sequence[int] = CHECK_BATCH_SIZES, steps: int = CHECK_STEPS,
                         amp: str = "none", channels_last: bool = False,
                         signals_modes: Sequence[str] = CHECK_SIGNALS_MODES, rtol: float = CHECK_RTOL,
                         num_classes: int = 10, image_size: int = 32, seed: int = 0,
                         dropout: Sequence[str] = DROPOUT_MODES,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the same SGD steps with the eager step and the CUDA-graph step from identical models and compare
    (see the module docstring). A check that fails to run (a capture that cannot work, memory, a model the
    check cannot feed) is recorded with its error and the other checks go on."""
    dev = torch.device(device)
    say = progress or (lambda text: None)
    batch_sizes = [_positive_int("batch size", b) for b in batch_sizes]
    steps = _positive_int("steps", steps)
    if amp not in AMP_MODES:
        raise DebaError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    bad = [d for d in dropout if d not in DROPOUT_MODES]
    if bad:
        raise DebaError(f"dropout must be among {', '.join(DROPOUT_MODES)}, got {bad[0]!r}")
    archs = [canonical_model_name(a) for a in archs]
    common = {"device": dev, "batch_sizes": batch_sizes, "steps": steps, "amp": amp, "channels_last": channels_last,
              "num_classes": num_classes, "image_size": image_size, "rtol": rtol, "seed": seed}
    jobs = [(a, "off", m) for a in archs for m in (signals_modes if "off" in dropout else ())]
    jobs += [(a, "on", "last") for a in archs if "on" in dropout]
    checks = []
    for arch, drop, mode in sorted(jobs, key=lambda j: archs.index(j[0])):
        try:
            rec = _strict_check(arch, mode, **common) if drop == "off" else _dropout_check(arch, **common)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the other architectures still get checked
            rec = _base_record(arch, drop, mode, amp, channels_last, _phases(batch_sizes), steps, rtol)
            rec["error"] = _error_text(e)
        checks.append(rec)
        _free(dev)
        say(_progress_line(rec))
    return {
        "machine": machine_info(dev),
        "settings": {"archs": archs, "batch_sizes": batch_sizes, "steps_per_phase": steps, "amp": amp,
                     "channels_last": channels_last, "signals_modes": list(signals_modes), "rtol": rtol,
                     "lrs": list(CHECK_LRS), "seed": seed, "image_size": image_size, "dropout": list(dropout),
                     "track_factor": TRACK_FACTOR, "reference_runs": REFERENCE_RUNS},
        "checks": checks,
        "ok": bool(checks) and all(c["ok"] for c in checks),
    }


def _progress_line(rec: dict[str, Any]) -> str:
    head = f"check {rec['arch']} dropout {rec['dropout']} signals={rec['signals_mode']}: "
    if rec["skipped"]:
        return head + f"skipped ({rec['skipped']})"
    if rec["error"]:
        return head + f"MISMATCH ({rec['error']})"
    worst = ", ".join(f"{k} {v:.1e}" for k, v in rec["max_rel"].items())
    return head + ("ok" if rec["ok"] else "MISMATCH") + f" (max relative difference: {worst})"


def _cells(values: dict[str, float], keys: Sequence[str]) -> list[str]:
    return [f"{values[k]:.1e}" if k in values else "-" for k in keys]


def check_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    keys = ("loss", "grad_var", "grad_norm", "params", "buffers")
    sizes = " -> ".join(str(b) for b in s["batch_sizes"]) + (
        f" -> {s['batch_sizes'][0]}" if len(s["batch_sizes"]) > 1 else "")
    lines = [
        "# deba bench --check: CUDA-graph step against the eager step",
        "",
        (f"Device: {m['device_name']}; torch {m['torch_version']}; amp {s['amp']}; channels_last "
         f"{str(s['channels_last']).lower()}; batch sizes {sizes}, {s['steps_per_phase']} steps each, lr "
         f"{', '.join(str(lr) for lr in s['lrs'])} by phase."),
        "",
        f"Dropout off: largest relative difference (graph vs eager); pass at <= {s['rtol']:g}.",
        "",
        "| arch | signals | loss | grad_var | grad_norm | params | buffers | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in (c for c in result["checks"] if c.get("dropout", "off") == "off"):
        verdict = "ok" if c["ok"] else (c["error"] or f"MISMATCH (step mode {c['graph_step_mode']})")
        lines.append(f"| {c['arch']} | {c['signals_mode']} | " + " | ".join(_cells(c["max_rel"], keys)) + f" | {verdict} |")
    on = [c for c in result["checks"] if c.get("dropout") == "on"]
    if on:
        lines += ["", (f"Dropout on, each step from the same seeded generator state: with the same masks as eager, "
                       f"the largest relative difference (pass at <= {s['rtol']:g}); with other masks, the "
                       f"difference / the spread of {s.get('reference_runs')} eager runs with other seeds (pass at "
                       f"<= {s.get('track_factor')} x the spread; parameters as displacements). Every mask of the "
                       "graph run must change at each replay and drop about p of its inputs."), "",
                  "| arch | masks vs eager | loss | grad_norm | params | layers, repeated / compared, drop rate (p) "
                  "| result |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in on:
            lines.append(_dropout_row(c))
    lines += ["", f"All passed: {'yes' if result['ok'] else 'NO'}"]
    return "\n".join(lines) + "\n"


def _dropout_row(c: dict[str, Any]) -> str:
    if c["skipped"] or c["error"]:
        return f"| {c['arch']} | - | - | - | - | - | {c['skipped'] or c['error']} |"
    mk = c["masks"]
    keys = ("loss", "grad_norm", "params")
    if c["comparison"] == "same masks":
        cells = _cells(c["max_rel"], keys)
    else:
        cells = [f"{c['tracking'][k]:.1e} / {c['eager_spread'][k]:.1e}" for k in keys]
    rate = "-" if mk["mean_drop_rate"] is None else f"{mk['mean_drop_rate']:.3f} ({', '.join(f'{p:g}' for p in mk['p'])})"
    verdict = "ok" if c["ok"] else f"MISMATCH (step mode {c['graph_step_mode']})"
    return (f"| {c['arch']} | {c['comparison']} ({mk['same_as_eager_steps']}/{mk['steps']} steps) | "
            + " | ".join(cells) + f" | {mk['layers']}, {mk['repeated']} / {mk['replays_compared']}, {rate} | {verdict} |")
