"""Callbacks of :class:`deba.training.Trainer` (and :func:`deba.training.train`): the hooks the trainer calls.

Subclass :class:`TrainerCallback` and override the hooks you need (the others do nothing)::

    class Print(TrainerCallback):
        def on_epoch_end(self, trainer, record):
            print(record["epoch"], record["batch_size"], record["test_acc"])

    train(config, callbacks=[Print()])

Subclassing is optional: any object with a hook method of the same name and arguments works (duck
typing), and a hook an object does not have is skipped. A callback may read the trainer (``trainer.state``,
``trainer.policy``, ``trainer.model``) but should not change it. :data:`HOOKS` lists the hooks, in the
order a run calls them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from .trainer import Trainer

HOOKS = ("on_epoch_end",)


class TrainerCallback:
    """Base class of the trainer's callbacks: every hook is a no-op here."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        """After each epoch, with its record (the line it adds to ``epochs.jsonl``), before the checkpoint
        and the log files are written. Called on every rank."""


def call_hook(callbacks: Iterable[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on each callback that has it, in order (a :class:`TrainerCallback` or any object)."""
    if hook not in HOOKS:
        raise ValueError(f"unknown trainer hook {hook!r}; the hooks are {', '.join(HOOKS)}")
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn:
            fn(*args)
