"""The training harness: the paper's protocol by default, any batch-size policy, fast and safe.

One run = one call of :func:`train`. Per epoch (or per decision period, see ``decision_interval``):
train at the policy's batch size with no host sync per step, read the signals once, let the policy
decide, evaluate, checkpoint, and rewrite the run's log files atomically.

Data: a built-in dataset by name (or an in-memory ``ArrayDataset`` passed as ``dataset=``) goes through
the on-device :class:`deba.data.DeviceLoader`; a user's own ``torch.utils.data.Dataset``
(``train_dataset=``, ``test_dataset=``) goes through :class:`deba.data.DataLoaderSource`, an ordinary
``DataLoader`` rebuilt for each new batch size, with the same seeded per-epoch order; the dataset does
its own transforms (``augment`` does not apply) and is evaluated with a plain ``DataLoader``.

Decision periods (``decision_interval`` N, ``decision_interval_unit`` steps or samples): the policy
decides after the first step that brings the steps (or global samples) since the last decision to N or
more, so a period may straddle an epoch boundary; the counters, the signal accumulators of the open
period and its starting model/optimizer state are checkpointed, so a resumed run makes the same
decisions. The policy's index (``epoch`` in its records) counts periods; window and cooldown count
periods. ``decisions.jsonl`` holds one record per period: the policy's record plus ``steps`` and
``samples`` of the period, ``nonfinite_steps``, ``epoch_of_period`` (the epoch it ended in) and
``global_step`` (optimisation steps of the run so far). ``epochs.jsonl`` keeps one record per epoch with
``decision: "periods"``, ``periods`` (indices of the periods that ended in the epoch), ``batch_size``
(at the epoch's start), ``next_batch_size`` (at its end), ``batch_steps`` ([batch size, steps] in the
order trained), ``steps``, ``samples``, ``loss`` (mean step loss of the finite steps of the periods that
ended in the epoch, which may include steps of the previous epoch; null when none ended), ``non_finite``
(any of them was), and the signal fields (grad_var, grad_norm, dnorm, dloss, conf, in_cooldown) null:
they are per period, in decisions.jsonl.

Gradient accumulation (``micro_batch``, ``accumulate``): the step splits a batch into micro-batches and
accumulates their gradients before one update, which is the full batch's update (exactly so without
BatchNorm). With ``accumulate`` an out-of-memory error does not cap the batch size: the micro-batch (per
process) is halved from the failing size, or from the current micro-batch, until a step fits; the size
found is kept for the rest of the run (run state and checkpoint), so the policy's batch stays the
optimisation batch and the signals are those of the accumulated gradient.

Safety rules, each tested (docs/reliability.md):
- Resume: a checkpoint holds model, optimizer, policy, every RNG, counters and the records so far; the
  data order and augmentation are functions of (seed, epoch, sample index), so a resumed run repeats
  exactly what the uninterrupted run would have done. Log files are rewritten whole from the records,
  so they never hold a duplicated or half line.
- Out of memory at a grown batch size: the failing size is recorded, the policy's B_max is capped at the
  largest size that completed a step, and the epoch continues from the first sample not yet trained on,
  at the capped size. The failed step applied no update (the error comes in the forward or backward
  pass or in graph capture, before the optimizer update), so no step is lost or applied twice.
  With ``accumulate`` the batch is kept and the micro-batch shrinks instead (see above). BatchNorm
  running statistics updated by the forward passes of a failed attempt are not rolled back.
- Non-finite loss or gradient: detected on the device, read once per epoch (per period in interval
  mode). The epoch (period) is discarded: model and optimizer return to their state at its start, the
  policy holds, the run goes on with the next samples; the discarded samples are not trained again and
  count as seen (learning-rate schedule, ``samples``). After ``max_nonfinite`` discarded epochs (periods)
  (or at the first with ``nonfinite_action=stop``) the run stops with a valid checkpoint of the last
  good state.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DebaError
from ..logio import make_dir, read_json, write_json
from ..runlock import lock_run_folder
from ..period import PeriodLoop
from ..policy import BatchSizePolicy, DecisionRecord, EpochSignals
from ..runfolder import CONFIG_FILE, SUMMARY_FILE
from .build import build_policy, policy_arch_name, resolve_device
from . import evaluation, oom, records, safety
from . import resume as resume_mod
from .callbacks import TrainerCallback, call_hook  # noqa: F401  (TrainerCallback: re-exported)
from .checkpoint import CHECKPOINT_NAME, snapshot_state
from .config import TrainConfig
# names that moved to their own modules stay importable from here (deba.training.trainer.X)
from .distributed import (DistInfo, RankTimeout, RestartNeeded, broadcast_decision, join_process_group,  # noqa: F401
                          rank_timeout, release_distributed)
from .lm import step_options as lm_step_options
from .oom import OOM_ERRORS, OOM_LIMITS_GLOB  # noqa: F401
from .records import RunState, log_tensorboard, periods_epoch_record, tensors_note
from .resume import RESUME_MUTABLE_KEYS  # noqa: F401
from .schedule import learning_rate


class NonFiniteStop(DebaError):
    exit_code = 3


class Diverged(NonFiniteStop):
    """Nothing good is left: every period was non-finite, or the state itself is (status ``diverged``)."""


class Interrupted(DebaError):
    """Stopped by SIGTERM (exit code 143) or SIGINT (130) at a step boundary, with a checkpoint to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _StopNow(Exception):
    """Raised at a step boundary when a stop was requested; caught in Trainer._fit."""


