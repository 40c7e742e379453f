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

import datetime
import gc
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DebaError, option
from ..logio import make_dir, read_json, write_json, write_jsonl
from ..runlock import lock_run_folder
from ..policy import BatchSizePolicy, EpochSignals
from ..runfolder import CONFIG_FILE, DECISIONS_FILE, EPOCHS_FILE, SUMMARY_FILE
from ..signals import NOISE_FIELDS
from .build import build_policy, policy_arch_name, resolve_device
from . import safety
from .checkpoint import CHECKPOINT_NAME, fit_problem, load_for_resume, rng_state, save_checkpoint, set_rng_state
from .checkpoint import snapshot_state
from .config import TrainConfig
from .lm import step_options as lm_step_options
from .schedule import learning_rate

# config keys that may differ between a checkpoint and a resuming run
RESUME_MUTABLE_KEYS = {"quiet", "tensorboard", "out", "concurrent_runs", "device", "checkpoint_every", "epochs",
                       "max_nonfinite", "nonfinite_action", "dist_timeout"}

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
)


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


class RestartNeeded(DebaError):
    """A multi-process run ran out of memory on one rank: it cannot go on in this process group (the other
    ranks wait in a collective this rank will never join), so it stops; the limit it learnt is written to
    the run folder and applied when the run is started again with ``--resume``. Exit code 75 is sysexits'
    EX_TEMPFAIL ("try again"); ``torchrun --max-restarts N`` restarts on any failure."""

    exit_code = 75


class RankTimeout(RestartNeeded):
    """A collective waited longer than ``dist_timeout`` for a rank (stopped, hung or dead): exit 75, so
    ``torchrun --max-restarts N`` starts the job again and it resumes from the checkpoint."""


OOM_LIMITS_GLOB = "oom-rank*.json"  # per rank: {"b_max_cap": N} and/or {"micro_batch": M}, see _persist_oom_limit


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_pref: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        # The store torchrun describes (env://), with the keys of this start under a prefix of their own:
        # after a restart (torchrun --max-restarts, see RestartNeeded) the store can still hold the
        # previous start's process-group keys, and the new ranks would read the dead ranks' addresses
        # ("connectFullMesh failed ... Connection refused", or a hang). Seen with torch 2.14 and gloo.
        from torch.distributed.rendezvous import rendezvous

        store, rank, world = next(rendezvous("env://"))
        start = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"deba/start{start}", store)
        # timeout: a rank that stops responding ends the job after this long, not torch's 30-minute default
        kw = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                **kw)
        here = True
        # A process that exits with its process group alive can abort in interpreter teardown ("terminate
        # called without an active exception", SIGABRT; pytorch/pytorch#190489, #179291): seen twice here in
        # full runs of the test suite (tests/test_ddp.py), never in 100-odd runs of the same commands alone.
        # Trainer.fit ends the group when it completes, but that is not enough under DDP:
        # DistributedDataParallel keeps the gloo group and its threads alive after destroy_process_group
        # (torch 2.14; see tests/test_ddp.py). So `deba` itself, having written all it writes, leaves a
        # distributed run with os._exit (deba.cli.main, see process_group_started).
        global _STARTED_GROUP
        _STARTED_GROUP = True
    return DistInfo(rank, world, local, here)


_STARTED_GROUP = False


def process_group_started() -> bool:
    """Whether this process joined a torchrun process group through deba (init_distributed)."""
    return _STARTED_GROUP


