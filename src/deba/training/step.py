"""The optimisation step: forward, loss, backward, SGD update and loss accumulation, with no host sync.

Two implementations with one interface (``__call__(x, y)``, ``set_lr``, ``lr``,
``observe_gradients_next``, ``state_dict`` / ``load_state_dict``, ``free_graphs``, ``mode``):

- :class:`EagerStep`: plain PyTorch, ``torch.optim.SGD`` (dampening 0, no Nesterov).
- :class:`GraphStep` (CUDA): the whole step -- zeroing the gradients, forward, loss, backward, the SGD
  update and ``signals.observe_loss`` -- captured in ONE CUDA graph per input shape (batch size),
  built lazily on the first call at that size and replayed afterwards. At CIFAR sizes training is
  bound by the host launching kernels, and a replay launches the whole step at once; see
  docs/architecture.md and the measurements in the spec.

How the graph step keeps its promises:

- The graphs share one memory pool (``torch.cuda.graph_pool_handle()``); they are never replayed
  concurrently and keep nothing in the pool that must survive another graph's replay: inputs,
  gradients, momentum buffers and the learning rate are allocated outside the pool and only
  written by the graphs.
- Gradients are allocated once (outside any graph) and zeroed inside the graph, so every graph writes
  the same ``.grad`` tensors and the gradients of the last replayed step stay readable afterwards
  (``GradientSignals.end_epoch`` reads them in ``"last"`` mode). The weight decay is added out of
  place, as ``torch.optim.SGD`` does, so ``.grad`` holds the raw gradient.
- ``torch.optim.SGD`` with a Python-float learning rate would bake the value into the graph, so the
  captured update is :func:`sgd_update`, written with ``torch._foreach_*`` ops that read the learning
  rate from a 0-dim device tensor; :meth:`set_lr` writes that tensor (a kernel launch, no sync).
  The momentum buffers live in ``optimizer.state[p]["momentum_buffer"]`` of a real
  ``torch.optim.SGD``, so its ``state_dict()`` round-trips in both modes; a zero-initialised buffer
  gives exactly torch's first step (``buf = grad``).
- Warm-up before a capture runs forward and backward only, on a side stream, and BatchNorm buffers
  and the random-number generators (CPU, and the model's CUDA device) are restored afterwards, so
  building a graph changes no parameter, no statistic and no random stream: the first replay is the
  call's one real step. A capture does not advance the generator and each replay advances it by what
  its random kernels use, so from the same generator state a graph step draws the dropout masks the
  eager step draws (``deba bench --check`` compares the two with dropout on).
- Each graph is captured on a stream of its own (kept with the graph), with
  ``capture_error_mode="thread_local"``, and a graph is never destroyed alone while others live: a failed
  capture drops every graph (the next calls recapture). PyTorch keys the cuBLAS workspace a graph embeds by
  its capture stream, and destroying a graph clears that stream's workspaces, including those still used by
  other live graphs captured on it (pytorch#193402: the next replay of such a graph faults). ``thread_local``:
  a ``DataLoader`` with ``pin_memory`` allocates pinned host memory on its worker threads while a lazy
  capture (one per new batch size) runs; the default ``"global"`` mode refuses any such call from another
  thread and invalidates the capture.
- An out-of-memory error while building a graph discards it and propagates as
  ``torch.OutOfMemoryError`` with the parameters untouched, so the harness can cap the batch size and
  retry the same samples smaller. Any other capture failure under ``mode="auto"`` falls back to the
  eager step with one warning saying why; under ``mode="graph"`` it is an error. A capture that
  failed leaves the current stream and the allocator as it found them (see :func:`_capture_graph`).

``micro_batch`` (gradient accumulation): a batch larger than ``micro_batch`` is split into chunks of
at most that size; each chunk's mean loss is scaled by chunk/B before its backward, so the gradients
and the observed loss are those of the whole batch's mean loss (exactly so for models whose output
for a sample does not depend on the rest of the batch, i.e. without BatchNorm). One optimiser update
per call either way.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DebaError

OOM_ERROR: type[BaseException] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
STEP_MODES = ("auto", "eager", "graph")
_MODE_ALIASES = {"on": "graph", "off": "eager"}
AMP_MODES = ("none", "bf16")
DEFAULT_WARMUP_ITERS = 3


@torch.no_grad()
def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffers: list[torch.Tensor] | None,
               lr: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """One ``torch.optim.SGD`` update (dampening 0, no Nesterov) with the learning rate a 0-dim tensor.

    Made of ``torch._foreach_*`` ops whose only value-dependent operand is the ``lr`` tensor, so it can
    be captured in a CUDA graph and replayed with a new learning rate; it runs on any device.
    ``momentum_buffers`` must exist (zeros before the first step give torch's first step exactly)
    unless ``momentum`` is 0. ``grads`` are not modified (weight decay is added out of place).
    """
    if not params:
        return
    d_p = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
    if momentum:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_add_(momentum_buffers, d_p)
        d_p = momentum_buffers
    torch._foreach_sub_(params, torch._foreach_mul(d_p, lr))


def _is_oom(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised from is an out-of-memory error.

    A failed capture can surface as a generic CUDA error whose context is the allocator's OOM.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OOM_ERROR) or "out of memory" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def _check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise DebaError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


class EagerStep:
    """One SGD optimisation step per call, eagerly. See the module docstring."""

    mode = "eager"
    graph_off_reason: str | None = None  # why this step is not (or no longer) a CUDA-graph step

    def __init__(self, model: nn.Module, signals: Any = None, *, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, amp: str = "none", channels_last: bool = False,
                 micro_batch: int | None = None, loss_fn: Callable | None = None):
        if amp not in AMP_MODES:
            raise DebaError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                        or micro_batch < 1):
            raise DebaError(f"micro_batch must be an integer >= 1, got {micro_batch!r}")
        lr = _check_number("lr", lr)
        if lr <= 0:
            raise DebaError(f"lr must be > 0, got {lr}")
        self.momentum = _check_number("momentum", momentum)
        self.weight_decay = _check_number("weight_decay", weight_decay)
        self.model = model
        if channels_last:
            _to_channels_last(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise DebaError("the model has no trainable parameters")
        self.device = self.params[0].device
        self.signals = signals
        self.amp = amp
        self.channels_last = bool(channels_last)
        self.micro_batch = micro_batch
        self.loss_fn = loss_fn or F.cross_entropy
        # epoch-avg signals: set True before a call to feed that step's gradients to the epoch average
        # (consumed by the call).
        self.observe_gradients_next = False
        # noise scale: set True before a call to train that step as two micro-batches and feed both
        # gradient sizes to signals.observe_small/big_gradient (consumed by the call)
        self.gns_split_next = False
        self._lr = lr
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=self.momentum,
                                         weight_decay=self.weight_decay)
        # DDP: only the last micro-batch's backward should all-reduce the accumulated gradient.
        self._no_sync = getattr(model, "no_sync", None)
        # input shapes (with the micro-batch split) that have completed a step; see __call__
        self._shapes_done: set[tuple] = set()

    # --- the step ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = self._prepare(x, y)
        split, self.gns_split_next = self._take_split(x.shape[0]), False
        key = (tuple(x.shape), self.micro_batch, split)
        if key in self._shapes_done:
            self._eager_step(x, y, split)
            return
        # The first step at a new batch size is where an out-of-memory error happens in practice. Its
        # forward passes may already have moved the BatchNorm running statistics when it fails, so the
        # model's buffers are kept (small: no parameters) and put back if it does, as the graph step
        # does for a failed capture. A failure at a size that already worked once is not covered.
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        try:
            self._eager_step(x, y, split)
        except BaseException as err:
            if _is_oom(err):
                with torch.no_grad():
                    for b, s in zip(buffers, saved):
                        b.copy_(s)
            raise
        self._shapes_done.add(key)

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor, split: bool = False) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(x, y, split=split)
        self._observe(loss)
        self.optimizer.step()

    def _take_split(self, batch: int) -> bool:
        """Whether this call is a noise-scale sample (two gradient sizes need a batch of 2 or more and
        signals that collect them)."""
        return bool(self.gns_split_next and batch >= 2 and self.signals is not None
                    and getattr(self.signals, "gns", False))

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _autocast(self, cache_enabled: bool = True):
        if self.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return contextlib.nullcontext()

    def _chunks(self, batch: int, split: bool = False) -> list[tuple[int, int]]:
        size = self.micro_batch if self.micro_batch and self.micro_batch < batch else batch
        if split and size == batch:  # a noise-scale sample needs a first micro-batch smaller than the batch
            size = (batch + 1) // 2
        return [(start, min(size, batch - start)) for start in range(0, batch, size)]

    def _world_size(self) -> int:
        """Processes whose gradients the last backward all-reduces (1 without DDP)."""
        if self._no_sync is None:
            return 1
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, autocast_cache: bool = True,
                          split: bool = False, observe: bool = True) -> torch.Tensor:
        """Forward and backward over the batch (in micro-batches); returns the batch's mean loss, detached.

        ``split`` (a noise-scale sample): the gradient of the first micro-batch alone is read before the
        next one accumulates, and the whole batch's after the last (``observe`` False: chunk the same way
        but tell the signals nothing, as the warm-up before a capture does). With BatchNorm the two
        micro-batches are normalised by their own statistics on such a step (see docs/noise.md).
        """
        batch = x.shape[0]
        chunks = self._chunks(batch, split)
        observe_noise = split and observe and len(chunks) > 1 and self.signals is not None
        total = None
        for i, (start, n) in enumerate(chunks):
            xs, ys = (x, y) if len(chunks) == 1 else (x[start:start + n], y[start:start + n])
            last = i == len(chunks) - 1
            sync_ctx = self._no_sync() if (self._no_sync is not None and not last) else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast(autocast_cache):
                    loss = self.loss_fn(self.model(xs), ys)
                if len(chunks) > 1:
                    loss = loss * (n / batch)  # the chunk's share of the batch mean
                loss.backward()
            if observe_noise and i == 0:
                self.signals.observe_small_gradient(n / batch)
            part = loss.detach()
            total = part if total is None else total + part
        if observe_noise:
            self.signals.observe_big_gradient(chunks[0][1], batch * self._world_size())
        return total

    def _observe(self, loss: torch.Tensor) -> None:
        if self.signals is not None:
            self.signals.observe_loss(loss)
            if self.observe_gradients_next:
                self.signals.observe_gradients()
        self.observe_gradients_next = False

    # --- learning rate and state ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    def set_lr(self, lr: float) -> None:
        """Set the learning rate for the following steps (a Python number; no host sync)."""
        lr = float(lr)
        if lr == self._lr:
            return
        self._lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        """The optimizer's state (``torch.optim.SGD`` format: momentum buffers and hyper-parameters)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (from either step kind).

        Existing momentum buffers are overwritten in place, so a captured graph that reads them stays
        valid; new ones are copies, never aliases of the tensors in ``state``.
        """
        held = {p: self.optimizer.state[p].get("momentum_buffer") for p in self.params if p in self.optimizer.state}
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as e:
            raise DebaError(f"optimizer state does not fit this model: {_first_line(e)}") from None
        for p in self.params:
            new = self.optimizer.state[p].get("momentum_buffer") if p in self.optimizer.state else None
            old = held.get(p)
            if old is not None:
                with torch.no_grad():
                    if new is None:
                        old.zero_()  # no buffer saved yet: a zero buffer is torch's fresh state
                    else:
                        old.copy_(new)
                self.optimizer.state[p]["momentum_buffer"] = old
            elif new is not None:
                self.optimizer.state[p]["momentum_buffer"] = new.detach().clone()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self._lr = math.nan  # force the write
        self.set_lr(lr)

    def free_graphs(self) -> None:
        """Nothing to free in eager mode (the graph step releases its CUDA graphs here)."""


class GraphStep(EagerStep):
    """The step captured in one CUDA graph per input shape; see the module docstring.

    ``requested`` is ``"auto"`` (fall back to :class:`EagerStep` behaviour, with one warning, when a
    capture fails for any reason but memory) or ``"graph"`` (a failed capture is an error).
    """

    def __init__(self, model: nn.Module, signals: Any = None, *, requested: str = "graph",
                 warmup_iters: int = DEFAULT_WARMUP_ITERS, **kwargs):
        super().__init__(model, signals, **kwargs)
        self.requested = requested
        self.warmup_iters = int(warmup_iters)
        self.mode = "graph"
        self._graphs: dict[tuple, dict[str, Any]] = {}
        self._split_active = False  # the split of the graph being built (read at warm-up and capture)
        self._observe_graph: tuple[Any, Any] | None = None  # (graph, its capture stream), epoch-avg signals
        self._pool: Any = None
        # bound at the first capture: the parameters that get gradients, their gradient tensors,
        # momentum buffers and one learning-rate tensor per (device, dtype) group
        self._groups: list[dict[str, Any]] | None = None
        self._bound_params: list[torch.Tensor] = []
        self._bound_grads: list[torch.Tensor] = []
        self._lr_tensors: list[torch.Tensor] = []

    # --- the step ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.mode == "eager":  # fell back
            return super().__call__(x, y)
        # micro_batch and the noise-scale split are part of the key: a graph holds one split into chunks
        split = self._take_split(int(x.shape[0]))
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, self.model.training, self.micro_batch, split)
        entry = self._graphs.get(key)
        if entry is None:
            self._split_active = split
            entry = self._build(key, x, y)
            if entry is None:  # capture failed, fell back to eager (which reads gns_split_next again)
                self.gns_split_next = split
                return super().__call__(x, y)
        self.gns_split_next = False
        if self._bound_params and self._bound_params[0].grad is not self._bound_grads[0]:
            self._rebind_grads()  # someone set .grad to None (model.zero_grad()): the graphs write these
        if entry["x"] is not x:
            entry["x"].copy_(x, non_blocking=True)
        if entry["y"] is not y:
            entry["y"].copy_(y, non_blocking=True)
        entry["graph"].replay()
        if split:  # the replay updated the device sums; the sizes of the sample are host-side
            self.signals.gns_sizes = (self._chunks(int(x.shape[0]), True)[0][1], int(x.shape[0]) * self._world_size())
        if self.observe_gradients_next and self._observe_graph is not None:
            self._observe_graph[0].replay()
        elif self.observe_gradients_next and self.signals is not None:
            self.signals.observe_gradients()
        self.observe_gradients_next = False

    def set_lr(self, lr: float) -> None:
        lr = float(lr)
        if lr == self._lr:
            return
        super().set_lr(lr)
        for t in self._lr_tensors:
            t.fill_(lr)  # a kernel with the value as argument: no host sync

    def free_graphs(self) -> None:
        """Drop every captured graph and the shared pool (the caller may then ``torch.cuda.empty_cache()``).

        Gradients, momentum buffers and the learning-rate tensors stay; the next call recaptures.
        """
        # all at once: see the module docstring (never one graph destroyed alone while others live)
        self._graphs.clear()
        self._observe_graph = None
        self._pool = None

    # --- building a graph ------------------------------------------------------------------------
    def _side_stream(self):
        """Warm-up runs on a side stream (the capture recipe); off CUDA there is nothing to switch."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        return _SideStream(stream, self.device)

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward and backward only (no update, no signals), so lazy initialisations (cuDNN, cuBLAS,
        autograd streams) happen before capture. Allocates the gradients the first time."""
        with self._side_stream():
            for _ in range(max(1, self.warmup_iters)):
                self.optimizer.zero_grad(set_to_none=False)
                self._forward_backward(x, y, autocast_cache=False, split=self._split_active, observe=False)
            if self.signals is not None and getattr(self.signals, "mode", None) == "epoch-avg":
                from ..signals import grad_stats

                grad_stats(self.signals.params)

    def _bind(self) -> None:
        """Fix the tensors the graphs read and write: gradients, momentum buffers, learning rate."""
        with torch.no_grad():
            params = [p for p in self.params if p.grad is not None]
            groups: dict[tuple, dict[str, Any]] = {}
            for p in params:
                state = self.optimizer.state[p]
                if self.momentum and state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                key = (p.device, p.dtype)
                g = groups.setdefault(key, {"params": [], "grads": [], "bufs": []})
                g["params"].append(p)
                g["grads"].append(p.grad)
                if self.momentum:
                    g["bufs"].append(state["momentum_buffer"])
            lr_tensors = []
            for (device, dtype), g in groups.items():
                lr_dtype = torch.float64 if dtype == torch.float64 else torch.float32
                g["lr"] = torch.full((), self._lr, dtype=lr_dtype, device=device)
                lr_tensors.append(g["lr"])
        self._groups = list(groups.values())
        self._lr_tensors = lr_tensors
        self._bound_params = params
        self._bound_grads = [p.grad for p in params]

    def _rebind_grads(self) -> None:
        for p, g in zip(self._bound_params, self._bound_grads):
            p.grad = g

    def _update(self) -> None:
        for g in self._groups or ():
            sgd_update(g["params"], g["grads"], g["bufs"] if self.momentum else None, g["lr"],
                       self.momentum, self.weight_decay)

    def _captured_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """What one graph holds: zero the gradients, forward, loss, backward, signals, update."""
        torch._foreach_zero_(self._bound_grads)
        loss = self._forward_backward(x, y, autocast_cache=False, split=self._split_active)
        if self.signals is not None:
            self.signals.observe_loss(loss)
        self._update()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Capture the step for static inputs ``x``, ``y`` (CUDA only).

        Each graph is captured on a new stream on ``self.device``, kept with the graph: the cuBLAS workspace a
        graph embeds belongs to its capture stream (see the module docstring). ``torch.cuda.graph``'s default
        capture stream is also created once per process on whichever device was current then, and kernels of
        a model on another device would run eagerly instead of being captured (an empty graph, silently).
        """
        with torch.cuda.device(self.device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph, stream = _new_graph(self._pool, self.device, lambda: self._captured_step(x, y))
            if (self._observe_graph is None and self.signals is not None
                    and getattr(self.signals, "mode", None) == "epoch-avg"):
                try:
                    self._observe_graph = _new_graph(self._pool, self.device, self.signals.observe_gradients)
                except BaseException:
                    _reset_graph(graph)
                    raise
        return {"graph": graph, "stream": stream, "x": x, "y": y}

    def _build(self, key: tuple, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any] | None:
        """Warm up, capture and cache the graph for this input shape; None when it fell back to eager."""
        batch = int(x.shape[0])
        buffers = [b for b in self.model.buffers()]
        saved = [b.detach().clone() for b in buffers]
        entry = None
        try:
            fmt = torch.channels_last if (self.channels_last and x.dim() == 4) else torch.contiguous_format
            static_x = torch.empty(x.shape, dtype=x.dtype, device=self.device, memory_format=fmt)
            static_y = torch.empty(y.shape, dtype=y.dtype, device=self.device)
            static_x.copy_(x)
            static_y.copy_(y)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self._warm_up(static_x, static_y)  # its dropout masks must not shift the random stream
            self._restore(buffers, saved)  # warm-up must not count as training
            if self._groups is None:
                self._bind()
            else:
                self._rebind_grads()
            entry = self._capture(static_x, static_y)
        except BaseException as err:
            entry = None
            self.free_graphs()  # never leave the others alive beside the failed one (module docstring)
            self._restore(buffers, saved)
            if isinstance(err, KeyboardInterrupt):
                raise
            if _is_oom(err):
                if isinstance(err, OOM_ERROR):
                    raise
                raise OOM_ERROR(f"out of memory while capturing the training step at batch size {batch}: {err}") from err
            reason = f"capturing the step at batch size {batch} failed ({type(err).__name__}: {_first_line(err)})"
            if self.requested == "graph":
                raise DebaError(f"CUDA graphs: {reason}; train with graphs off or auto") from err
            self._fall_back(reason)
            return None
        self._graphs[key] = entry
        return entry

    @staticmethod
    def _restore(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)

    def _fall_back(self, reason: str) -> None:
        self.free_graphs()
        self.mode = "eager"
        self.graph_off_reason = reason
        # the eager path uses torch.optim.SGD with the Python lr; keep the momentum buffers it will find
        warnings.warn(f"CUDA graphs off, training eagerly: {reason}", RuntimeWarning, stacklevel=3)


CAPTURE_ERROR_MODE = "thread_local"  # see the module docstring: DataLoader threads pin memory during captures


def _new_graph(pool: Any, device: torch.device, fn: Callable[[], None]) -> tuple[Any, Any]:
    """``(graph, stream)``: ``fn`` captured on a new stream of ``device``; a failed capture's graph is reset
    here, at once, before any other graph can be captured or replayed (its destruction clears its stream's
    cuBLAS workspaces)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    try:
        _capture_graph(graph, pool, stream, fn)
    except BaseException:
        _reset_graph(graph)
        raise
    return graph, stream


def _reset_graph(graph: Any) -> None:
    """Free what ``graph`` holds now, not whenever the last reference (a traceback's frame) goes away."""
    reset = getattr(graph, "reset", None)
    if reset is not None:
        with contextlib.suppress(Exception):  # cleanup must never replace the capture's own error
            reset()


def _capture_graph(graph: Any, pool: Any, stream: Any, fn: Callable[[], None]) -> None:
    """``with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"): fn()``,
    leaving the stream and the allocator as they were when it fails.

    When a capture was invalidated (an op that synchronises with the host, say), ``torch.cuda.graph``'s
    exit raises from ``capture_end`` (``cudaStreamEndCapture`` fails) before it restores the current
    stream, and the C++ ``capture_end`` raises before it tells the caching allocator to stop routing the
    capture's allocations to the pool (torch 2.4 to 2.14 at least). Left so, the eager fallback would run
    on the capture stream, and the allocator, believing a capture still under way, would never again
    release cached blocks to retry a failed allocation and would keep the pool's memory. Both are undone
    here. An out-of-memory error raised inside the capture does not invalidate it: the exit then ends
    the capture normally and nothing is left to undo.
    """
    device = torch.cuda.current_device()
    previous = torch.cuda.current_stream(device)
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode=CAPTURE_ERROR_MODE):
            fn()
    except BaseException:
        if torch.cuda.current_stream(device) != previous:  # the graph context's exit did not finish
            torch.cuda.set_stream(previous)
            _end_allocate_to_pool(device, pool)
        raise


def _end_allocate_to_pool(device: int, pool: Any) -> None:
    """Best effort: end the allocator's routing to ``pool`` left by a failed ``capture_end`` and drop the
    reference that capture took on the pool (private torch API, renamed in torch 2.8; absent: nothing)."""
    end = getattr(torch._C, "_cuda_endAllocateToPool", None) or getattr(
        torch._C, "_cuda_endAllocateCurrentStreamToPool", None)
    release = getattr(torch._C, "_cuda_releasePool", None)
    if end is None:
        return
    # Cleanup must never replace the capture's own error, so any failure here is swallowed.
    try:
        end(device, pool)
    except Exception:  # noqa: BLE001 - capture_end got past this point (routing already ended), or API changed
        return
    if release is not None:
        with contextlib.suppress(Exception):
            release(device, pool)


class _SideStream:
    """``with torch.cuda.stream(s)``, then make the current stream wait for ``s`` (the capture recipe)."""

    def __init__(self, stream, device):
        self.stream = stream
        self.device = device
        self._ctx = torch.cuda.stream(stream)

    def __enter__(self):
        self._ctx.__enter__()
        return self.stream

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return False


def _to_channels_last(model: nn.Module) -> None:
    """Convert the model's 4-D weights to channels_last unless they already are (the trainer converts
    before wrapping in DDP, whose gradient buckets must not see their parameters change afterwards)."""
    if all(p.dim() != 4 or p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()):
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise DebaError("channels_last: convert the model before wrapping it in DistributedDataParallel")
    model.to(memory_format=torch.channels_last)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise DebaError("the model has no parameters")


def make_step(model: nn.Module, signals: Any = None, *, lr: float = 0.01, momentum: float = 0.9,
              weight_decay: float = 5e-4, mode: str = "auto", amp: str = "none", channels_last: bool = False,
              micro_batch: int | None = None, loss_fn: Callable | None = None,
              warmup_iters: int = DEFAULT_WARMUP_ITERS, **optim: Any) -> EagerStep:
    """The training step for ``model`` (already on its device).

    ``mode``: ``"eager"`` (or ``"off"``); ``"graph"`` (or ``"on"``): CUDA graphs, an error where they
    cannot be used; ``"auto"``: CUDA graphs on a CUDA device (falling back to eager, with one warning,
    if a capture fails), eager elsewhere -- the returned step's ``mode`` says which it is and, when
    eager, ``graph_off_reason`` why. ``signals`` is a ``deba.signals.GradientSignals`` or None.
    ``optim`` (``optimizer`` sgd | adamw, ``betas``, ``eps``, ``grad_clip``) selects the steps of
    :mod:`deba.training.optim` (AdamW and/or clipping); without it, the SGD steps above.
    """
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in STEP_MODES:
        raise DebaError(f"step mode must be one of auto, eager, graph (or on, off), got {mode!r}")
    kwargs = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "amp": amp, "channels_last": channels_last,
                  "micro_batch": micro_batch, "loss_fn": loss_fn}
    eager_cls, graph_cls = EagerStep, GraphStep
    if optim.get("optimizer", "sgd") != "sgd" or optim.get("grad_clip") is not None:
        from .optim import OptimEagerStep, OptimGraphStep

        eager_cls, graph_cls = OptimEagerStep, OptimGraphStep
        kwargs.update(optim)
    device = _model_device(model)
    reason = None
    if device.type != "cuda":
        reason = f"the model is on {device.type}, CUDA graphs need a CUDA device"
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        reason = "DistributedDataParallel all-reduces from hooks that a graph cannot hold"
    if mode == "graph" and reason:
        raise DebaError(f"CUDA graphs requested but {reason}; use graphs auto or off")
    if mode == "eager" or reason:
        step = eager_cls(model, signals, **kwargs)
        step.graph_off_reason = reason or "graphs off"
        return step
    return graph_cls(model, signals, requested=mode, warmup_iters=warmup_iters, **kwargs)
