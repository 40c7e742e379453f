"""The real training step (deba.training.step.make_step) with a test's hook around each call, as a Trainer
``step_factory``. Subclasses override :meth:`before` (may change or refuse the batch) and :meth:`after`."""
from __future__ import annotations

from deba.training.step import make_step


class HookedStep:
    def __init__(self):
        self.calls = 0  # steps called so far (1-based inside the hooks)

    def before(self, x):
        """Called before the real step with its input batch; returns the batch to train on."""
        return x

    def after(self) -> None:
        """Called after the real step."""

    def factory(self, *args, **kwargs):
        real = make_step(*args, **kwargs)
        outer = self

        class Step:
            mode = "eager"

            def __call__(self, x, y):
                outer.calls += 1
                real(outer.before(x), y)
                outer.after()

            def __getattr__(self, name):
                return getattr(real, name)

        return Step()
