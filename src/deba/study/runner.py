"""Running a study: `deba train` children (several at once), a lock per run folder (deba.runlock), children
that die with the study (PR_SET_PDEATHSIG), the time limit, and each run's outcome."""

from __future__ import annotations

import functools
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import DebaError, option
from ..logio import atomic_write_text, dumps, make_dir
from ..runfolder import RUN_LOG_FILE, SUMMARY_FILE, summary_status
from ..runlock import LOCK_FD_ENV, LOCK_NAME, RunLock
from .plan import (
    RunPlan,
    _read_json_quiet,
    _result_text,
    expand,
    resolve_config,
    run_status,
    shard_plans,
    unfinished_dependencies,
)
from .spec import SPEC_COPY, StudySpec, arm_depths

RUN_CONFIG = "study-config.json"  # what the study hands to `deba train --config`

# exit codes of `deba study`
EXIT_OK, EXIT_FAILED, EXIT_TIME_LIMIT, EXIT_WAITING = 0, 1, 3, 4


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "deba", "train"]


def _clear_partial(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name in (LOCK_NAME, RUN_LOG_FILE):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# --- running -----------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    run_id: str
    status: (
        str  # complete, stopped, failed, interrupted, skipped-running, conflict, (and the run_status ones)
    )
    detail: str = ""
    seconds: float | None = None


@dataclass
class StudyResult:
    outcomes: list[RunOutcome]
    exit_code: int
    time_limit_hit: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


@dataclass
class _Active:
    plan: RunPlan
    proc: subprocess.Popen
    lock: RunLock
    log: io.TextIOBase
    started: float
    resumed: bool


def _launch(
    plan: RunPlan,
    out: Path,
    concurrent: int,
    train_command: Sequence[str],
    lock: RunLock,
    resume: bool,
    config: Mapping[str, Any] | None = None,
) -> _Active:
    d = plan.dir(out)
    if not resume:
        _clear_partial(d)
    conf = dict(plan.config if config is None else config, concurrent_runs=concurrent)
    atomic_write_text(d / RUN_CONFIG, dumps({"schema_version": 1, **conf}, indent=2) + "\n")
    cmd = [*train_command, "--config", str(d / RUN_CONFIG), "--out", str(d), "--quiet"]
    if resume:
        cmd.append("--resume")
    log = open(d / RUN_LOG_FILE, "a", encoding="utf-8")
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {' '.join(cmd)}\n")
    log.flush()
    # the child adopts the study's lock on the run folder (deba.runlock): one lock, not two refusing each other
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{LOCK_FD_ENV: str(lock.fd)})
    try:
        # a session of its own: the study decides when its runs stop (and stops their workers with them)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=(lock.fd,),
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    except OSError:
        log.close()
        raise
    return _Active(plan, proc, lock, log, time.monotonic(), resume)


