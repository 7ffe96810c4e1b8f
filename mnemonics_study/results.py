"""The results ledger: one immutable directory per run, cached by config hash.

Layout: ``<root>/<study>/<run_dir_name(config)>/`` holding

* ``config.json``  the fully resolved config plus ``config_hash``;
* ``metrics.json`` what ``compute(config)`` returned (``per_phase`` list, matrices, AIA, ...);
* ``env.json``     provenance: git commit and dirty flag, versions, device, host, timing; for a run
  resumed from phase checkpoints, ``legs``: where and at which commit each stretch of phases ran.

A run directory is built under a ``.tmp-*`` name and renamed into place, so a crash
never leaves a half-written run under a real name.  A directory that does not
validate is moved aside (``<name>.corrupt-<UTC time>``), never deleted and never loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mnemonics_lib.atomic import TMP_MARK, fsync_dir, write_text_atomic
from mnemonics_lib.provenance import provenance, utc_now

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RunConfig",
    "RunRecord",
    "MissingRunError",
    "InvalidRunError",
    "run_dir_name",
    "run_or_load",
    "require_cached",
    "write_json_atomic",
    "provenance",
    "load_results",
]

logger = logging.getLogger(__name__)

_FILES = ("config.json", "metrics.json", "env.json")
_TMP_PREFIX = TMP_MARK
_LOCKS = ".locks"  # per study folder: who is computing which run right now (ignored by git)
_CORRUPT_MARK = ".corrupt-"


class RunConfig(Protocol):
    """What the ledger needs from a run's config object."""

    dataset: str
    method: str
    exemplars: str
    phases: int
    seed: int
    profile: str
    class_order_seed: int

    def to_dict(self) -> dict[str, Any]: ...

    def config_hash(self) -> str: ...


@dataclass(frozen=True)
class RunRecord:
    """A loaded (or freshly written) run directory."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    env: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.path.name


class MissingRunError(LookupError):
    """A run required to be cached is absent or invalid."""


class InvalidRunError(ValueError):
    """A run directory exists but is incomplete, corrupted or belongs to another config."""


# --- writing ----------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic.write_text_atomic`).

    Readers see the old file or the new one, never a prefix.  NaN is written as
    ``NaN`` (Python's JSON dialect) so undefined metrics survive a round trip.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def run_dir_name(config: RunConfig) -> str:
    """Readable, unique directory name; the trailing hash is what identifies the run."""
    name = (
        f"{config.dataset}-{config.method}-{config.exemplars}-N{config.phases}"
        f"-o{config.class_order_seed}-s{config.seed}-{config.profile}-{config.config_hash()}"
    )
    # Field values come from user parameters: keep the name one safe path component.
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


# --- reading and validating -------------------------------------------------------


def _read_run(path: Path, expected_hash: str | None) -> RunRecord:
    """Load and validate a run directory; raise InvalidRunError saying what is wrong."""
    if not path.is_dir():
        raise InvalidRunError(f"{path} is not a directory")
    data: dict[str, Any] = {}
    for fname in _FILES:
        f = path / fname
        if not f.is_file():
            raise InvalidRunError(f"{f} is missing")
        try:
            data[fname] = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidRunError(f"{f} is not valid JSON: {e}") from e
        if not isinstance(data[fname], dict):
            raise InvalidRunError(f"{f} does not hold a JSON object")
    config, metrics = data["config.json"], data["metrics.json"]
    stored = config.get("config_hash")
    if expected_hash is not None and stored != expected_hash:
        raise InvalidRunError(f"{path}: config_hash {stored!r} != requested {expected_hash!r}")
    named_after = isinstance(stored, str) and bool(stored) and path.name.endswith(stored)
    if expected_hash is None and not named_after:
        raise InvalidRunError(f"{path}: config_hash {stored!r} does not match the directory name")
    if not isinstance(metrics.get("per_phase"), list):
        raise InvalidRunError(f"{path / 'metrics.json'} has no 'per_phase' list")
    return RunRecord(path=path, config=config, metrics=metrics, env=data["env.json"])


def _move_aside(path: Path) -> Path:
    """Rename an invalid run out of the way, keeping its data for inspection."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}{_CORRUPT_MARK}{stamp}")
    n = 1
    while target.exists():  # two failures within a second
        target = path.with_name(f"{path.name}{_CORRUPT_MARK}{stamp}-{n}")
        n += 1
    os.rename(path, target)
    return target


