"""Where a grid's runs execute: one dispatch layer for the notebooks, ``make results`` and sweeps.

Executors (``--executor`` on ``scripts/study.py``, or ``MNEMONICS_EXECUTOR``):

* ``local``  submitit's LocalExecutor: every run its own process, at most ``jobs`` at a time
  (one GPU each when runs go to CUDA, so at most as many as there are GPUs);
* ``slurm``  one Slurm job array per grid (submitit's SlurmExecutor): partition, GPUs per run,
  time limit, ``--requeue``, at most ``array_parallelism`` array tasks at once;
* ``debug``  in this process, one run after the other (tests, notebooks under a debugger).

Every job is a :class:`RunJob`, a ``submitit.helpers.Checkpointable``: on preemption or at the time
limit submitit calls :meth:`RunJob.checkpoint` and requeues the same job, which resumes from the
trainer's last phase checkpoint (``trainer.run_incremental``). The results ledger stays the single
join point: a job publishes its run directory atomically (``results.run_or_load``), the driver
reads the ledger, and resubmitting a grid sends only what the ledger lacks.

What submitit does not do and this module does: the cap on concurrent local runs (LocalExecutor
starts every submission at once), one GPU per local run, one resubmission of a run whose process
was killed from outside (the out-of-memory killer: no Python exception, no checkpoint call) with
one concurrent run fewer, the live count of runs and the failure reports (config and log tail).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "debug")
EXECUTOR_ENV = "MNEMONICS_EXECUTOR"
LOG_TAIL_LINES = 20


class DispatchError(ValueError):
    """Bad dispatch input (unknown executor, no ``sbatch`` for Slurm, ...); the message names the fix."""


@dataclass(frozen=True)
class SlurmOptions:
    """What one array task asks Slurm for. ``time_min``: each task's time limit (minutes); at it
    the task is signalled, checkpointed and requeued, up to ``max_requeue`` times."""

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: int | None = None
    time_min: int = 12 * 60
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    max_requeue: int = 3
    signal_delay_s: int = 120
    setup: tuple[str, ...] = ()  # shell lines before the run, e.g. "module load cuda"
    job_name: str = "mnemonics"


@dataclass(frozen=True)
class DispatchSettings:
    """How a grid runs. ``folder``: submitit's job files and logs (default: ``<checkpoint root>/
    submitit``, an ignored folder); ``jobs``: concurrent local runs; ``threads``: torch threads per
    run (default: cores / jobs when jobs > 1, torch's own default otherwise); ``kill_retries``: how
    often a run killed from outside is sent again; ``wait``: False returns once a Slurm array is
    queued (resubmit the grid later: finished runs are loaded, the rest sent again)."""

    executor: str | None = None  # None: $MNEMONICS_EXECUTOR, else local
    jobs: int = 1
    folder: Path | None = None
    threads: int | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    kill_retries: int = 1
    wait: bool = True
    poll_s: float = 1.0
    local_timeout_min: float = 14 * 24 * 60  # LocalExecutor's default is 2 minutes


def resolve_executor(name: str | None = None) -> str:
    """``name``, else ``$MNEMONICS_EXECUTOR``, else ``local``; unknown names are refused."""
    chosen = name or os.environ.get(EXECUTOR_ENV) or "local"
    if chosen not in EXECUTORS:
        where = "--executor" if name else EXECUTOR_ENV
        raise DispatchError(f"unknown executor {chosen!r} ({where}): expected one of {', '.join(EXECUTORS)}")
    return chosen


def default_folder() -> Path:
    from mnemonics_lib.trainer import checkpoint_root

    return checkpoint_root() / "submitit"


# ------------------------------------------------------------------ the job
class RunJob(submitit.helpers.Checkpointable):
    """One task of a grid (a :class:`study.Task`: it has ``compute(root, device)``), computed (or
    loaded) through the ledger. Returns
    ``{"status": "computed" | "busy", "wall_s", "error"}``; the record itself is read back from the
    ledger by the driver."""

    def __init__(self, task: Any, root: str, device: str | None = "auto", threads: int | None = None):
        self.task, self.root, self.device, self.threads = task, str(root), device, threads

    def __call__(self) -> dict[str, Any]:
        from . import results

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        try:
            self.task.compute(self.root, self.device)
        except results.RunBusyError as e:  # another process computes it: not a failure
            return {"status": "busy", "wall_s": time.perf_counter() - t0, "error": str(e)}
        return {"status": "computed", "wall_s": time.perf_counter() - t0, "error": None}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or timed out: requeue this same job. Nothing to save here: the trainer has
        written its phase checkpoint at the last phase boundary and resumes from it."""
        return submitit.helpers.DelayedSubmission(RunJob(self.task, self.root, self.device, self.threads))


# ------------------------------------------------------------------ outcomes and progress
@dataclass
class JobResult:
    """How one task's job ended. ``status``: computed | busy | failed | skipped | submitted."""

    task: Any
    status: str
    wall_s: float = 0.0
    error: str | None = None
    log: str | None = None  # the job's log file (stderr), where one exists
    log_tail: str = ""
    job_id: str | None = None


class Progress:
    """The live count: done / running / failed / queued, a tqdm bar, and one line per failure
    with its log path (``say``)."""

    def __init__(self, total: int, say: Callable[[str], None], bar: bool = True):
        self.total, self.say = total, say
        self.done = self.running = self.failed = 0
        self._bar = None
        if bar and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="run", desc="runs", disable=None)

    @property
    def queued(self) -> int:
        return self.total - self.done - self.failed - self.running

    def line(self) -> str:
        return f"done {self.done} / running {self.running} / failed {self.failed} / queued {self.queued}"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.line(), refresh=True)

    def started(self, task: Any) -> None:
        self.running += 1
        self._show()

    def finished(self, res: JobResult) -> None:
        self.running -= 1
        if res.status == "failed":
            self.failed += 1
            self.say(f"FAILED {res.task.describe()}: {res.error}" + (f"; log: {res.log}" if res.log else ""))
        else:
            self.done += 1
            self.say(f"{res.status} {res.task.describe()} in {res.wall_s:.0f}s  [{self.line()}]")
        if self._bar is not None:
            self._bar.update(1)
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def log_tail(path: str | os.PathLike | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a job's log ('' when there is none)."""
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def failure_report(res: JobResult) -> str:
    """A failure as the CLI prints it: the run, its full config, the error, the log and its tail."""
    cfg = json.dumps(res.task.config.to_dict(), sort_keys=True)
    out = [f"FAILED {res.task.describe()}", f"  config: {cfg}", f"  error: {res.error}"]
    if res.log:
        out.append(f"  log: {res.log}")
    if res.log_tail:
        out += ["  log tail:"] + [f"    {line}" for line in res.log_tail.splitlines()]
    return "\n".join(out)


# ------------------------------------------------------------------ executors
def _collect(job: Any, task: Any) -> JobResult:
    """The finished submitit job's result, or its failure with the log's tail. A job that left no
    result at all (its process killed from outside: the out-of-memory killer, ``kill -9``, a node
    failure) is marked ``killed``; a Python exception in the run is not."""
    stderr = str(job.paths.stderr)
    try:
        out = job.result()
    except submitit.core.utils.UncompletedJobError as e:
        text = str(e).strip()
        killed = not isinstance(e, submitit.core.utils.FailedJobError) and "has not produced any output" in text
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # a Python failure's message ends with its traceback's last line: the exception itself
        err = ("killed from outside: no result and no Python exception (out of memory? see `dmesg` or "
               "`sacct -j <job id>`)" if killed else (lines[-1] if lines else type(e).__name__))
        tail = log_tail(stderr) or log_tail(job.paths.stdout)
        return JobResult(task, "killed" if killed else "failed", error=err, log=stderr, log_tail=tail,
                         job_id=str(job.job_id))
    return JobResult(task, out["status"], out["wall_s"], out["error"], log=stderr, job_id=str(job.job_id))


def _run_debug(todo: Sequence[Any], root: str, device: str | None, settings: DispatchSettings,
               progress: Progress, expired: Callable[[], bool]) -> list[JobResult]:
    out = []
    for t in todo:
        if expired():
            out.append(JobResult(t, "skipped", error="time limit reached"))
            continue
        progress.started(t)
        t0 = time.perf_counter()
        try:
            r = RunJob(t, root, device, settings.threads)()
            res = JobResult(t, r["status"], r["wall_s"], r["error"])
        except Exception as e:  # noqa: BLE001 - reported per task, the batch goes on
            log.exception("task %s failed", t.describe())
            res = JobResult(t, "failed", time.perf_counter() - t0, f"{type(e).__name__}: {e}")
        progress.finished(res)
        out.append(res)
    return out


def _gpu_slots(device: str | None, jobs: int) -> list[int | None]:
    """One slot per concurrent local run: a GPU index each when runs go to CUDA, else None."""
    if device == "cpu":
        return [None] * jobs
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        if device == "cuda":
            raise DispatchError("device cuda asked for, but no CUDA device is visible; use --device cpu")
        return [None] * jobs
    return list(range(min(jobs, n)))


def _run_local(todo: Sequence[Any], root: str, device: str | None, settings: DispatchSettings,
               progress: Progress, expired: Callable[[], bool]) -> list[JobResult]:
    folder = Path(settings.folder or default_folder()) / "local" / "%j"
    executor = submitit.LocalExecutor(folder=folder)
    slots = _gpu_slots(device, settings.jobs)
    threads = settings.threads or (max(1, (os.cpu_count() or 1) // len(slots)) if len(slots) > 1 else None)
    queue, running, results = deque(todo), {}, {}
    cap, retried = len(slots), []
    while queue or running:
        while queue and len(running) < cap and slots and not expired():
            t, slot = queue.popleft(), slots.pop(0)
            params: dict[str, Any] = {"timeout_min": settings.local_timeout_min}
            if slot is not None:
                params.update(gpus_per_node=1, visible_gpus=[slot])
            executor.update_parameters(**params)
            job = executor.submit(RunJob(t, root, device, threads))
            running[job.job_id] = (job, t, slot)
            progress.started(t)
            log.info("local job %s: %s (log %s)", job.job_id, t.describe(), job.paths.stderr)
        if not running:
            break
        time.sleep(settings.poll_s)
        for jid in [j for j, (job, _, _) in running.items() if job.done()]:
            job, t, slot = running.pop(jid)
            res = _collect(job, t)
            if res.status == "killed" and retried.count(t.key) < settings.kill_retries:
                # killed from outside (OOM killer): once more, with one concurrent run fewer; it
                # resumes from its phase checkpoint
                retried.append(t.key)
                cap = max(1, cap - 1)
                progress.running -= 1
                progress.say(f"{t.describe()} was killed ({res.error}); sent again, resuming from its "
                             f"phase checkpoint, with {cap} concurrent run(s); log: {res.log}")
                queue.appendleft(t)
            else:
                res.status = "failed" if res.status == "killed" else res.status
                progress.finished(res)
                results[t.key] = res
            slots.append(slot)
    for t in queue:
        results[t.key] = JobResult(t, "skipped", error="time limit reached")
    return [results[t.key] for t in todo]


def require_sbatch() -> None:
    """Slurm's client commands (submitit submits with sbatch and runs each task under srun)."""
    absent = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if absent:
        raise DispatchError(f"--executor slurm: no `{'`, `'.join(absent)}` on PATH; run on a Slurm login node, "
                            f"or use --executor local")


def slurm_executor(settings: DispatchSettings) -> submitit.SlurmExecutor:
    """The SlurmExecutor a grid is submitted with (the sbatch it writes is what a test checks)."""
    require_sbatch()
    s = settings.slurm
    if s.gpus_per_run < 0 or s.time_min <= 0 or s.array_parallelism <= 0:
        raise DispatchError(f"slurm options {s}: gpus_per_run >= 0, time_min > 0 and array_parallelism > 0")
    executor = submitit.SlurmExecutor(folder=Path(settings.folder or default_folder()) / "slurm" / "%j",
                                      max_num_timeout=s.max_requeue)
    params: dict[str, Any] = {
        "job_name": s.job_name, "time": int(s.time_min), "cpus_per_task": int(s.cpus_per_run),
        "array_parallelism": int(s.array_parallelism), "signal_delay_s": int(s.signal_delay_s),
        "additional_parameters": {"requeue": True},  # Slurm requeues a preempted task itself too
    }
    if s.gpus_per_run:
        params["gpus_per_node"] = int(s.gpus_per_run)
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.mem_gb:
        params["mem"] = f"{int(s.mem_gb)}GB"
    if s.setup:
        params["setup"] = list(s.setup)
    executor.update_parameters(**params)
    return executor


def _run_slurm(todo: Sequence[Any], root: str, device: str | None, settings: DispatchSettings,
               progress: Progress, expired: Callable[[], bool]) -> list[JobResult]:
    executor = slurm_executor(settings)
    threads = settings.threads or settings.slurm.cpus_per_run
    with executor.batch():  # one sbatch: a job array of len(todo) tasks
        jobs = [executor.submit(RunJob(t, root, device, threads)) for t in todo]
    if jobs:
        progress.say(f"submitted Slurm job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs, at most "
                     f"{settings.slurm.array_parallelism} at once); logs in {jobs[0].paths.folder}")
    if not settings.wait:
        return [JobResult(t, "submitted", job_id=str(j.job_id), log=str(j.paths.stderr)) for j, t in zip(jobs, todo)]
    pending, results = dict(zip(todo, jobs)), {}
    started: set = set()
    while pending:
        time.sleep(settings.poll_s)
        for t, job in list(pending.items()):
            if t not in started and job.state in ("RUNNING", "COMPLETING", "COMPLETED", "FAILED"):
                started.add(t)
                progress.started(t)
            if job.done():
                if t not in started:
                    progress.started(t)
                res = _collect(job, t)
                res.status = "failed" if res.status == "killed" else res.status
                results[t.key] = res
                progress.finished(results[t.key])
                del pending[t]
    return [results[t.key] for t in todo]


_RUNNERS = {"debug": _run_debug, "local": _run_local, "slurm": _run_slurm}


def dispatch(todo: Sequence[Any], root: str | os.PathLike, device: str | None = "auto",
             settings: DispatchSettings | None = None, say: Callable[[str], None] | None = None,
             expired: Callable[[], bool] = lambda: False, bar: bool = True) -> list[JobResult]:
    """Compute ``todo`` (study Tasks the ledger lacks) with the chosen executor; one
    :class:`JobResult` per task, in order. ``expired()``: start nothing new once it is true
    (local and debug; a Slurm array is submitted whole)."""
    settings = settings or DispatchSettings()
    executor = resolve_executor(settings.executor)
    if settings.jobs < 1:
        raise DispatchError(f"jobs={settings.jobs}: at least 1 concurrent run")
    say = say or (lambda msg: log.info("%s", msg))
    progress = Progress(len(todo), say, bar=bar)
    try:
        return _RUNNERS[executor](list(todo), str(root), device, settings, progress, expired)
    finally:
        progress.close()
