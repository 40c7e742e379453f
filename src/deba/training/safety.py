"""Run safety that sits beside the training loop: non-finite state, stop requests (SIGTERM / SIGINT) and
stale temporary files.

Non-finite covers the whole trained state, not only loss and gradients: a learning rate far too large can
leave every parameter finite and the loss merely huge while BatchNorm's ``running_var`` overflows to inf,
and a model evaluated (or resumed) with such a buffer is garbage. :func:`nonfinite_tensors` checks
parameters, gradients and floating-point buffers in one host read, once per decision period.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import torch


def nonfinite_tensors(model: torch.nn.Module, limit: int = 3, grads: bool = True) -> list[str]:
    """Names of parameters, gradients (``name.grad``) and buffers holding a NaN or an infinity (at most
    ``limit``); [] when all are finite. One host read however many tensors there are."""
    named: list[tuple[str, torch.Tensor]] = []
    for name, p in model.named_parameters():
        named.append((name, p))
        if grads and p.grad is not None:
            named.append((name + ".grad", p.grad))
    named += [(name, b) for name, b in model.named_buffers()]
    named = [(n, t) for n, t in named if t.is_floating_point() or t.is_complex()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, flags) if not ok][:limit]


def agree_any(flag: bool, device: torch.device, enabled: bool) -> bool:
    """``flag`` or'ed over the ranks of a multi-process run (one all-reduce); ``flag`` itself otherwise."""
    if not enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def is_collective_timeout(err: BaseException) -> bool:
    """Whether a process-group error is a collective that ran past its timeout (gloo: "Timed out waiting
    ... for recv"; NCCL: "Watchdog caught collective operation timeout")."""
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


# --- stop requests ---------------------------------------------------------------------------------
STOP_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as a shell reports it


class StopRequest:
    """SIGTERM / SIGINT handlers that only note the request; the loop stops at the next step boundary.

    A second signal of the same kind restores the default handler first, so it ends the process at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in STOP_EXIT_CODES:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (a background job's SIGINT): it stays ignored
            self._previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous if callable(previous) or previous in (signal.SIG_DFL, signal.SIG_IGN)
                      else signal.SIG_DFL)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (TypeError, ValueError):
                pass
        self._previous.clear()


# --- stale temporary files -------------------------------------------------------------------------
def remove_stale_temporaries(out: Path) -> list[str]:
    """Remove temporary files that a killed write left in a run folder (``.NAME.XXXX.tmp`` from
    deba.logio.atomic_open and the checkpoint's keep-previous link). Only for a folder this process has
    locked: another writer's temporary files would be in flight."""
    removed = []
    for p in sorted(out.glob(".*.tmp")):
        if p.is_file() and not p.is_symlink():
            try:
                os.unlink(p)
                removed.append(p.name)
            except FileNotFoundError:
                pass
    return removed


__all__ = ["nonfinite_tensors", "agree_any", "StopRequest", "STOP_EXIT_CODES", "remove_stale_temporaries"]