def release_distributed() -> None:
    """End the default process group if one is alive (safe to call twice, and where none was started)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class RunState:
    """What the loop carries across epochs; all of it goes into the checkpoint."""

    epoch: int = 0  # epochs completed
    period: int = 0  # decision periods completed (== epoch unless decision_interval is set)
    samples_seen: int = 0
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    nonfinite_events: int = 0
    best_test_acc: float | None = None
    best_epoch: int | None = None
    largest_ok_batch: int = 0
    steps: int = 0  # optimisation steps of the run
    micro_batch: int | None = None  # set by --accumulate after an out-of-memory error; kept for the run
    since_decision_steps: int = 0  # interval mode: steps and global samples of the open period
    since_decision_samples: int = 0
    records: list = field(default_factory=list)  # epochs.jsonl
    decisions: list = field(default_factory=list)  # decisions.jsonl (decision_interval mode)
    events: list = field(default_factory=list)
    status: str = "running"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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
        path = self.checkpoint_path()
        if path is None:
            return
        signals = self._signals_state()
        if not self.dist.is_main:
            return
        save_checkpoint(path, {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "step": self.step.state_dict(),
            "policy": self.policy.state_dict(),
            "rng": rng_state(),
            "run": self.state.to_dict(),
            # interval mode: the open period's accumulators and its starting state (None between periods)
            "signals": signals,
            "period_start": self._period_snapshot,
            "partial_epoch": self._partial,  # a stop mid-epoch: where the epoch goes on (None otherwise)
        })

    def _signals_state(self) -> dict:
        """The signal accumulators; with several ranks the per-rank sums (loss, steps) are summed, so that
        rank 0 can hold them all after a resume and the period's closing all-reduce counts them once."""
        state = self.signals.state_dict()
        if self.dist.enabled:
            import torch.distributed as dist

            keys = ("loss_sum", "steps", "nonfinite_steps")
            t = torch.tensor([state[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            state.update(zip(keys, t.tolist()))
        return state

    def resume(self, fallback: bool = False) -> bool:
        path = self.checkpoint_path()
        if path is None or not path.exists():
            return False
        payload, note = load_for_resume(path, fallback, map_location=self.device)
        if note:
            self._notes_after_resume.append(note)
        problem = fit_problem(payload, self.model, set(RunState.__dataclass_fields__))
        if problem:
            raise DebaError(f"{path}: checkpoint does not fit this run: {problem}")
        saved = payload["config"]
        mine = self.config.to_dict()
        # a key the checkpoint's deba did not know yet had its default then
        defaults = TrainConfig().to_dict()
        differ = sorted(k for k in mine if k not in RESUME_MUTABLE_KEYS and saved.get(k, defaults[k]) != mine[k])
        if differ:
            raise DebaError(f"{path}: checkpoint was written with a different config ({', '.join(differ)}); "
                            "resume with the same settings or use another --out")
        if payload["run"]["epoch"] > self.config.epochs:
            raise DebaError(f"{path}: checkpoint is at epoch {payload['run']['epoch']}, beyond --epochs {self.config.epochs}")
        horizon = saved.get("epochs", defaults["epochs"])
        if self.config.lr_schedule == "cosine" and horizon != self.config.epochs:
            # the cosine decay is laid over the run's epochs: another horizon would restart it mid-run
            raise DebaError(f"{path}: the run's cosine schedule decays over {horizon} epochs; resuming with "
                            f"{option('epochs')} {self.config.epochs} would restart the decay. Resume with "
                            f"{option('epochs')} {horizon}, or start a new run for a longer schedule")
        self.model.load_state_dict(payload["model"])
        try:
            self.step.load_state_dict(payload["step"])
            self.policy.load_state_dict(payload["policy"])
            set_rng_state(payload["rng"])
        except (DebaError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
            what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DebaError(f"{path}: checkpoint does not fit this run's optimizer, policy or RNG ({what})") from None
        bad = safety.nonfinite_tensors(self.model)
        if bad:
            raise DebaError(f"{path}: checkpoint holds non-finite values ({', '.join(bad)}); resume from an "
                            "earlier checkpoint or start afresh")
        self.state = RunState(**payload["run"])
        self._partial = payload.get("partial_epoch")
        self.state.status = "running"
        signals = payload.get("signals")
        if signals is not None:
            if not self.dist.is_main:  # rank 0 holds the summed per-rank sums (see _signals_state)
                signals = {**signals, "loss_sum": 0.0, "steps": 0.0, "nonfinite_steps": 0.0}
            self.signals.load_state_dict(signals)
        self._period_snapshot = payload.get("period_start")
        if self.state.micro_batch is not None:
            self._set_micro_batch(self.state.micro_batch)
        part = self._partial
        self._event(f"resumed from checkpoint at epoch {self.state.epoch}"
                    + (f", step {part['steps']} of epoch {part['epoch']}" if part else ""))
        return True

    # --- outputs ---------------------------------------------------------------------------------
    def _event(self, text: str) -> None:
        epoch = self._current_epoch or self.state.epoch + 1
        self.state.events.append({"epoch": epoch, "event": text})
        if not self.config.quiet and self.dist.is_main:
            print(f"[deba] epoch {epoch}: {text}", file=sys.stderr)

    def write_outputs(self) -> dict:
        summary = self.summary()
        if self.out is None or not self.dist.is_main:
            return summary
        write_jsonl(self.out / EPOCHS_FILE, self.state.records)
        if self.config.decision_interval:
            write_jsonl(self.out / DECISIONS_FILE, self.state.decisions)
        write_json(self.out / SUMMARY_FILE, summary)
        return summary

    def summary(self) -> dict:
        c, s = self.config, self.state
        recs = s.records
        final_done = bool(recs) and (recs[-1]["epoch"] == c.epochs or self._samples_done())
        final = recs[-1]["test_acc"] if final_done else None
        counts = self.policy.counts
        summary = {
            "run_name": c.run_name or (Path(c.out).name if c.out else None),
            "arch": c.model or c.arch,
            "dataset": self.dataset_name,
            "policy": self.policy.name,
            "preset": getattr(self.policy, "preset", None),
            "seed": c.seed,
            "epochs": c.epochs,
            "epochs_completed": s.epoch,
            "status": s.status,
            "final_test_acc": final,
            "best_test_acc": s.best_test_acc,
            "best_epoch": s.best_epoch,
            "train_time_s": s.train_time_s,
            "eval_time_s": s.eval_time_s,
            "increases": counts["increase"],
            "rollbacks": counts["rollback"],
            "holds": counts["hold"],
            "non_finite_epochs": s.nonfinite_events,
            "batch_sizes": [r["batch_size"] for r in recs],
            "final_batch_size": self.policy.batch_size,
            "max_batch_size": max((r["batch_size"] for r in recs), default=None),
            "b_max_cap": self.policy.b_max_cap,
            "samples_seen": s.samples_seen,
            "steps": s.steps,
            "decisions": s.period,
            "micro_batch": self.step.micro_batch,
            "events": s.events,
            "concurrent_runs": c.concurrent_runs,
            "world_size": self.dist.world_size,
            "device_name": _device_name(self.device),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "graphs": getattr(self.step, "mode", None),
        }
        if self.lm is not None:
            summary.update(self.lm.summary_fields(recs, final_done, s.samples_seen))
        return summary

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

    def _free_memory(self) -> None:
        if hasattr(self.step, "free_graphs"):
            self.step.free_graphs()
        if self.device.type == "cuda":
            gc.collect()  # tensors still referenced from the error's traceback frames
            torch.cuda.empty_cache()

    def _set_micro_batch(self, size: int) -> None:
        """Split every batch into micro-batches of at most ``size`` samples (per process) from now on.

        A CUDA-graph step keys its graphs by input shape only and captured the old split, so its graphs
        are dropped and recaptured at the next call."""
        self.step.micro_batch = int(size)
        if hasattr(self.step, "free_graphs"):
            self.step.free_graphs()

    def _handle_oom(self, failed: int, err: BaseException) -> None:
        if self.config.accumulate:
            self._shrink_micro_batch(failed)
            return
        good = self.state.largest_ok_batch
        if good <= 0 or good >= failed:
            good = max(self.policy.b_min, failed // 2) if good <= 0 else good
        if failed <= self.policy.b_min:
            raise DebaError(f"out of memory at batch size {failed}, the smallest allowed (b_min); "
                            "use a smaller model, --accumulate, --micro-batch, or --amp bf16") from None
        cap = min(good, failed - 1)
        if self.dist.enabled:
            self._persist_oom_limit(failed, b_max_cap=cap)
        self._free_memory()
        self.policy.cap_batch_size(cap)
        self._event(f"out of memory at batch size {failed}; B_max capped at {self.policy.effective_b_max}, "
                    f"continuing the epoch at batch size {self.policy.batch_size}")

    def _shrink_micro_batch(self, failed: int) -> None:
        """--accumulate: halve the micro-batch the failed step ran (the per-process batch when none was set).

        Called again on each failure, so the halving goes on until a step fits; the size found stays."""
        per_process = self.loader.per_rank_batch_size
        current = self.step.micro_batch
        ran = per_process if current is None else min(current, per_process)
        if ran <= 1:
            raise DebaError(f"out of memory at batch size {failed} even with micro-batches of 1 sample; "
                            "use a smaller model or --amp bf16") from None
        size = ran // 2
        if self.dist.enabled:
            self._persist_oom_limit(failed, micro_batch=size)
        self._free_memory()
        self._set_micro_batch(size)
        self.state.micro_batch = size
        self._event(f"micro-batch set to {size} after out of memory at batch size {failed}")

    def _persist_oom_limit(self, failed: int, **limit: int) -> None:
        """Multi-process run: write this rank's limit to the run folder and stop (RestartNeeded).

        A rank that ran out of memory cannot recover in place: the others are already inside this step's
        gradient all-reduce (or the next one), which it would join out of step. Nothing else on this rank
        is written; the checkpoint of the last finished epoch stays the state to resume from, and
        :meth:`_apply_oom_limits` applies the smallest limit every rank wrote when the run starts again."""
        r, w = self.dist.rank, self.dist.world_size
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in limit.items())
        if self.out is None:
            raise RestartNeeded(f"out of memory at batch size {failed} on rank {r} of {w}; a multi-process run "
                                f"without an output folder cannot keep the limit ({what}): give --out") from None
        path = self.out / OOM_LIMITS_GLOB.replace("*", str(r))
        merged = dict(limit)
        if path.exists():
            old = read_json(path)
            for k, v in old.items():
                if k in ("b_max_cap", "micro_batch") and isinstance(v, int):
                    merged[k] = min(v, merged.get(k, v))
        make_dir(self.out)
        write_json(path, {**merged, "failed_batch_size": failed, "rank": r, "world_size": w,
                          "epoch": self._current_epoch})
        raise RestartNeeded(f"out of memory at batch size {failed} on rank {r} of {w}: stopping, the other ranks "
                            f"cannot go on with this one; {what} is kept in {path.name} and applied when the run "
                            "is started again with --resume (torchrun --max-restarts N does it for you)") from None

    def _apply_oom_limits(self) -> None:
        """Apply the limits ranks of an earlier start of this run wrote when they ran out of memory.

        Every rank reads the run folder (shared, as for the checkpoint) and the smallest value of each
        limit is agreed with one all-reduce, so all ranks train at the same sizes even if one could not
        read a file."""
        caps: list[int] = []
        micros: list[int] = []
        if self.out is not None and self.out.is_dir():
            for path in sorted(self.out.glob(OOM_LIMITS_GLOB)):
                saved = read_json(path)
                for key, into in (("b_max_cap", caps), ("micro_batch", micros)):
                    v = saved.get(key)
                    if v is None:
                        continue
                    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                        raise DebaError(f"{path}: {key} must be an integer >= 1, got {v!r}")
                    into.append(v)
        none = 2 ** 62
        cap, micro = min(caps, default=none), min(micros, default=none)
        if self.dist.enabled:
            import torch.distributed as dist

            t = torch.tensor([cap, micro], dtype=torch.int64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            cap, micro = (int(v) for v in t.tolist())
        if cap != none and (self.policy.b_max_cap is None or cap < self.policy.b_max_cap):
            self.policy.cap_batch_size(max(cap, self.policy.b_min))
            self._event(f"B_max capped at {self.policy.effective_b_max} (out of memory in an earlier start of "
                        f"this run), training at batch size {self.policy.batch_size}")
        if micro != none and (self.step.micro_batch is None or micro < self.step.micro_batch):
            self._set_micro_batch(micro)
            self.state.micro_batch = micro
            self._event(f"micro-batch set to {micro} (out of memory in an earlier start of this run)")

    STOP_CHECK_STEPS = 8  # multi-process: ranks agree on a stop request every this many steps

    def _stop_due(self, steps: int) -> bool:
        """Whether to stop at this step boundary; under DDP decided together, so no rank stops alone."""
        if not self.dist.enabled:
            return self._stop.requested
        return steps % self.STOP_CHECK_STEPS == 0 and safety.agree_any(self._stop.requested, self.device, True)

    def _period_due(self) -> bool:
        c, s = self.config, self.state
        done = s.since_decision_samples if c.decision_interval_unit == "samples" else s.since_decision_steps
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
                    # every-k gating counts the steps of the signals' own span: the period or the epoch
                    index = s.since_decision_steps if interval else steps
                    if self.signals.mode == "epoch-avg":
                        self.step.observe_gradients_next = self.signals.should_observe(index)
                    if self.signals.gns:
                        self.step.gns_split_next = self.signals.should_split(index)
                    self.step(x, y)
                    offset += global_b
                    steps += 1
                    samples += global_b
                    s.steps += 1
                    s.samples_seen += global_b
                    s.largest_ok_batch = max(s.largest_ok_batch, size)
                    if batch_steps and batch_steps[-1][0] == global_b:
                        batch_steps[-1][1] += 1
                    else:
                        batch_steps.append([global_b, 1])
                    if interval:
                        s.since_decision_steps += 1
                        s.since_decision_samples += global_b
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
                self._handle_oom(size, e)
                restart = True
            if not restart:
                break
        return {"steps": steps, "samples": samples, "batch_at_start": batch_at_start, "batch_steps": batch_steps,
                "periods": periods}

    def _decide(self, period_end_epoch: int) -> dict:
        """Read the period's signals (the one host sync), let the policy decide, keep the record."""
        c, s = self.config, self.state
        sig = self.signals.end_epoch()
        s.period += 1
        # a non-finite noise sample (a non-finite gradient norm) makes the period non-finite too
        nonfinite = sig["nonfinite_steps"] > 0 or sig.get("gns_nonfinite", 0) > 0 or not all(
            v is not None and math.isfinite(v) for v in (sig["grad_var"], sig["grad_norm"], sig["loss"]))
        # the whole trained state: parameters, gradients and buffers (BatchNorm's running_var can overflow alone)
        bad_state = safety.nonfinite_tensors(self.model)
        nonfinite = safety.agree_any(nonfinite or bool(bad_state), self.device, self.dist.enabled)
        signals = EpochSignals(s.period, sig["grad_var"], sig["grad_norm"], None if nonfinite else sig["loss"],
                               gns_g2=sig.get("gns_g2"), gns_trace=sig.get("gns_trace"))
        if self.dist.enabled:  # decided once on rank 0 and broadcast, so every rank makes the identical decision
            rec = self._broadcast_decision(signals)
        else:
            rec = self.policy.step(signals).to_dict()
        rec.update(steps=sig["steps"], nonfinite_steps=sig["nonfinite_steps"], epoch_of_period=period_end_epoch)
        if bad_state:
            rec["nonfinite_tensors"] = bad_state
        if self.signals.gns:
            rec.update({k: sig[k] for k in NOISE_FIELDS})
        if c.decision_interval:
            # steps as counted here (per process); sig["steps"] sums over ranks
            rec.update(steps=s.since_decision_steps, samples=s.since_decision_samples, global_step=s.steps)
            s.since_decision_steps = s.since_decision_samples = 0
            if nonfinite:
                self._discard_period(rec)
            self._period_snapshot = None
            s.decisions.append(rec)
        return rec

    def _discard_period(self, rec: dict) -> None:
        """Interval mode, non-finite period: back to the model and optimizer at the period's start."""
        c, s = self.config, self.state
        s.nonfinite_events += 1
        snap = self._period_snapshot
        if snap is not None:
            self.model.load_state_dict(snap["model"])
            self.step.load_state_dict(snap["optimizer"])
        self._event(f"non-finite loss or gradient in period {rec['epoch']} ({rec['nonfinite_steps']} step(s)"
                    f"{_tensors_note(rec)}): "
                    f"period discarded, model and optimizer restored to the start of the period "
                    f"({s.nonfinite_events}/{c.max_nonfinite})")
        if c.nonfinite_action == "stop" or s.nonfinite_events >= c.max_nonfinite:
            s.status = "stopped: non-finite"
            self._event(f"stopping: {s.nonfinite_events} non-finite period(s); "
                        "the checkpoint holds the last good state")

    def _broadcast_decision(self, signals: EpochSignals) -> dict:
        import torch.distributed as dist

        box = [None]
        if self.dist.is_main:
            rec = self.policy.step(signals).to_dict()
            box = [{"record": rec, "policy": self.policy.state_dict()}]
        dist.broadcast_object_list(box, src=0)
        if not self.dist.is_main:
            self.policy.load_state_dict(box[0]["policy"])
        return box[0]["record"]

    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, float]:
        """Test accuracy (percent) and mean test loss; one host read. Language models: (None, validation loss)."""
        if self.lm is not None:
            return None, self.lm.evaluate(self.model, self.config.amp)
        model = self.model
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.amp == "bf16" else _null()
        if self.config.precise_bn:
            self._recompute_batchnorm(amp)
        for x, y in self._test_batches():
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp:
                out = model(x)
            loss_sum += torch.nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum().double()
            n += int(y.shape[0])
        model.train(was_training)
        vals = torch.stack([correct, loss_sum]).tolist()
        return 100.0 * vals[0] / max(1, n), vals[1] / max(1, n)

    def _recompute_batchnorm(self, amp) -> None:
        """--precise-bn N: BatchNorm statistics averaged over N training batches of the current epoch's order
        before the evaluation (deba.training.precise_bn says why)."""
        from .precise_bn import recompute_batchnorm_stats

        def inputs():
            for x, _ in self.loader.batches(start_sample=0):
                yield x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

        def forward(x):
            with amp:
                self.model(x)

        recompute_batchnorm_stats(self.model, inputs(), self.config.precise_bn, forward)

    def _test_batches(self):
        if isinstance(self.test_loader, torch.utils.data.DataLoader):  # a user's test Dataset
            non_blocking = self.device.type == "cuda"
            for batch in self.test_loader:
                if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                    raise DebaError("test_dataset items must be (input, label) pairs")
                yield batch[0].to(self.device, non_blocking=non_blocking), batch[1].to(self.device,
                                                                                      non_blocking=non_blocking)
            return
        self.test_loader.set_epoch(0)
        yield from self.test_loader.batches(start_sample=0, drop_last=False)

    def fit(self, resume: bool = False, resume_fallback: bool = False) -> dict:
        """Train to ``config.epochs`` (from the checkpoint with ``resume``) and return the run's summary.

        Under torchrun, a process group this trainer started is ended when the run completes. Not when fit
        raises: tearing down an NCCL group is collective (pytorch/pytorch#122358), and a rank that failed alone
        (out of memory, say) could wait in it for peers that wait in an all-reduce for it.
        """
        try:
            summary = self._fit(resume, resume_fallback)
        except RuntimeError as e:  # gloo / NCCL report a collective past its timeout as a RuntimeError
            if not (self.dist.enabled and safety.is_collective_timeout(e)):
                raise
            raise RankTimeout(f"rank {self.dist.rank} of {self.dist.world_size}: a collective waited longer than "
                              f"{option('dist_timeout')} {self.config.dist_timeout:g} s (a rank stopped "
                              "responding or died): stopping so the job can start again with --resume "
                              "(torchrun --max-restarts N does it)") from None
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
            self._apply_oom_limits()
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
            periods = stats["periods"]
            losses = [(p["loss"], p["steps"]) for p in periods if p["loss"] is not None]
            rec = {"epoch": epoch, "batch_size": stats["batch_at_start"], "grad_var": None, "grad_norm": None,
                   "loss": (sum(lo * n for lo, n in losses) / sum(n for _, n in losses)) if losses else None,
                   "dnorm": None, "dloss": None, "conf": None, "decision": "periods", "in_cooldown": None,
                   "non_finite": any(p["non_finite"] for p in periods),
                   "reason": f"{len(periods)} decision(s) in this epoch, see decisions.jsonl",
                   "next_batch_size": self.policy.batch_size, "periods": [p["epoch"] for p in periods]}
            nonfinite = False  # handled per period
        else:
            rec = self._decide(period_end_epoch=epoch)
            rec["epoch"] = epoch
            nonfinite = rec["non_finite"]
        self._sync()
        train_time = time.perf_counter() - t0
        s.train_time_s += train_time
        s.epoch = epoch

        if nonfinite:
            s.nonfinite_events += 1
            self.model.load_state_dict(snapshot["model"])
            self.step.load_state_dict(snapshot["optimizer"])
            self._event(f"non-finite loss or gradient ({rec.get('nonfinite_steps', 0)} step(s){_tensors_note(rec)}): "
                        "epoch discarded, "
                        f"model and optimizer restored to the start of the epoch ({s.nonfinite_events}/{c.max_nonfinite})")
            if c.nonfinite_action == "stop" or s.nonfinite_events >= c.max_nonfinite:
                s.status = "stopped: non-finite"
                self._event(f"stopping: {s.nonfinite_events} non-finite epoch(s); the checkpoint holds the last good state")

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
        self._log_tensorboard(rec)
        for cb in self.callbacks:
            fn = getattr(cb, "on_epoch_end", None)
            if fn:
                fn(self, rec)
        if c.checkpoint_every and (epoch % c.checkpoint_every == 0 or s.status != "running"):
            self.save()
        self.write_outputs()

    def _log_tensorboard(self, rec: dict) -> None:
        if not self.tb:
            return
        for key in ("batch_size", "loss", "grad_var", "grad_norm", "dnorm", "dloss", "conf", "test_acc", "lr"):
            v = rec.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(key, v, rec["epoch"])


def _tensors_note(rec: dict) -> str:
    names = rec.get("nonfinite_tensors")
    return f"; non-finite state: {', '.join(names)}" if names else ""


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def train(config: TrainConfig, *, resume: bool = False, resume_fallback: bool = False, model: torch.nn.Module | None = None, dataset: Any = None,
          train_dataset: Any = None, test_dataset: Any = None, num_classes: int | None = None,
          dataloader_kwargs: dict | None = None, callbacks: list[Any] = ()) -> dict:
    """Run one training run and return its summary (also written to ``config.out``).

    Data, one of: ``config.dataset`` by name (default); ``dataset=`` an in-memory
    :class:`deba.data.ArrayDataset`; or a user's own map-style ``torch.utils.data.Dataset`` of
    ``(input, label)`` pairs as ``train_dataset=`` (and optionally ``test_dataset=``, evaluated with a
    plain ``DataLoader``; without it nothing is evaluated), read through an ordinary ``DataLoader``
    rebuilt for each batch size; ``dataloader_kwargs`` (``num_workers``, ``collate_fn``, ...) go to both
    loaders. ``num_classes`` is needed to build a model by name for a user's dataset.
    """
    trainer = Trainer(config, model=model, dataset=dataset, train_dataset=train_dataset, test_dataset=test_dataset,
                      num_classes=num_classes, dataloader_kwargs=dataloader_kwargs, callbacks=callbacks)
    return trainer.fit(resume=resume, resume_fallback=resume_fallback)


def read_summary(out: str | Path) -> dict:
    return read_json(Path(out) / SUMMARY_FILE)