def _die_with_parent(parent: int) -> None:
    """In the child before exec: ask Linux to SIGKILL it when the study dies (PR_SET_PDEATHSIG), so a study
    killed with SIGKILL leaves no training running that its rerun would start again beside. Elsewhere a
    no-op: the run folder's lock (held by the orphan) still keeps a rerun from starting the same run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the study died before the request took effect
        os._exit(1)


def _stop(active: _Active, grace_s: float = 30.0) -> None:
    """Stop a run we started (its whole process group: workers too), politely first."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if active.proc.poll() is not None:
            return
        try:
            os.killpg(active.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            active.proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _finish(active: _Active, out: Path, interrupted: bool = False) -> RunOutcome:
    rc = active.proc.wait()
    secs = time.monotonic() - active.started
    active.log.write(f"# exit code {rc}\n")
    active.log.close()
    active.lock.release()
    summary = _read_json_quiet(active.plan.dir(out) / SUMMARY_FILE) or {}
    status = summary_status(summary)
    if status == "complete":
        return RunOutcome(active.plan.run_id, "complete", _result_text(summary), secs)
    if status.startswith(("stopped", "diverged")):
        return RunOutcome(active.plan.run_id, "stopped", status, secs)
    if interrupted:
        return RunOutcome(active.plan.run_id, "interrupted", "time limit: resumes next time", secs)
    tail = _log_tail(active.plan.dir(out) / RUN_LOG_FILE)
    return RunOutcome(active.plan.run_id, "failed", f"exit code {rc}" + (f": {tail}" if tail else ""), secs)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("# ")]
    return lines[-1][:200] if lines else ""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    *,
    parallel: int = 1,
    shard: tuple[int, int] | None = None,
    train_command: Sequence[str] | None = None,
    time_limit_s: float | None = None,
    poll_s: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run every unfinished run of (this shard of) the grid, ``parallel`` at a time.

    Finished runs (summary status complete, or stopped by the trainer) are never redone; a run with a
    checkpoint resumes from it; any other started run restarts from scratch. Runs locked by another study
    process are left to it. A failed run is reported and does not stop the others. With ``time_limit_s``,
    no run starts after the limit and running ones are stopped at it (they resume next time).

    A run with dependencies (see the module docstring) starts once the runs it needs are finished; runs
    without dependencies go first. Where a needed run is not in this invocation (another shard, another
    process) and not finished, the run is ``waiting`` (exit code EXIT_WAITING: run again later); where a
    needed run failed here, it is ``blocked``.
    """
    if parallel < 1:
        raise DebaError(f"{option('parallel')} must be >= 1, got {parallel}")
    log = log or (lambda s: print(s, flush=True))
    out = Path(out)
    train_command = list(train_command or default_train_command())
    plans = shard_plans(expand(spec), shard)
    _check_before_start(spec, plans, out)
    outcomes, queue = _queue_unfinished(spec, plans, out)
    concurrent = max(1, min(parallel, len(queue)))
    log(
        f"study {spec.name}: {len(plans)} runs in this {'shard' if shard else 'grid'}, "
        f"{len(plans) - len(queue)} finished, {len(queue)} to run, {concurrent} at a time"
    )
    started = time.monotonic()
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # `kill` or a job scheduler's SIGTERM must not orphan the runs: turn it into the Ctrl-C path
        # (_schedule's)
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        time_limit_hit = _schedule(
            queue,
            outcomes,
            out,
            parallel=parallel,
            concurrent=concurrent,
            train_command=train_command,
            time_limit_s=time_limit_s,
            started=started,
            poll_s=poll_s,
            log=log,
        )
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return _study_result(plans, outcomes, time_limit_hit)


def _check_before_start(spec: StudySpec, plans: Sequence[RunPlan], out: Path) -> None:
    """Refuse runs made with another config and missing data; make the study folder, copy the spec in."""
    conflicts = [(p, run_status(p, out, check_lock=False)) for p in plans]
    conflicts = [(p, st) for p, st in conflicts if st[0] == "conflict"]
    if conflicts:
        p, (_, detail) = conflicts[0]
        raise DebaError(
            f"run {p.run_id} in {out} was made with another config ({detail}); use another --out "
            f"or delete that run" + (f" ({len(conflicts)} runs conflict)" if len(conflicts) > 1 else "")
        )
    for d, path in spec.data.items():
        if d in spec.datasets and not Path(os.path.expandvars(os.path.expanduser(path))).exists():
            raise DebaError(f"data for {d} not found: {path} (set it with --data {d}=PATH)")
    make_dir(out, "study folder")
    if spec.text:
        atomic_write_text(out / SPEC_COPY, spec.text)


def _queue_unfinished(
    spec: StudySpec, plans: Sequence[RunPlan], out: Path
) -> tuple[dict[str, RunOutcome], list[RunPlan]]:
    """(outcomes of the finished runs, the other runs in the order to start them)."""
    outcomes: dict[str, RunOutcome] = {}
    queue: list[RunPlan] = []
    for p in plans:
        st, detail = run_status(p, out)
        if st in ("complete", "stopped"):
            outcomes[p.run_id] = RunOutcome(p.run_id, st, detail)
        else:
            queue.append(p)
    depth = arm_depths(spec)
    # arms first that others read from; within a depth, the runs some queued run needs first, so the
    # dependent runs can start as soon as possible (and a --time-limit shard ends with fewer left waiting)
    needed = {rid for p in queue for rid in p.needs}
    queue.sort(key=lambda p: (depth[p.arm], p.run_id not in needed))  # stable: run-id order within
    return outcomes, queue


def _schedule(
    queue: list[RunPlan],
    outcomes: dict[str, RunOutcome],
    out: Path,
    *,
    parallel: int,
    concurrent: int,
    train_command: Sequence[str],
    time_limit_s: float | None,
    started: float,
    poll_s: float,
    log: Callable[[str], None],
) -> bool:
    """The scheduling loop: start queued runs as slots free up, collect the ones that end, stop them all at
    the time limit. Fills ``outcomes``; returns whether the time limit was hit."""
    active: list[_Active] = []
    time_limit_hit = False
    try:
        while queue or active:
            over = time_limit_s is not None and time.monotonic() - started >= time_limit_s
            if over and not time_limit_hit:
                time_limit_hit = True
                _stop_at_time_limit(queue, active, outcomes, out, time_limit_s, log)
                active = []
                queue = []
                break
            while queue and len(active) < parallel:
                p, held = _next_startable(queue, active, outcomes, out)
                if p is None:
                    break
                if held is not None:
                    outcomes[p.run_id] = held
                    log(f"  {held.status:11s} {p.run_id}  {held.detail}")
                    continue
                a = _start_run(p, out, concurrent, train_command, outcomes, log)
                if a is not None:
                    active.append(a)
                    log(f"  {'resume' if a.resumed else 'start':11s} {p.run_id}")
            if not active:
                if queue:  # every run left waits for a run that cannot start here (guard; cycles are refused)
                    for p in queue:
                        outcomes[p.run_id] = RunOutcome(p.run_id, "waiting", "dependencies cannot start here")
                    queue = []
                continue
            time.sleep(poll_s)
            active = _collect_ended(active, outcomes, out, log)
    except BaseException:
        # Ctrl-C, SIGTERM or an error of ours: leave no run of ours behind, each one resumable
        for a in active:
            _stop(a, grace_s=10.0)
            a.log.close()
            a.lock.release()
        raise
    return time_limit_hit


def _stop_at_time_limit(
    queue: Sequence[RunPlan],
    active: Sequence[_Active],
    outcomes: dict[str, RunOutcome],
    out: Path,
    time_limit_s: float,
    log: Callable[[str], None],
) -> None:
    """Stop the running runs (they resume next time) and mark the queued ones not started."""
    log(
        f"time limit of {time_limit_s:.0f}s reached: stopping {len(active)} running run(s), "
        f"{len(queue)} not started"
    )
    for a in active:
        _stop(a)
    for a in active:
        o = _finish(a, out, interrupted=True)
        outcomes[o.run_id] = o
        log(f"  {o.status:11s} {o.run_id}  {o.detail}")
    for p in queue:
        outcomes[p.run_id] = RunOutcome(p.run_id, "not-started", "time limit")


def _start_run(
    p: RunPlan,
    out: Path,
    concurrent: int,
    train_command: Sequence[str],
    outcomes: dict[str, RunOutcome],
    log: Callable[[str], None],
) -> _Active | None:
    """Lock a run's folder and start it (resuming it where it can); None (its outcome recorded) where it
    is not started."""
    d = p.dir(out)
    lock = RunLock(d)
    if not lock.acquire():
        outcomes[p.run_id] = RunOutcome(p.run_id, "skipped-running", f"locked by {lock.holder()}")
        log(f"  skip        {p.run_id}  (another process runs it: {lock.holder()})")
        return None
    st, detail = run_status(p, out, check_lock=False)  # another process may have finished it
    if st in ("complete", "stopped"):
        lock.release()
        outcomes[p.run_id] = RunOutcome(p.run_id, st, detail)
        return None
    resume = st == "resumable"
    try:
        config = resolve_config(p, out) if p.deps else None
    except DebaError as e:
        lock.release()
        outcomes[p.run_id] = RunOutcome(p.run_id, "failed", f"cannot resolve dependencies: {e}")
        log(f"  failed      {p.run_id}  cannot resolve dependencies: {e}")
        return None
    try:
        a = _launch(p, out, concurrent, train_command, lock, resume, config)
    except OSError as e:
        lock.release()
        outcomes[p.run_id] = RunOutcome(p.run_id, "failed", f"cannot start: {e}")
        log(f"  failed      {p.run_id}  cannot start: {e}")
        return None
    return a


def _collect_ended(
    active: Sequence[_Active], outcomes: dict[str, RunOutcome], out: Path, log: Callable[[str], None]
) -> list[_Active]:
    """Finish the runs that have ended (their outcomes recorded); returns the ones still running."""
    still = []
    for a in active:
        if a.proc.poll() is None:
            still.append(a)
            continue
        o = _finish(a, out)
        outcomes[o.run_id] = o
        log(f"  {o.status:11s} {o.run_id}  {o.detail}")
    return still


def _study_result(
    plans: Sequence[RunPlan], outcomes: Mapping[str, RunOutcome], time_limit_hit: bool
) -> StudyResult:
    """The outcomes in grid order and the exit code of `deba study`."""
    ordered = [outcomes[p.run_id] for p in plans if p.run_id in outcomes]
    failed = sum(o.status in ("failed", "blocked") for o in ordered)
    waiting = sum(o.status == "waiting" for o in ordered)
    code = (
        EXIT_FAILED if failed else EXIT_TIME_LIMIT if time_limit_hit else EXIT_WAITING if waiting else EXIT_OK
    )
    return StudyResult(ordered, code, time_limit_hit)


# statuses of runs of this invocation that will not finish in it
_NOT_FINISHING = ("failed", "blocked", "waiting", "conflict", "interrupted", "not-started")


def _next_startable(
    queue: list[RunPlan], active: Sequence[_Active], outcomes: Mapping[str, RunOutcome], out: Path
) -> tuple[RunPlan | None, RunOutcome | None]:
    """Take the first queued run that can be decided now: (run, None) to start it, (run, outcome) for a run
    that cannot run in this invocation (removed from the queue either way), (None, None) when every queued
    run waits for a queued or running one."""
    pending = {p.run_id for p in queue} | {a.plan.run_id for a in active}
    for i, p in enumerate(queue):
        held: RunOutcome | None = None
        wait_here = False
        for rid in unfinished_dependencies(p, out):
            if rid in pending:
                wait_here = True
                continue
            o = outcomes.get(rid)
            if o is not None and o.status in ("failed", "blocked", "conflict"):
                held = RunOutcome(p.run_id, "blocked", f"needs {rid}, which {o.status} here")
            elif o is not None and o.status == "skipped-running":
                held = RunOutcome(p.run_id, "waiting", f"needs {rid}, which another process is running")
            elif o is not None and o.status in _NOT_FINISHING:
                held = RunOutcome(p.run_id, "waiting", f"needs {rid}, which {o.status} here")
            else:
                held = RunOutcome(
                    p.run_id,
                    "waiting",
                    f"needs {rid}, which is not finished and not in this invocation (another shard?)",
                )
            break
        if held is not None:
            queue.pop(i)
            return p, held
        if not wait_here:
            queue.pop(i)
            return p, None
    return None, None

