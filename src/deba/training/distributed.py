"""Distributed set-up for the trainer (torchrun): joining and ending the process group, the errors that make
a multi-process run stop so it can be started again, and the collectives the trainer's decisions need."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import DebaError, option
from ..policy import BatchSizePolicy, DecisionRecord, EpochSignals
from . import safety


class RestartNeeded(DebaError):
    """A multi-process run ran out of memory on one rank: it cannot go on in this process group (the other
    ranks wait in a collective this rank will never join), so it stops; the limit it learnt is written to
    the run folder and applied when the run is started again with ``--resume``. Exit code 75 is sysexits'
    EX_TEMPFAIL ("try again"); ``torchrun --max-restarts N`` restarts on any failure."""

    exit_code = 75


class RankTimeout(RestartNeeded):
    """A collective waited longer than ``dist_timeout`` for a rank (stopped, hung or dead): exit 75, so
    ``torchrun --max-restarts N`` starts the job again and it resumes from the checkpoint."""


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


def join_process_group(device_pref: str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...).

    ``deba.training.trainer.init_distributed`` calls this and records that deba started the group (see
    ``process_group_started`` there, which ``deba.cli`` reads)."""
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
    return DistInfo(rank, world, local, here)


def release_distributed() -> None:
    """End the default process group if one is alive (safe to call twice, and where none was started)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_decision(policy: BatchSizePolicy, signals: EpochSignals, is_main: bool) -> DecisionRecord:
    """The policy decides once, on rank 0; its record and state are broadcast, so every rank makes the
    identical decision."""
    import torch.distributed as dist

    box = [None]
    if is_main:
        rec = policy.step(signals).to_dict()
        box = [{"record": rec, "policy": policy.state_dict()}]
    dist.broadcast_object_list(box, src=0)
    if not is_main:
        policy.load_state_dict(box[0]["policy"])
    return DecisionRecord.from_dict(box[0]["record"])


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """All-reduce (sum) a few numbers over the ranks, as float64."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def min_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """All-reduce (minimum) a few integers over the ranks."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [int(v) for v in t.tolist()]


def rank_timeout(err: RuntimeError, info: DistInfo, timeout_s: float | None) -> RankTimeout | None:
    """The RankTimeout to raise for ``err`` (gloo / NCCL report a collective past its timeout as a
    RuntimeError; ``--dist-timeout``), or None where ``err`` is something else."""
    if not (info.enabled and safety.is_collective_timeout(err)):
        return None
    return RankTimeout(f"rank {info.rank} of {info.world_size}: a collective waited longer than "
                       f"{option('dist_timeout')} {timeout_s:g} s (a rank stopped "
                       "responding or died): stopping so the job can start again with --resume "
                       "(torchrun --max-restarts N does it)")