_STARTED_GROUP = False


def init_distributed(device_pref: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...); see
    :func:`deba.training.distributed.join_process_group`. A group joined here is remembered for
    :func:`process_group_started` (``deba.cli`` leaves such a run with os._exit)."""
    global _STARTED_GROUP
    info = join_process_group(device_pref, timeout_s)
    if info.initialized_here:
        _STARTED_GROUP = True
    return info


def process_group_started() -> bool:
    """Whether this process joined a torchrun process group through deba (init_distributed)."""
    return _STARTED_GROUP


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        model: torch.nn.Module | None = None,
        dataset: Any = None,
        train_dataset: Any = None,
        test_dataset: Any = None,
        num_classes: int | None = None,
        dataloader_kwargs: dict | None = None,
        callbacks: list[Any] = (),
        step_factory: Callable | None = None,
    ):
        self.config = config
        self.callbacks = list(callbacks)
        self.dist = init_distributed(config.device, config.dist_timeout)
        self.device = resolve_device(config.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        seed_everything(config.seed, config.deterministic)
        self.out = Path(config.out) if config.out else None
        self.state = RunState()
        self._current_epoch: int | None = None
        self._user_model = model
        self._dataset = dataset
        self._train_dataset = train_dataset
        self._test_dataset = test_dataset
        self._num_classes = num_classes
        self._dataloader_kwargs = dict(dataloader_kwargs or {})
        self._step_factory = step_factory
        # interval mode: model and optimizer at the start of the open period (restored if it is non-finite)
        self._period_snapshot: dict | None = None
        # safety (deba.training.safety): stop requests, the run folder's lock, an interrupted epoch's progress
        self._stop = safety.StopRequest()
        self._lock = None
        self._partial: dict | None = None  # set by a stop mid-epoch (saved) or by resume (continued)
        self._epoch_start: dict = {}
        self._notes_after_resume: list[str] = []
        self._setup()

    # --- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        from ..data import DeviceLoader, load_dataset
        from ..models import build_model
        from ..signals import GradientSignals
        from .step import make_step

        c = self.config
        from .lm import LMTask

        self.lm = LMTask.for_config(c) if self._dataset is None and self._train_dataset is None else None
        if self.lm is not None:  # text: windows of tokens, a validation loss (deba.training.lm)
            n_train, num_classes = self.lm.setup_data(self)
        elif self._train_dataset is not None:
            n_train, num_classes = self._setup_user_data()
        else:
            if self._test_dataset is not None:
                raise DebaError("test_dataset needs train_dataset (or pass an ArrayDataset as dataset=)")
            ds = self._dataset
            if ds is None:
                ds = load_dataset(c.dataset, data=c.data, download=c.download, subset=c.subset,
                                  subset_seed=c.subset_seed)
            self.data = ds
            n_train, num_classes = int(ds.train_x.shape[0]), ds.num_classes
            self.dataset_name = c.dataset if self._dataset is None else getattr(ds, "name", c.dataset)
            self.loader = DeviceLoader(ds.train_x, ds.train_y, c.start_batch, self.device, ds.mean, ds.std,
                                       augment=c.augment, seed=c.seed, rank=self.dist.rank,
                                       world_size=self.dist.world_size)
            self.test_loader = DeviceLoader(ds.test_x, ds.test_y, min(1000, int(ds.test_x.shape[0])), self.device,
                                            ds.mean, ds.std, augment=False, seed=c.seed, ordered=True)
        self.policy: BatchSizePolicy = build_policy(c, policy_arch_name(c), n_train)
        if self.dist.world_size > 1 and self.policy.b_min < self.dist.world_size:
            raise DebaError(f"b_min {self.policy.b_min} is smaller than the number of ranks {self.dist.world_size}")

        model = self._user_model
        if model is None and self.lm is not None and not c.model:
            model = self.lm.build_model(num_classes)
        if model is None:
            if num_classes is None:
                raise DebaError("num_classes is needed to build the model for a user's dataset "
                                "(or pass model=)")
            model = build_model(c.model or c.arch, num_classes)
        model = model.to(self.device)
        if c.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if c.model and self._user_model is None and self.data is not None:
            # a user's "pkg.mod:fn" that does not fit the data: one line now, not a traceback in step 1
            from ..models import check_model_output

            check_model_output(model, tuple(self.data.train_x.shape[1:]), num_classes, c.model, self.device,
                               c.channels_last)
        self.model = model
        self.train_module = model
        graphs = c.graphs
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_module = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if graphs == "on":
                raise DebaError("--graphs on is not supported with more than one process; use auto or off")
            graphs = "off"
        self.signals = GradientSignals([p for p in model.parameters() if p.requires_grad], mode=c.signals_mode,
                                       every=c.signals_every, gns=c.collects_noise, gns_every=c.gns_every)
        self.period = PeriodLoop(self.policy, signals_mode=c.signals_mode, every=c.signals_every, gns=c.collects_noise,
                                 where="deba train", refuse_zeroed_gradient=False)  # closes and decides every period
        self.period.attach(signals=self.signals)  # the step below feeds them (inside its CUDA graph)
        mode = {"auto": "auto", "on": "graph", "off": "eager"}[graphs]
        factory = self._step_factory or make_step
        self.step = factory(self.train_module, signals=self.signals, lr=c.lr, momentum=c.momentum,
                            weight_decay=c.weight_decay, mode=mode, amp=c.amp, channels_last=c.channels_last,
                            micro_batch=c.micro_batch, **lm_step_options(c))
        self.total_samples = c.epochs * n_train
        if c.max_samples:
            self.total_samples = min(self.total_samples, c.max_samples)
        self.tb = None
        if c.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DebaError("--tensorboard needs the tensorboard package: pip install 'deba[tensorboard]'") from None
            self.tb = SummaryWriter(c.tensorboard)

    def _setup_user_data(self) -> tuple[int, int | None]:
        """A user's own Dataset: DataLoaderSource for training, a plain DataLoader for evaluation."""
        from torch.utils.data import DataLoader

        from ..data import DataLoaderSource

        c = self.config
        if self._dataset is not None:
            raise DebaError("pass either dataset= (an ArrayDataset) or train_dataset=, not both")
        kwargs = self._dataloader_kwargs
        for forbidden in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if forbidden in kwargs:
                raise DebaError(f"dataloader_kwargs: the trainer sets {forbidden} itself; do not pass it")
        self.data = None
        self.dataset_name = f"user:{type(self._train_dataset).__name__}"
        self.loader = DataLoaderSource(self._train_dataset, c.start_batch, shuffle=True, seed=c.seed,
                                       device=self.device, rank=self.dist.rank, world_size=self.dist.world_size,
                                       **kwargs)
        self.test_loader = None
        test = self._test_dataset
        if test is not None:
            if not hasattr(test, "__len__") or len(test) == 0:
                raise DebaError("test_dataset must be a map-style Dataset with at least one sample")
            eval_kwargs = dict(kwargs)
            eval_kwargs.setdefault("pin_memory", self.device.type == "cuda")
            self.test_loader = DataLoader(test, batch_size=min(1000, len(test)), shuffle=False, **eval_kwargs)
        return self.loader.num_samples, self._num_classes

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint_path(self) -> Path | None:
        return self.out / CHECKPOINT_NAME if self.out else None

    def save(self) -> None:
        """Write the checkpoint (rank 0); every rank must call it (the open period's sums are reduced)."""
        resume_mod.save(self)

    def resume(self, fallback: bool = False) -> bool:
        return resume_mod.resume(self, fallback)

    # --- outputs ---------------------------------------------------------------------------------
    def _event(self, text: str) -> None:
        epoch = self._current_epoch or self.state.epoch + 1
        self.state.events.append({"epoch": epoch, "event": text})
        if not self.config.quiet and self.dist.is_main:
            print(f"[deba] epoch {epoch}: {text}", file=sys.stderr)

    def write_outputs(self) -> dict:
        """Rewrite the run's log files whole from the records (rank 0); returns the summary."""
        return records.write_outputs(self)

    def summary(self) -> dict:
        return records.run_summary(self)

    def _samples_done(self) -> bool:
        """--max-samples reached: the run ends (mid-epoch)."""
        return bool(self.config.max_samples) and self.state.samples_seen >= self.config.max_samples

    # --- the loop ----------------------------------------------------------------------------------
    def _lr(self) -> float:
        c = self.config
        return learning_rate(c.lr, schedule=c.lr_schedule, scaling=c.lr_scaling, batch_size=self.policy.batch_size,
                             reference_batch=c.start_batch, samples_seen=self.state.samples_seen,
                             total_samples=self.total_samples, warmup_samples=c.warmup_samples, min_lr=c.min_lr)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _set_batch(self, size: int) -> None:
        self.loader.set_batch_size(size)

    STOP_CHECK_STEPS = 8  # multi-process: ranks agree on a stop request every this many steps

    def _stop_due(self, steps: int) -> bool:
        """Whether to stop at this step boundary; under DDP decided together, so no rank stops alone."""
        if not self.dist.enabled:
            return self._stop.requested
        return steps % self.STOP_CHECK_STEPS == 0 and safety.agree_any(self._stop.requested, self.device, True)

    def _period_due(self) -> bool:
        c = self.config
        done = self.period.epoch_samples if c.decision_interval_unit == "samples" else self.period.epoch_steps
        return done >= c.decision_interval

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch; returns the epoch's training stats. Decides mid-epoch in interval mode.

        After an out-of-memory error or a decision that changes the batch size, the epoch goes on from
        the first sample of its order not yet trained on, cut into batches of the new size."""
        c, s = self.config, self.state
        interval = bool(c.decision_interval)
        self.loader.set_epoch(epoch)
        batch_at_start = self.policy.batch_size
        offset, steps, samples = 0, 0, 0
        batch_steps: list[list[int]] = []  # [batch size, steps] in the order trained
        periods: list[dict] = []  # decisions made in this epoch
        part, self._partial = self._partial, None
        if part and part["epoch"] == epoch:  # resumed after a stop mid-epoch: go on where it stopped
            offset, steps, samples = part["offset"], part["steps"], part["samples"]
            batch_at_start, batch_steps, periods = part["batch_at_start"], part["batch_steps"], part["periods"]
        self.train_module.train()
        while s.status == "running" and not self._samples_done():
            size = self.policy.batch_size
            self._set_batch(size)
            global_b = self.loader.global_batch_size
            restart = False
            try:
                for x, y in self.loader.batches(start_sample=offset):
                    if interval and self._period_snapshot is None:
                        self._period_snapshot = snapshot_state(self.model, self.step.state_dict())
                    self.step.set_lr(self._lr())
                    # every-k gating counts the steps of the signals' own span: the open period (an epoch
                    # unless decision_interval is set)
                    index = self.period.epoch_steps
                    if self.signals.mode == "epoch-avg":
                        self.step.observe_gradients_next = self.signals.should_observe(index)
                    if self.signals.gns:
                        self.step.gns_split_next = self.signals.should_split(index)
                    self.step(x, y)
                    offset += global_b
                    steps += 1
                    samples += global_b
                    s.steps += 1
                    self.period.count_step(global_b)
                    s.samples_seen = self.period.samples_seen
                    s.largest_ok_batch = max(s.largest_ok_batch, size)
                    if batch_steps and batch_steps[-1][0] == global_b:
                        batch_steps[-1][1] += 1
                    else:
                        batch_steps.append([global_b, 1])
                    if interval:
                        if self._period_due():
                            periods.append(self._decide(period_end_epoch=epoch))
                            if s.status != "running" or self.policy.batch_size != size:
                                restart = True
                                break
                    if self._stop_due(steps):
                        self._partial = {"epoch": epoch, "offset": offset, "steps": steps, "samples": samples,
                                         "batch_at_start": batch_at_start, "batch_steps": batch_steps,
                                         "periods": periods, "lr_at_start": self._epoch_start["lr_at_start"],
                                         "snapshot": self._epoch_start["snapshot"],
                                         "train_time_s": time.perf_counter() - self._epoch_start["t0"]}
                        raise _StopNow
                    if self._samples_done():
                        break
            except OOM_ERRORS as e:
                oom.handle_oom(self, size, e)
                restart = True
            if not restart:
                break
        return {"steps": steps, "samples": samples, "batch_at_start": batch_at_start, "batch_steps": batch_steps,
                "periods": periods}

    def _decide(self, period_end_epoch: int) -> dict:
        """Close the period in the PeriodLoop (the one host sync, the policy's decision); keep the record."""
        c, s = self.config, self.state
        decide = None
        if self.dist.enabled:  # decided once on rank 0 and broadcast, so every rank makes the identical decision
            def decide(signals: EpochSignals) -> DecisionRecord:
                return broadcast_decision(self.policy, signals, self.dist.is_main)
        rec = self.period.close(s.period + 1, decide=decide, check_state=self._check_state).to_dict()
        s.period += 1
        rec.update(epoch_of_period=period_end_epoch)
        if c.decision_interval:
            # steps as counted here (per process), samples global; the signals' own count sums over ranks
            rec.update(global_step=s.steps)
            if self.period.last_nonfinite:
                self._discard_nonfinite(rec, self._period_snapshot, "period", f" in period {rec['epoch']}")
            self._period_snapshot = None
            s.decisions.append(rec)
        return rec

    def _check_state(self, nonfinite: bool) -> tuple[bool, dict]:
        """The period's non-finite flag, widened to the whole trained state (parameters, gradients and
        buffers: BatchNorm's running_var can overflow alone) and agreed by every rank."""
        bad = safety.nonfinite_tensors(self.model)
        nonfinite = safety.agree_any(nonfinite or bool(bad), self.device, self.dist.enabled)
        return nonfinite, ({"nonfinite_tensors": bad} if bad else {})

    def _discard_nonfinite(self, rec: dict, snapshot: dict | None, unit: str, where: str = "") -> None:
        """A non-finite epoch (``unit`` "epoch") or decision period ("period") is discarded: model and optimizer
        go back to ``snapshot``, their state at its start; the run stops after ``max_nonfinite`` of them
        (or at the first with ``nonfinite_action=stop``)."""
        c, s = self.config, self.state
        s.nonfinite_events += 1
        if snapshot is not None:
            self.model.load_state_dict(snapshot["model"])
            self.step.load_state_dict(snapshot["optimizer"])
        self._event(f"non-finite loss or gradient{where} ({rec.get('nonfinite_steps', 0)} step(s)"
                    f"{tensors_note(rec)}): {unit} discarded, model and optimizer restored to the start of the "
                    f"{unit} ({s.nonfinite_events}/{c.max_nonfinite})")
        if c.nonfinite_action == "stop" or s.nonfinite_events >= c.max_nonfinite:
            s.status = "stopped: non-finite"
            self._event(f"stopping: {s.nonfinite_events} non-finite {unit}(s); "
                        "the checkpoint holds the last good state")

    def evaluate(self) -> tuple[float | None, float]:
        """Test accuracy (percent) and mean test loss; one host read. Language models: (None, validation loss)."""
        return evaluation.evaluate(self)

    def fit(self, resume: bool = False, resume_fallback: bool = False) -> dict:
        """Train to ``config.epochs`` (from the checkpoint with ``resume``) and return the run's summary.

        Under torchrun, a process group this trainer started is ended when the run completes. Not when fit
        raises: tearing down an NCCL group is collective (pytorch/pytorch#122358), and a rank that failed alone
        (out of memory, say) could wait in it for peers that wait in an all-reduce for it.
        """
        try:
            summary = self._fit(resume, resume_fallback)
        except RuntimeError as e:  # gloo / NCCL report a collective past its timeout as a RuntimeError
            timeout = rank_timeout(e, self.dist, self.config.dist_timeout)
            if timeout is None:
                raise
            raise timeout from None
        finally:
            self._stop.uninstall()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        self.close()
        return summary

    def close(self) -> None:
        """End the process group this trainer started (under torchrun); nothing otherwise. Idempotent.
        Every rank must call it (fit does, on completion)."""
        if self.dist.initialized_here:
            release_distributed()

    def _fit(self, resume: bool, resume_fallback: bool = False) -> dict:
        c = self.config
        stale: list[str] = []
        if self.out and self.dist.is_main:
            make_dir(self.out)
            self._lock = lock_run_folder(self.out)  # one writer per run folder
            stale = safety.remove_stale_temporaries(self.out)
        self._stop.install()
        resumed = self.resume(fallback=resume_fallback) if resume else False
        for note in self._notes_after_resume:
            self._event(note)
        if stale:
            self._event(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(stale)}")
        if resume and not resumed and self.out and self.dist.is_main:
            self._event("no checkpoint found: starting from scratch")
        if resume:
            oom.apply_oom_limits(self)
        unused = c.unused_options()
        if unused:
            self._event(f"policy {c.policy} does not use {', '.join(unused)}: ignored")
        for note in [] if resumed else self.policy.notes:  # how a setting was derived (a scaled cooldown)
            self._event(note)
        if self.out and self.dist.is_main:
            write_json(self.out / CONFIG_FILE, c.to_dict())
            if self.lm is not None:
                self.lm.write_vocab(self.out)
        progress = None
        if not c.quiet and self.dist.is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=c.epochs, initial=self.state.epoch, desc=c.run_name or "train", unit="epoch",
                            dynamic_ncols=True, file=sys.stderr)
        try:
            while self.state.epoch < c.epochs and self.state.status == "running" and not self._samples_done():
                if safety.agree_any(self._stop.requested, self.device, self.dist.enabled):
                    raise _StopNow
                self._run_one_epoch()
                if progress:
                    r = self.state.records[-1]
                    progress.set_postfix(B=r["batch_size"], loss=f"{r['loss']:.3f}" if r["loss"] is not None else "nan",
                                         acc=f"{r['test_acc']:.1f}" if r["test_acc"] is not None else "-")
                    progress.update(1)
        except _StopNow:
            self._stop_at_step_boundary()
        finally:
            if progress:
                progress.close()
            if self.tb:
                self.tb.close()
        self._check_diverged()
        if self.state.status == "running":
            self.state.status = "complete"
        summary = self.write_outputs()
        if self.config.checkpoint_every:
            self.save()
        if self.state.status == "diverged":
            raise Diverged(self.state.events[-1]["event"])
        if self.state.status.startswith("stopped"):
            raise NonFiniteStop(self.state.events[-1]["event"])
        return summary

    def _stop_at_step_boundary(self) -> None:
        """SIGTERM / SIGINT: checkpoint where the loop stopped (mid-epoch too), write the logs, say so."""
        s, stop = self.state, self._stop
        name = stop.name or "signal"
        part = self._partial
        where = (f"after step {part['steps']} of epoch {part['epoch']}" if part else f"after epoch {s.epoch}")
        s.status = f"interrupted: {name}"
        text = (f"stopped by {name} {where}: " + ("checkpoint written, continue with --resume" if self.out
                                                  else "nothing saved (no output folder)"))
        self._event(text)
        if self.out:
            self.save()
        self.write_outputs()
        raise Interrupted(text, safety.STOP_EXIT_CODES.get(stop.signum, 143))

    def _check_diverged(self) -> None:
        """A run never ends ``complete`` holding a non-finite value, nor with no finite period at all."""
        c, s = self.config, self.state
        if not (s.status == "running" or s.status.startswith("stopped")):
            return
        trained = s.decisions if c.decision_interval else s.records
        bad = safety.nonfinite_tensors(self.model, grads=False)
        if bad:
            why = f"the model holds non-finite values ({', '.join(bad)})"
        elif trained and not any(not r.get("non_finite") for r in trained):
            why = f"every one of its {len(trained)} {'period' if c.decision_interval else 'epoch'}(s) was non-finite"
        else:
            return
        s.status = "diverged"
        self._event(f"diverged: {why}; nothing trained is kept (lower --lr, or check the data)")

    def _run_one_epoch(self) -> None:
        c, s = self.config, self.state
        epoch = s.epoch + 1
        self._current_epoch = epoch
        lr_at_start = self._lr()
        # interval mode restores per period (see _decide); the epoch needs no snapshot of its own
        part = self._partial if self._partial and self._partial["epoch"] == epoch else None
        if part:  # an epoch stopped by SIGTERM goes on: its start as it was
            lr_at_start, snapshot = part["lr_at_start"], part["snapshot"]
        else:
            snapshot = None if c.decision_interval else snapshot_state(self.model, self.step.state_dict())
        self._sync()
        t0 = time.perf_counter() - (part["train_time_s"] if part else 0.0)
        self._epoch_start = {"lr_at_start": lr_at_start, "snapshot": snapshot, "t0": t0}
        stats = self._train_epoch(epoch)
        if c.decision_interval:
            # the epoch's record sums up the periods that ended in it; the policy already decided on them
            rec = periods_epoch_record(epoch, stats, self.policy.batch_size)
            nonfinite = False  # handled per period
        else:
            rec = self._decide(period_end_epoch=epoch)
            rec["epoch"] = epoch
            nonfinite = self.period.last_nonfinite
        self._sync()
        train_time = time.perf_counter() - t0
        s.train_time_s += train_time
        s.epoch = epoch

        if nonfinite:
            self._discard_nonfinite(rec, snapshot, "epoch")

        test_acc = test_loss = None
        eval_time = 0.0
        if self.test_loader is not None and (epoch % c.eval_every == 0 or epoch == c.epochs or self._samples_done()):
            t1 = time.perf_counter()
            if self.dist.is_main:
                test_acc, test_loss = self.evaluate()
            self._sync()
            eval_time = time.perf_counter() - t1
            s.eval_time_s += eval_time
            if test_acc is not None and (s.best_test_acc is None or test_acc > s.best_test_acc):
                s.best_test_acc, s.best_epoch = test_acc, epoch
        rec.update(steps=stats["steps"], samples=stats["samples"], batch_steps=stats["batch_steps"],
                   micro_batch=self.step.micro_batch, lr=lr_at_start, train_time_s=train_time, eval_time_s=eval_time,
                   test_acc=test_acc, test_loss=test_loss, b_max_cap=self.policy.b_max_cap,
                   events=[e["event"] for e in s.events if e["epoch"] == epoch])
        rec.pop("epoch_of_period", None)
        if self.lm is not None:
            self.lm.annotate(rec, epoch)
        s.records.append(rec)
        log_tensorboard(self.tb, rec)
        call_hook(self.callbacks, "on_epoch_end", self, rec)
        if c.checkpoint_every and (epoch % c.checkpoint_every == 0 or s.status != "running"):
            self.save()
        self.write_outputs()