def _publish(final: Path, cfg: dict, metrics: dict, env: dict, *, keep_loser: bool) -> RunRecord:
    """Write the three files into a private temporary folder, then publish it as ``final`` by one
    directory rename (never over an existing run). When another process published ``final``
    meanwhile, theirs is returned and ours is left aside (``keep_loser``) or deleted."""
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; results are shared
    for fname, obj in zip(_FILES, (cfg, metrics, env)):
        write_json_atomic(tmp / fname, obj)
    if final.exists():
        if keep_loser:
            logger.warning("%s appeared meanwhile; leaving this result in %s", final, tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return _read_run(final, cfg["config_hash"])
    # os.rename of a directory fails on a non-empty target: never overwrites a run.
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return RunRecord(path=final, config=cfg, metrics=metrics, env=env)


def _compute_and_write(
    config: RunConfig, compute: Callable[[RunConfig], dict], final: Path
) -> RunRecord:
    """Run ``compute``, then publish config/metrics/env by one directory rename."""
    # provenance is read before computing: the commit and dirty flag must describe the code that
    # produced the numbers, not whatever the checkout holds when a long run ends
    prov, started, t0 = provenance(), utc_now(), time.perf_counter()
    metrics = compute(config)
    wall = time.perf_counter() - t0
    if not isinstance(metrics, dict) or not isinstance(metrics.get("per_phase"), list):
        # Refuse to publish a run that the loader would reject on every later call.
        raise ValueError("compute(config) must return a dict with a 'per_phase' list")
    env = {**prov, "started_utc": started, "ended_utc": utc_now(), "wall_s": wall}
    # a run resumed from phase checkpoints was computed in stretches, perhaps on other machines and
    # commits: the stretches ("legs", each from its first phase on) are provenance, not metrics
    legs = metrics.pop("legs", None)
    if legs and len(legs) > 1:
        env["legs"] = legs
    h = config.config_hash()
    cfg = config.to_dict()
    if cfg.get("config_hash", h) != h:
        raise ValueError(f"config.to_dict() holds config_hash {cfg['config_hash']!r} != {h!r}")
    cfg = {**cfg, "config_hash": h}

    # a computed result is kept aside if another process won the race: it cost compute time
    record = _publish(final, cfg, metrics, env, keep_loser=True)
    logger.info("run %s ready (%.1f s)", final, wall)
    return record


class RunBusyError(RuntimeError):
    """Another live process is computing this run now: computing it twice would only waste time."""


def _lock_holder(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def slurm_job_id() -> str | None:
    """This process's Slurm job (``<array job>_<task>`` for an array task); None outside Slurm. A
    requeued job keeps it: that is how a run lock recognises its own job's earlier attempt."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _lock_is_stale(lock: Path, holder: dict[str, Any] | None) -> bool:
    """A lock whose process is gone (same host, pid not running), one left by an earlier attempt of
    this same Slurm job (preempted or timed out, then requeued, perhaps onto another node), or an
    unreadable one older than a minute (its writer died between creating and filling it). Another
    host's lock is otherwise trusted."""
    if holder is None:
        try:
            return time.time() - lock.stat().st_mtime > 60
        except OSError:
            return True
    job = slurm_job_id()
    if job is not None and holder.get("slurm_job") == job:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


@contextmanager
def computing_lock(study_dir: Path, name: str) -> Iterator[Path]:
    """Hold ``study_dir/.locks/<name>.lock`` while a run is computed, so that two processes
    (two `make results`, or several profiles run side by side on one machine) never compute one run twice.
    Taken with O_EXCL; a stale lock (its process gone) is taken over; a live one raises
    :class:`RunBusyError`. Released however the computation ends."""
    lock = study_dir / _LOCKS / f"{name}.lock"
    took_over = False
    for _ in range(5):
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # another process removed the empty .locks folder meanwhile
            continue
        except FileExistsError:
            holder = _lock_holder(lock)
            if not took_over and _lock_is_stale(lock, holder):
                logger.warning("taking over the stale lock %s (%s)", lock, holder)
                lock.unlink(missing_ok=True)
                took_over = True
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started_utc')}"
                   + (f" (Slurm job {holder['slurm_job']})" if holder.get("slurm_job") else "")
                   if holder else "an unknown process")
            raise RunBusyError(f"{study_dir.name}/{name} is being computed by {who}; wait for it, or "
                               f"delete {lock} if that process no longer runs") from None
        with os.fdopen(fd, "w") as f:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": utc_now()}
            if slurm_job_id() is not None:
                holder["slurm_job"] = slurm_job_id()
            json.dump(holder, f)
        break
    else:
        raise RunBusyError(f"could not create {lock}")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        try:
            lock.parent.rmdir()  # only when empty: results/ keeps no trace of finished runs
        except OSError:
            pass


def _load_if_valid(final: Path, config_hash: str) -> RunRecord | None:
    """The cached run at ``final``; an invalid folder is moved aside (never deleted) -> None."""
    if not final.exists():
        return None
    try:
        record = _read_run(final, config_hash)
    except InvalidRunError as e:
        aside = _move_aside(final)
        logger.warning("invalid run directory (%s); moved to %s, recomputing", e, aside)
        return None
    logger.info("loaded cached run %s", final)
    return record


def run_or_load(
    config: RunConfig,
    compute: Callable[[RunConfig], dict],
    root: str | os.PathLike[str],
    *,
    study: str = "runs",
) -> RunRecord:
    """Load ``root/study/<run_dir_name(config)>`` if valid, else ``compute(config)`` and store it.

    ``compute(config) -> metrics`` must return a JSON-able dict with a ``per_phase``
    list.  An invalid existing directory is moved aside (never loaded, never deleted). While it
    computes, the run is locked (:func:`computing_lock`): a second process asking for the same run
    gets :class:`RunBusyError` instead of computing it again.
    """
    study_dir = Path(root) / study
    study_dir.mkdir(parents=True, exist_ok=True)
    final = study_dir / run_dir_name(config)
    record = _load_if_valid(final, config.config_hash())
    if record is not None:
        return record
    with computing_lock(study_dir, final.name):
        # another process may have published it between the check above and the lock
        record = _load_if_valid(final, config.config_hash())
        return record if record is not None else _compute_and_write(config, compute, final)


def require_cached(
    config: RunConfig, root: str | os.PathLike[str], *, study: str = "runs"
) -> RunRecord:
    """Load a cached run or raise :class:`MissingRunError`: no surprise multi-hour job."""
    path = Path(root) / study / run_dir_name(config)
    h = config.config_hash()
    if not path.exists():
        reason = "does not exist"
    else:
        try:
            return _read_run(path, h)
        except InvalidRunError as e:
            reason = f"is invalid ({e})"
    raise MissingRunError(
        f"no cached run for config {h}: {path} {reason}. "
        f"Fix: run `make results PROFILE={config.profile}` to compute it."
    )


def copy_from_other_study(
    config: RunConfig, root: str | os.PathLike[str], *, study: str, sources: Sequence[str],
    drop_metrics: Sequence[str] = ("snapshots", "snapshot_settings"),
) -> RunRecord | None:
    """Publish into ``study`` a valid run of the same config hash found in another study folder.

    The trainer is deterministic per config (a test checks a resumed run equals an uninterrupted
    one; a snapshot run records without consuming randomness), so a run computed for, e.g., the
    Fig. 1 snapshots is the same run Table 1 needs: copy it instead of training it again. The
    copy's env.json says where it came from (``copied_from``); its provenance is the original's.
    Returns None when no source holds the run.
    """
    name, h = run_dir_name(config), config.config_hash()
    final = Path(root) / study / name
    for source in sources:
        if source == study:
            continue
        src = Path(root) / source / name
        if not src.exists():
            continue
        try:
            rec = _read_run(src, h)
        except InvalidRunError:
            continue
        metrics = {k: v for k, v in rec.metrics.items() if k not in drop_metrics}
        env = {**rec.env, "copied_from": f"{source}/{name}", "copied_utc": utc_now()}
        final.parent.mkdir(parents=True, exist_ok=True)
        logger.info("copying run %s from %s", final, src)
        return _publish(final, rec.config, metrics, env, keep_loser=False)  # a copy is not worth keeping
    return None


# --- tidy table -------------------------------------------------------------------

_CONFIG_COLS = ("dataset", "method", "exemplars", "phases", "seed", "class_order_seed",
                "profile", "memory_mode", "memory_per_class")
_RUN_COLS = ("aia_cnn", "aia_nme", "forgetting_cnn", "last_cnn")
COLUMNS = ("run_id", "config_hash", *_CONFIG_COLS, "phase", "n_classes", "acc_cnn", "acc_nme",
           "acc_upper", *_RUN_COLS, "device", "commit")


def _num(value: Any) -> float:
    """Optional metric -> float, nan when absent or null."""
    return math.nan if value is None else float(value)


def _rows(rec: RunRecord) -> list[dict[str, Any]]:
    cfg, m = rec.config, rec.metrics
    run = {"run_id": rec.run_id, "config_hash": cfg["config_hash"]}
    run.update({k: cfg.get(k) for k in _CONFIG_COLS})
    run.update({k: _num(m.get(k)) for k in _RUN_COLS})
    run.update(device=rec.env.get("device"), commit=rec.env.get("git_commit"))
    return [
        {**run, "phase": int(p["phase"]), "n_classes": int(p["n_classes"]),
         **{k: _num(p.get(k)) for k in ("acc_cnn", "acc_nme", "acc_upper")}}
        for p in m["per_phase"]
    ]


def load_results(root: str | os.PathLike[str], study: str = "runs") -> pd.DataFrame:
    """Tidy table of every valid run under ``root/study``: one row per (run, phase).

    Temporary and moved-aside directories are skipped silently; other invalid ones
    with a warning.  Columns: see ``COLUMNS``.
    """
    import pandas as pd

    study_dir = Path(root) / study
    rows: list[dict[str, Any]] = []
    if study_dir.is_dir():
        for path in sorted(study_dir.iterdir()):
            if (not path.is_dir() or path.name.startswith(_TMP_PREFIX) or path.name == _LOCKS
                    or _CORRUPT_MARK in path.name):
                continue
            try:
                rows.extend(_rows(_read_run(path, None)))
            except (InvalidRunError, KeyError, TypeError, ValueError) as e:
                logger.warning("skipping run directory %s: %s", path, e)
    else:
        logger.warning("no results under %s", study_dir)
    return pd.DataFrame(rows, columns=list(COLUMNS))
