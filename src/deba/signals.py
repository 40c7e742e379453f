"""Gradient signals on the device: variance and L2 norm of the flattened gradient, and the epoch loss.

DEBA decides once per epoch from three numbers: the population variance and the L2 norm of the
flattened gradient (all parameters with a gradient, as one vector) and the mean training loss of the
epoch. This module computes them where the gradients live, never concatenating the gradient into one
big tensor and never reading a value back to the host during the epoch: the only host read is the one
``.tolist()`` in :meth:`GradientSignals.end_epoch`.

Where the call goes in a training step::

    loss = criterion(model(x), y)
    scaler.scale(loss).backward()          # plain loss.backward() without a GradScaler
    scaler.unscale_(optimizer)             # with fp16 AMP: the statistics must see unscaled gradients
    signals.observe_loss(loss)
    if signals.should_observe(step):       # epoch-avg mode only; always False in "last" mode
        signals.observe_gradients()
    scaler.step(optimizer); scaler.update()
    ...
    record = signals.end_epoch()           # after the epoch's last step, before zeroing the gradients

With bf16 autocast no GradScaler is needed and there is nothing to unscale. In ``"last"`` mode (the
paper's reading: statistics of the epoch's last optimisation step) :meth:`GradientSignals.end_epoch`
reads the gradients still held in ``.grad``, so they must not be set to ``None`` before it is called.

Gradient noise scale (``gns=True``, McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
appendix A): with |g_b|^2 the squared norm of a gradient averaged over b examples,
E|g_b|^2 = |G|^2 + tr(Sigma)/b, so the squared norms of one gradient at a small size b_s and one at a big
size b_b give unbiased estimates of both unknowns per step:

    |G|^2     ~ (b_b |g_big|^2 - b_s |g_small|^2) / (b_b - b_s)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1/b_s - 1/b_b)

The step supplies the two sizes at no extra FLOPs: on a sampled step it trains the batch as two
micro-batches and calls :meth:`GradientSignals.observe_small_gradient` after the first one's backward
(the gradient of the first b_s examples) and :meth:`GradientSignals.observe_big_gradient` after the last
(the whole batch; under DDP the all-reduced gradient of the global batch, while the first micro-batch ran
under ``no_sync`` and is this rank's own). The per-step estimates are summed on the device and combined
over the period as a ratio of averages, ``b_simple = mean(tr) / mean(|G|^2)``: the average of per-step
ratios would be biased (the per-step |G|^2 estimate is noisy and often near zero or negative).

Everything on the per-step path (:func:`grad_stats`, ``observe_loss``, ``observe_gradients``, the two
``observe_*_gradient`` calls) is made
of in-place updates of preallocated tensors and value-independent allocations, with Python control
flow that depends only on which parameters have gradients, so it can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import DebaError

SIGNAL_MODES = ("last", "epoch-avg")

# Layout of the accumulator buffer. The first three entries are summed across ranks at the end of an
# epoch (one all_reduce over a contiguous prefix); the rest are gradient statistics, which DDP already
# makes identical on every rank.
_LOSS_SUM, _STEPS, _NONFINITE_STEPS, _VAR_SUM, _NORM_SUM, _OBSERVED, _NONFINITE_OBSERVED = range(7)
_ACC_NAMES = ("loss_sum", "steps", "nonfinite_steps", "var_sum", "norm_sum", "observed",
              "nonfinite_observed")
_REDUCED = 3

# The noise-scale accumulators: sums of the per-step |G|^2 and tr(Sigma) estimates and of the two squared
# norms, the number of finite and non-finite samples. All of them are summed across ranks (each rank's small
# gradient is its own sample), so the ratio of averages over ranks comes out of one all_reduce.
_GNS_NAMES = ("gns_g2_sum", "gns_trace_sum", "gns_small_sq_sum", "gns_big_sq_sum", "gns_samples",
              "gns_nonfinite")
# what a period record carries of the noise scale (the trainer and deba.period log these keys)
# deba train's default sampling of the noise scale: every 20th step of a period is split. On this project's CPU
# a split resnet18 step at B=64 cost 49.5% more than a plain one (docs/results/noise-overhead): 1/20 of that keeps
# the cost under the 3% the issue sets (docs/noise.md)
DEFAULT_GNS_EVERY = 20

NOISE_FIELDS = ("gns_g2", "gns_trace", "b_simple", "gns_reason", "gns_samples", "gns_nonfinite", "gns_b_small",
                "gns_b_big")
_G2_SUM, _TRACE_SUM, _SMALL_SUM, _BIG_SUM, _GNS_SAMPLES, _GNS_NONFINITE = range(6)

_FOREACH_NORM_HAS_DTYPE: bool | None = None  # learned on first use (the dtype argument is newer than torch 2.4)
# Tests set this True to run, on the CPU, the float32 accumulation that accelerators use (see _norm_dtype);
# production code never changes it.
ACCELERATOR_ACCUMULATION_ON_CPU = False


def _wide_dtype(device: torch.device) -> torch.dtype:
    """float64 for the final combination, except where the backend has none (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _norm_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the per-tensor sums of squares.

    float32 on accelerators, whose reductions are trees (relative error ~1e-7 even for tens of
    millions of terms). The CPU kernel of vector_norm accumulates float32 far less accurately (about
    6e-4 relative error for 16M terms on one thread), so there it accumulates in float64, which costs
    the CPU little. float64 gradients keep float64.
    """
    if dtype == torch.float64 or (device.type == "cpu" and not ACCELERATOR_ACCUMULATION_ON_CPU):
        return torch.float64
    return torch.float32


def _norms(tensors: list[torch.Tensor], acc: torch.dtype) -> list[torch.Tensor]:
    """Per-tensor L2 norms accumulated (and returned) in ``acc`` whatever the tensors' dtype."""
    global _FOREACH_NORM_HAS_DTYPE
    if _FOREACH_NORM_HAS_DTYPE is not False:
        try:
            out = list(torch._foreach_norm(tensors, 2, dtype=acc))
            _FOREACH_NORM_HAS_DTYPE = True
            return out
        except (TypeError, RuntimeError):
            if _FOREACH_NORM_HAS_DTYPE:  # the argument is known to work: this is a real error
                raise
            _FOREACH_NORM_HAS_DTYPE = False
    if all(t.dtype == acc for t in tensors):
        return list(torch._foreach_norm(tensors, 2))
    return [torch.linalg.vector_norm(t, 2, dtype=acc) for t in tensors]


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse or g.layout != torch.strided:
            raise DebaError("grad_stats: sparse gradients are not supported (use dense embeddings)")
        if not g.is_floating_point():
            raise DebaError(f"grad_stats: gradient of dtype {g.dtype} is not a floating-point tensor")
        if g.numel():  # an empty tensor adds no components to the flattened gradient
            grads.append(g)
    return grads


def _scaled(values: torch.Tensor, scalars: list[float]) -> torch.Tensor:
    """values[i] * scalars[i] for a 1-D device tensor and Python constants.

    The constants travel as kernel arguments (a foreach op with a scalar list), not as a tensor
    copied from the host, so this is capturable in a CUDA graph.
    """
    return torch.stack(torch._foreach_mul(list(values.unbind(0)), scalars))


@torch.no_grad()
def _device_moments(grads: list[torch.Tensor], wide: torch.dtype):
    """Per-tensor (mean, shift, norm of the deviations from the shift, norm, count) on one device.

    Each tensor's mean is accumulated in ``wide`` (float64). The deviations are taken about that mean
    rounded to the gradient's working precision (the shift), a subtraction that is exact for values
    near the mean, so a large common offset does not cancel the variance away; the sums of squares
    are of positive terms and need no more than float32 accumulation where the reduction is a tree.
    """
    means, shifts, dev_norms, norms, counts = [], [], [], [], []
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for dtype, group in by_dtype.items():
        work = torch.float64 if dtype == torch.float64 else torch.float32
        acc = _norm_dtype(group[0].device, dtype)
        # The per-tensor scalars of a group travel as one small vector (one cast kernel, not one per
        # tensor); unbind gives views of it, so nothing is concatenated.
        group_means = torch.stack([torch.mean(g, dtype=wide) for g in group])
        group_shifts = group_means.to(work)
        deviations = [(g if g.dtype == work else g.to(work)) - s for g, s in zip(group, group_shifts.unbind(0))]
        means += group_means.unbind(0)
        shifts += group_shifts.to(wide).unbind(0)
        dev_norms += torch.stack(_norms(deviations, acc)).to(wide).unbind(0)
        norms += torch.stack(_norms(group, acc)).to(wide).unbind(0)
        counts += [g.numel() for g in group]
    return means, shifts, dev_norms, norms, counts


@torch.no_grad()
def grad_stats(params: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance (ddof=0) and L2 norm of the flattened gradient of ``params``.

    ``params`` is any iterable of tensors or ``nn.Parameter``s; those whose ``.grad`` is ``None`` are
    skipped. Gradients may mix dtypes (bf16, fp16, fp32, fp64) and devices. Returns two 0-dim float32
    tensors on the device of the first gradient; nothing is read back to the host, and a non-finite
    gradient gives a non-finite result.

    Per tensor i with n_i elements: the mean m_i (float64 accumulation) and the sum of squared
    deviations M2_i; these are combined in float64 with the parallel-variance formula
    var = sum_i (n_i / N) * (M2_i / n_i + (m_i - m)^2), m = sum_i (n_i / N) m_i.
    """
    grads = _grads(params)
    if not grads:
        raise DebaError("grad_stats: no parameter has a gradient (call it after backward, before zero_grad)")
    out_device = grads[0].device
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    wide = _wide_dtype(out_device)
    if any(d.type == "mps" for d in by_device):
        wide = torch.float32

    means, shifts, dev_norms, norms, counts = [], [], [], [], []
    for device, group in by_device.items():
        m, s, d, n, c = _device_moments(group, wide)
        if device != out_device:  # model parallel: bring the few per-tensor scalars together
            m, s, d, n = ([t.to(out_device) for t in ts] for ts in (m, s, d, n))
        means += m
        shifts += s
        dev_norms += d
        norms += n
        counts += c

    total = float(sum(counts))
    weights = [n / total for n in counts]
    mean_v = torch.stack(means)
    shift_v = torch.stack(shifts)
    dev_sq_v = torch.stack(dev_norms).square()
    # Squared deviations were taken about the shift s_i, not the mean m_i: M2_i / n_i = dev_sq_i / n_i - (m_i - s_i)^2.
    within = _scaled(dev_sq_v, [1.0 / n for n in counts]) - (mean_v - shift_v).square()
    within = within.clamp_min(0)  # rounding can leave a tiny negative for a constant tensor; NaN stays NaN
    mean = _scaled(mean_v, weights).sum()
    var = _scaled(within + (mean_v - mean).square(), weights).sum()
    norm = torch.stack(norms).square().sum().sqrt()
    return var.to(torch.float32), norm.to(torch.float32)


@torch.no_grad()
def grad_sq_norm(params: Iterable[torch.Tensor], wide: torch.dtype | None = None) -> torch.Tensor:
    """Squared L2 norm of the flattened gradient of ``params`` as a 0-dim device tensor (no host read).

    Per-tensor norms by foreach reductions (float64 accumulation on the CPU, float32 trees elsewhere, see
    :func:`_norm_dtype`), their squares summed in ``wide`` (float64 by default).
    """
    grads = _grads(params)
    if not grads:
        raise DebaError("grad_sq_norm: no parameter has a gradient (call it after backward)")
    device = grads[0].device
    wide = wide or _wide_dtype(device)
    parts = []
    by_key: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_key.setdefault((g.device, g.dtype), []).append(g)
    for (dev, dtype), group in by_key.items():
        sq = torch.stack(_norms(group, _norm_dtype(dev, dtype))).to(wide).square().sum()
        parts.append(sq if dev == device else sq.to(device))
    return torch.stack(parts).sum()


def noise_scale_terms(small_sq: torch.Tensor, big_sq: torch.Tensor, b_small: int, b_big: int) -> torch.Tensor:
    """Per-step unbiased estimates ``[|G|^2, tr(Sigma)]`` from the squared norms of the gradients averaged
    over ``b_small`` and ``b_big`` examples (see the module docstring); device tensors, no host read."""
    if not 0 < b_small < b_big:
        raise DebaError(f"noise scale needs 0 < b_small < b_big, got {b_small} and {b_big}")
    g2 = (big_sq * b_big - small_sq * b_small) / (b_big - b_small)
    trace = (small_sq - big_sq) * (b_small * b_big / (b_big - b_small))
    return torch.stack([g2, trace])


def combine_noise_scale(g2_sum: float, trace_sum: float, samples: int) -> dict[str, Any]:
    """The period's ``gns_g2``, ``gns_trace`` (means of the per-step estimates, reported as they are, even
    negative) and ``b_simple = gns_trace / gns_g2`` (a ratio of averages), or ``b_simple`` None with
    ``gns_reason`` saying why: no sample, or an estimate that is not positive (possible with few samples,
    and then the ratio means nothing)."""
    if samples <= 0:
        return {"gns_g2": None, "gns_trace": None, "b_simple": None,
                "gns_reason": "no step of the period was sampled at two batch sizes"}
    g2, trace = g2_sum / samples, trace_sum / samples
    out: dict[str, Any] = {"gns_g2": g2, "gns_trace": trace, "b_simple": None, "gns_reason": None}
    if not (math.isfinite(g2) and math.isfinite(trace)):
        out["gns_reason"] = "non-finite noise estimate"
    elif g2 <= 0:
        out["gns_reason"] = f"|G|^2 estimate {g2:.3g} <= 0 over {samples} sample(s): noise dominates, B_simple undefined"
    elif trace <= 0:
        out["gns_reason"] = f"tr(Sigma) estimate {trace:.3g} <= 0 over {samples} sample(s): B_simple undefined"
    else:
        out["b_simple"] = trace / g2
    return out


class GradientSignals:
    """Per-epoch gradient variance, gradient norm and mean loss, accumulated on the device.

    ``mode="last"`` (the paper's reading, the ``paper`` preset): the gradient statistics are those of
    the epoch's last optimisation step, read from ``.grad`` in :meth:`end_epoch`.
    ``mode="epoch-avg"``: the statistics are averaged over the steps passed to
    :meth:`observe_gradients` (every ``every``-th step, see :meth:`should_observe`); steps whose
    statistics are not finite (for example steps a GradScaler skips) are counted and left out of the
    average, which is NaN when no observed step was finite.

    With fp16 AMP and a ``GradScaler`` call :meth:`observe_gradients` (and :meth:`end_epoch` in
    ``"last"`` mode) after ``scaler.unscale_(optimizer)``, so the statistics are of the unscaled
    gradients. With bf16 autocast no scaler is needed.

    All accumulators live in one preallocated device buffer updated in place, so CUDA graphs that
    capture :meth:`observe_loss` / :meth:`observe_gradients` keep valid addresses across
    :meth:`reset`.
    """

    def __init__(self, params: Iterable[torch.Tensor], mode: str = "last", every: int = 1,
                 device: torch.device | str | None = None, gns: bool = False, gns_every: int = 1):
        self._check_mode(mode, every)
        if isinstance(gns_every, bool) or not isinstance(gns_every, int) or gns_every < 1:
            raise DebaError(f"gns_every must be a positive integer, got {gns_every!r}")
        self.params = list(params)
        if device is None:
            if not self.params:
                raise DebaError("GradientSignals: no parameters given")
            device = self.params[0].device
        self.mode = mode
        self.every = every
        self.device = torch.device(device)
        self._acc = torch.zeros(len(_ACC_NAMES), dtype=_wide_dtype(self.device), device=self.device)
        # gradient noise scale: accumulators, the open step's |g_small|^2, the sizes of the period's samples
        self.gns = bool(gns)
        self.gns_every = gns_every
        self._gns = torch.zeros(len(_GNS_NAMES), dtype=_wide_dtype(self.device), device=self.device)
        self._small_sq = torch.zeros((), dtype=_wide_dtype(self.device), device=self.device)
        self.gns_sizes: tuple[int, int] | None = None  # (b_small, b_big) of the last sample (host-side)
        # last mode: the period's gradient statistics, captured when the gradient was applied
        self._last = torch.zeros(2, dtype=_wide_dtype(self.device), device=self.device)
        self._captured = False

    @staticmethod
    def _check_mode(mode: str, every: int) -> None:
        if mode not in SIGNAL_MODES:
            raise DebaError(f"signals mode must be one of {', '.join(SIGNAL_MODES)}, got {mode!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DebaError(f"signals every must be a positive integer, got {every!r}")

    @staticmethod
    def _check_state_mode(state: Mapping[str, Any], mode: str) -> None:
        if state.get("mode") != mode:
            raise DebaError(f"signals state is for mode {state.get('mode')!r}, this run uses {mode!r}")

    # Named views into the buffer (they share its storage, so in-place updates land in it).
    @property
    def loss_sum(self) -> torch.Tensor:
        return self._acc[_LOSS_SUM]

    @property
    def steps(self) -> torch.Tensor:
        return self._acc[_STEPS]

    @property
    def nonfinite_steps(self) -> torch.Tensor:
        return self._acc[_NONFINITE_STEPS]

    @property
    def var_sum(self) -> torch.Tensor:
        return self._acc[_VAR_SUM]

    @property
    def norm_sum(self) -> torch.Tensor:
        return self._acc[_NORM_SUM]

    @property
    def observed(self) -> torch.Tensor:
        return self._acc[_OBSERVED]

    @property
    def nonfinite_observed(self) -> torch.Tensor:
        return self._acc[_NONFINITE_OBSERVED]

    @torch.no_grad()
    def observe_loss(self, loss: torch.Tensor) -> None:
        """Add the step's mean loss to the epoch sum; a non-finite loss adds 0 and is counted."""
        value = loss.detach()
        if value.device != self.device:
            value = value.to(self.device)
        value = value.to(torch.float32).mean()
        finite = torch.isfinite(value)
        update = torch.stack([torch.where(finite, value, 0.0).to(self._acc.dtype),
                              torch.ones_like(value, dtype=self._acc.dtype),
                              (~finite).to(self._acc.dtype)])
        self._acc[:_REDUCED].add_(update)

    def should_observe(self, step_index: int) -> bool:
        """Whether step ``step_index`` (0-based within the epoch) feeds the epoch average."""
        return self.mode == "epoch-avg" and step_index % self.every == 0

    @torch.no_grad()
    def observe_gradients(self, step_index: int | None = None) -> None:
        """epoch-avg mode: add the current gradients' variance and norm to the epoch sums.

        With ``step_index`` the every-k gating is applied here (eager loops); without it the call
        always observes (a captured graph replayed only on the observed steps). No-op in "last" mode.
        """
        if self.mode != "epoch-avg":
            return
        if step_index is not None and not self.should_observe(step_index):
            return
        var, norm = grad_stats(self.params)
        stats = torch.stack([var, norm]).to(device=self.device, dtype=self._acc.dtype)
        finite = torch.isfinite(stats).all()
        update = torch.stack([*torch.where(finite, stats, 0.0).unbind(0),
                              finite.to(self._acc.dtype), (~finite).to(self._acc.dtype)])
        self._acc[_VAR_SUM:].add_(update)

    def should_split(self, step_index: int) -> bool:
        """Whether step ``step_index`` (0-based within the period) is a noise-scale sample: the step then
        trains its batch as two micro-batches (see :meth:`observe_small_gradient`)."""
        return self.gns and step_index % self.gns_every == 0

    @torch.no_grad()
    def observe_small_gradient(self, scale: float) -> None:
        """After the first micro-batch's backward: ``.grad`` holds ``scale`` times the gradient averaged
        over that micro-batch's b_small examples (``scale`` = b_small / B: its share of the batch mean)."""
        self._small_sq.copy_(grad_sq_norm(self.params, self._gns.dtype) * (1.0 / (scale * scale)))

    @torch.no_grad()
    def observe_big_gradient(self, b_small: int, b_big: int) -> None:
        """After the last micro-batch's backward: ``.grad`` holds the gradient averaged over ``b_big``
        examples; adds this step's |G|^2 and tr(Sigma) estimates to the period's sums (a non-finite one
        adds nothing and is counted)."""
        big_sq = grad_sq_norm(self.params, self._gns.dtype)
        terms = noise_scale_terms(self._small_sq, big_sq, int(b_small), int(b_big))
        values = torch.cat([terms, self._small_sq.reshape(1), big_sq.reshape(1)])
        finite = torch.isfinite(values).all()
        update = torch.cat([torch.where(finite, values, 0.0),
                            torch.stack([finite, ~finite]).to(self._gns.dtype)])
        self._gns.add_(update)
        self.gns_sizes = (int(b_small), int(b_big))

    @torch.no_grad()
    def capture_last(self) -> None:
        """last mode: keep the current gradient's variance and norm as the period's (device copy, no host
        read); :meth:`end_epoch` then reports them instead of reading ``.grad``. Call it where the gradient
        is about to be applied (before clipping), on the period's last step or on every step."""
        if self.mode != "last":
            return
        var, norm = grad_stats(self.params)
        self._last.copy_(torch.stack([var, norm]).to(device=self.device, dtype=self._last.dtype))
        self._captured = True

    @torch.no_grad()
    def reset(self) -> None:
        """Zero the accumulators in place (their addresses do not change)."""
        self._acc.zero_()
        self._gns.zero_()
        self._captured = False

    @torch.no_grad()
    def end_epoch(self, process_group: Any = None) -> dict[str, Any]:
        """Close the epoch: one host read of everything, then :meth:`reset`.

        Returns ``grad_var``, ``grad_norm`` (floats, NaN/inf when not finite), ``loss`` (mean over the
        steps with a finite loss; NaN when there was none), ``steps``, ``nonfinite_steps`` (ints, summed
        over ranks when torch.distributed is initialised), and in epoch-avg mode also
        ``grad_observations`` and ``nonfinite_grad_observations``.
        """
        source = "captured" if self._captured else "held"
        if self.mode == "last" and self._captured:
            stats = self._last
        elif self.mode == "last":
            if not any(p.grad is not None for p in self.params):
                raise DebaError("signals: no gradients held in .grad at the end of the epoch (mode 'last' "
                                "reads the last step's gradients: do not set them to None before end_epoch)")
            var, norm = grad_stats(self.params)
            stats = torch.stack([var, norm]).to(device=self.device, dtype=self._acc.dtype)
        else:
            stats = self._acc[_VAR_SUM:_OBSERVED] / self._acc[_OBSERVED]  # 0/0 -> NaN when none observed
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            # the loss sum and step counts: a contiguous prefix of the buffer, one collective
            dist.all_reduce(self._acc[:_REDUCED], op=dist.ReduceOp.SUM, group=process_group)
            if self.gns:
                dist.all_reduce(self._gns, op=dist.ReduceOp.SUM, group=process_group)
        values = torch.cat([stats, self._acc, self._gns]).tolist()  # THE host read
        grad_var, grad_norm = values[0], values[1]
        acc = dict(zip(_ACC_NAMES, values[2:2 + len(_ACC_NAMES)]))
        gns = dict(zip(_GNS_NAMES, values[2 + len(_ACC_NAMES):]))
        steps = int(acc["steps"])
        nonfinite = int(acc["nonfinite_steps"])
        finite_steps = steps - nonfinite
        out: dict[str, Any] = {
            "grad_var": float(grad_var),
            "grad_norm": float(grad_norm),
            "loss": acc["loss_sum"] / finite_steps if finite_steps > 0 else math.nan,
            "steps": steps,
            "nonfinite_steps": nonfinite,
        }
        if self.mode == "last":
            out["grad_source"] = source  # captured at the last step, or read from .grad now
        if self.mode == "epoch-avg":
            out["grad_observations"] = int(acc["observed"]) + int(acc["nonfinite_observed"])
            out["nonfinite_grad_observations"] = int(acc["nonfinite_observed"])
        if self.gns:
            out.update(self._noise_record(gns))
        self.reset()
        return out

    def _noise_record(self, gns: Mapping[str, float]) -> dict[str, Any]:
        samples = int(gns["gns_samples"])
        out = combine_noise_scale(gns["gns_g2_sum"], gns["gns_trace_sum"], samples)
        b_small, b_big = self.gns_sizes or (None, None)
        out.update(gns_samples=samples, gns_nonfinite=int(gns["gns_nonfinite"]), gns_b_small=b_small,
                   gns_b_big=b_big)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Accumulators as Python numbers (for mid-epoch checkpoints); one host read."""
        state = {"mode": self.mode, "every": self.every, **dict(zip(_ACC_NAMES, self._acc.tolist()))}
        if self.gns:
            state.update(zip(_GNS_NAMES, self._gns.tolist()))
            state["gns_sizes"] = list(self.gns_sizes) if self.gns_sizes else None
        if self._captured:
            state["captured_last"] = self._last.tolist()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the accumulators in place. The mode must match: sums of another mode mean nothing here."""
        self._check_state_mode(state, self.mode)
        missing = [k for k in _ACC_NAMES if k not in state]
        if missing:
            raise DebaError(f"signals state lacks {', '.join(missing)}")
        values = torch.tensor([float(state[k]) for k in _ACC_NAMES], dtype=self._acc.dtype)
        self._acc.copy_(values)
        # noise sums: absent from states written without gns (or by an older deba): an empty period so far
        self._gns.copy_(torch.tensor([float(state.get(k, 0.0)) for k in _GNS_NAMES], dtype=self._gns.dtype))
        sizes = state.get("gns_sizes")
        self.gns_sizes = (int(sizes[0]), int(sizes[1])) if sizes else None
        last = state.get("captured_last")  # absent in states written before capture_last existed
        self._captured = last is not None
        if last is not None:
            self._last.copy_(torch.tensor([float(v) for v in last], dtype=self._last.dtype))