def train(config: TrainConfig, *, resume: bool = False, resume_fallback: bool = False, model: torch.nn.Module | None = None, dataset: Any = None,
          train_dataset: Any = None, test_dataset: Any = None, num_classes: int | None = None,
          dataloader_kwargs: dict | None = None, callbacks: list[Any] = ()) -> dict:
    """Run one training run and return its summary (also written to ``config.out``).

    Data, one of: ``config.dataset`` by name (default); ``dataset=`` an in-memory
    :class:`deba.data.ArrayDataset`; or a user's own map-style ``torch.utils.data.Dataset`` of
    ``(input, label)`` pairs as ``train_dataset=`` (and optionally ``test_dataset=``, evaluated with a
    plain ``DataLoader``; without it nothing is evaluated), read through an ordinary ``DataLoader``
    rebuilt for each batch size; ``dataloader_kwargs`` (``num_workers``, ``collate_fn``, ...) go to both
    loaders. ``num_classes`` is needed to build a model by name for a user's dataset. ``callbacks``: objects
    with the hooks of :class:`deba.training.TrainerCallback` (subclasses of it or not).
    """
    trainer = Trainer(config, model=model, dataset=dataset, train_dataset=train_dataset, test_dataset=test_dataset,
                      num_classes=num_classes, dataloader_kwargs=dataloader_kwargs, callbacks=callbacks)
    return trainer.fit(resume=resume, resume_fallback=resume_fallback)


def read_summary(out: str | Path) -> dict:
    return read_json(Path(out) / SUMMARY_FILE)
