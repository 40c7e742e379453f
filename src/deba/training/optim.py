"""AdamW and gradient clipping for the training step, eager and captured in CUDA graphs alike.

:func:`adamw_update` is ``torch.optim.AdamW`` (no amsgrad, not maximize) written with ``torch._foreach_*``
ops whose value-dependent operands (learning rate, step count) are device tensors, so the same function
runs in the eager step and inside a captured graph. :func:`clip_coefficient` is the factor
``torch.nn.utils.clip_grad_norm_`` multiplies the gradients by; here it scales a copy that only the update
reads, so ``.grad`` keeps the raw gradient and the signals (read in the step or at the period's end) see
the gradient before clipping.

:class:`OptimEagerStep` / :class:`OptimGraphStep` are the step with either optimizer (``"sgd"``:
``torch.optim.SGD``'s update; ``"adamw"``: decoupled weight decay on the parameters of two or more
dimensions only -- matrices and embeddings -- none on gains) and optional clipping. The state lives in a
real ``torch.optim`` optimizer's ``state`` (``exp_avg``, ``exp_avg_sq``, ``step``; ``momentum_buffer``), so
``state_dict`` round-trips in both modes; the buffers are created once, outside any graph, and restored
in place.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import DebaError
from .step import EagerStep, GraphStep, _first_line, sgd_update

OPTIMIZERS = ("auto", "sgd", "adamw")
_BUFFERS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """The usual AdamW groups: weight decay on tensors of two or more dimensions, none on the rest."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@torch.no_grad()
def adamw_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], step: torch.Tensor, lr: torch.Tensor, beta1: float,
                 beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW update; ``step`` (incremented here) and ``lr`` are 0-dim tensors on the parameters' device."""
    if not params:
        return
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    bias1 = 1.0 - torch.pow(beta1, step.double())  # in double, as torch computes it on the host
    bias2_sqrt = (1.0 - torch.pow(beta2, step.double())).sqrt()
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    upd = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(upd, lr / bias1)
    torch._foreach_sub_(params, upd)


@torch.no_grad()
def clip_coefficient(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """min(1, max_norm / (total 2-norm + 1e-6)), a 0-dim device tensor (no host sync)."""
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


class _OptimMixin:
    """Replaces the SGD update of EagerStep / GraphStep by :meth:`_apply_update` (see the module docstring)."""

    def __init__(self, model, signals=None, *, optimizer: str = "adamw", betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, grad_clip: float | None = None, **kwargs):
        super().__init__(model, signals, **kwargs)
        if optimizer not in ("sgd", "adamw"):
            raise DebaError(f"optimizer must be sgd or adamw, got {optimizer!r}")
        if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
            raise DebaError(f"grad_clip must be a number > 0, got {grad_clip!r}")
        self.optimizer_kind = optimizer
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        if optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(decay_groups(self.params, self.weight_decay), lr=self._lr,
                                               betas=self.betas, eps=self.eps)
        wide = any(p.dtype == torch.float64 for p in self.params)
        self._lr_t = torch.full((), self._lr, dtype=torch.float64 if wide else torch.float32, device=self.device)
        self._step_t: torch.Tensor | None = None  # AdamW's step count, shared by every parameter's state

    # --- the update ------------------------------------------------------------------------------
    def _eager_step(self, x, y, split=False):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(x, y, split=split)
        self._observe(loss)
        self._apply_update()

    def _ensure_state(self) -> None:
        """Create the optimizer's buffers for every parameter with a gradient (zeros: torch's fresh state)."""
        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                st = self.optimizer.state[p]
                if self.optimizer_kind == "adamw":
                    if "exp_avg" not in st:
                        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if self._step_t is None:
                        self._step_t = torch.zeros((), dtype=torch.float32, device=self.device)
                    st["step"] = self._step_t
                elif self.momentum and st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _apply_update(self) -> None:
        self._ensure_state()
        groups = []
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            groups.append((group, params, [p.grad for p in params]))
        if self.grad_clip is not None:
            coef = clip_coefficient([g for _, _, gs in groups for g in gs], self.grad_clip)
            groups = [(group, ps, torch._foreach_mul(gs, coef) if gs else gs) for group, ps, gs in groups]
        if self.optimizer_kind == "adamw" and self._step_t is not None:
            self._step_t.add_(1)
        for group, params, grads in groups:
            if not params:
                continue
            lr = self._lr_t.to(device=params[0].device, dtype=params[0].dtype)
            if self.optimizer_kind == "adamw":
                st = self.optimizer.state
                adamw_update(params, grads, [st[p]["exp_avg"] for p in params],
                             [st[p]["exp_avg_sq"] for p in params], self._step_t, lr, *self.betas, self.eps,
                             group["weight_decay"])
            else:
                bufs = [self.optimizer.state[p]["momentum_buffer"] for p in params] if self.momentum else None
                sgd_update(params, grads, bufs, lr, self.momentum, self.weight_decay)

    # --- learning rate and state -------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        super().set_lr(lr)
        self._lr_t.fill_(float(lr))  # a kernel with the value as argument: no host sync

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict; buffers that exist are overwritten in place (a graph reads them)."""
        held = {p: dict(self.optimizer.state[p]) for p in self.params if p in self.optimizer.state}
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as e:
            raise DebaError(f"optimizer state does not fit this model: {_first_line(e)}") from None
        step_value = None
        with torch.no_grad():
            for p in self.params:
                st = self.optimizer.state[p] if p in self.optimizer.state else {}
                for key in _BUFFERS:
                    old, new = held.get(p, {}).get(key), st.get(key)
                    if old is not None:
                        old.zero_() if new is None else old.copy_(new)
                        self.optimizer.state[p][key] = old
                    elif new is not None:
                        self.optimizer.state[p][key] = new.detach().clone()
                if st.get("step") is not None and step_value is None:
                    step_value = float(st["step"])
            if self.optimizer_kind == "adamw":
                if self._step_t is None:
                    self._step_t = torch.zeros((), dtype=torch.float32, device=self.device)
                self._step_t.fill_(step_value or 0.0)
                for p in self.params:
                    if p in self.optimizer.state and "exp_avg" in self.optimizer.state[p]:
                        self.optimizer.state[p]["step"] = self._step_t
        lr = float(self.optimizer.param_groups[0]["lr"])
        self._lr = math.nan  # force the write
        self.set_lr(lr)


class OptimEagerStep(_OptimMixin, EagerStep):
    """The eager step with AdamW and/or gradient clipping."""


class OptimGraphStep(_OptimMixin, GraphStep):
    """The CUDA-graph step with AdamW and/or gradient clipping: buffers bound before the first capture."""

    def _bind(self) -> None:
        self._ensure_state()
        params = [p for p in self.params if p.grad is not None]
        self._groups = []  # not read: the update is _apply_update
        self._lr_tensors = []
        self._bound_params = params
        self._bound_grads = [p.grad for p in params]

    def _update(self) -> None:
        self._apply_update()

    def set_lr(self, lr: float) -> None:
        EagerStep.set_lr(self, lr)
        self._lr_t.fill_(float(lr))
