"""The dispatch layer: local (a process per run) and debug executors against sequential training,
a run killed mid-phase and resubmitted, submitit's requeue hook, and the Slurm array it submits
(a fake `sbatch` on PATH records it)."""
import json
import os
import pickle
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from mnemonics_lib import trainer
from mnemonics_lib.config import make_config
from mnemonics_study import dispatch, results, study


def _tiny(method: str, seed: int = 1993, phases: int = 1):
    return study.make_run(method, dataset="synthetic", phases=phases, seed=seed, profile="smoke",
                          epochs_override=1, memory_per_class=3)


def _numbers(metrics: dict) -> str:
    """Everything a run measured except its timings, as exact JSON text (NaN equals NaN there)."""
    drop = {"wall_s_total", "legs"}
    out = {k: v for k, v in metrics.items() if k not in drop and k != "per_phase"}
    out["per_phase"] = [{k: v for k, v in row.items() if k != "wall_s"} for row in metrics["per_phase"]]
    return json.dumps(out, sort_keys=True)


def _sequential(configs, ck_root: Path, monkeypatch) -> list[str]:
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(ck_root))
    return [_numbers(trainer.run_incremental(c, "cpu")) for c in configs]


ONE_THREAD = dispatch.DispatchSettings(threads=1, poll_s=0.2)


@pytest.mark.slow
def test_local_and_debug_executors_equal_sequential_training(tmp_path, monkeypatch):
    cs = [_tiny("lwf"), _tiny("lucir")]
    want = _sequential(cs, tmp_path / "ck-seq", monkeypatch)
    for executor, jobs in (("debug", 1), ("local", 2)):
        monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / f"ck-{executor}"))
        root = tmp_path / executor
        outs = study.run_tasks([study.Task(c) for c in cs], root, device="cpu", executor=executor, jobs=jobs,
                               settings=ONE_THREAD)
        assert [o.status for o in outs] == ["computed", "computed"], [o.error for o in outs]
        assert [_numbers(o.record.metrics) for o in outs] == want, executor
        assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(results.run_dir_name(c) for c in cs)
        if executor == "local":  # each run in its own process, its log under the submitit folder
            assert all(o.log and Path(o.log).is_file() for o in outs)
            assert len({o.job_id for o in outs}) == 2 and all(o.job_id != str(os.getpid()) for o in outs)
        again = study.run_tasks([study.Task(c) for c in cs], root, device="cpu", executor=executor)
        assert [o.status for o in again] == ["cached", "cached"]


def _kill_when_checkpointed(lock: Path, ck: Path, said: list, timeout: float = 240.0) -> None:
    """Kill the process computing the run (its pid is in the run's lock) once its first phase
    checkpoint is on disk: the run dies mid-way through a later phase."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ck.is_file() and lock.is_file():
            try:
                pid = json.loads(lock.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
                continue
            os.kill(int(pid), signal.SIGKILL)
            said.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_killed_mid_phase_and_resubmitted_resumes_and_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    c = study.make_run("lucir", dataset="synthetic", phases=5, seed=1993, profile="smoke", epochs_override=2,
                       memory_per_class=3)
    (want,) = _sequential([c], tmp_path / "ck-straight", monkeypatch)
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "ck"))
    root, name = tmp_path / "res", results.run_dir_name(c)
    lock = root / "runs" / ".locks" / f"{name}.lock"
    ck = tmp_path / "ck" / "runs" / c.config_hash() / "phase_000.pt"
    killed: list = []
    killer = threading.Thread(target=_kill_when_checkpointed, args=(lock, ck, killed))
    killer.start()
    said: list[str] = []
    settings = dispatch.DispatchSettings(threads=1, poll_s=0.2, kill_retries=0)
    (out,) = study.run_tasks([study.Task(c)], root, device="cpu", executor="local", settings=settings,
                             progress=said.append)
    killer.join()
    assert killed, "the run finished before it could be killed"
    assert out.status == "failed" and out.error.startswith("killed from outside") and out.record is None
    assert any(m.startswith("FAILED ") and f"log: {out.log}" in m for m in said)
    report = dispatch.failure_report(out)
    assert f"config: {json.dumps(c.to_dict(), sort_keys=True)}" in report and out.log in report
    assert not (root / "runs" / name).exists() and ck.parent.is_dir()  # nothing published, checkpoint kept

    (again,) = study.run_tasks([study.Task(c)], root, device="cpu", executor="local", settings=settings)
    assert again.status == "computed", again.error
    legs = again.record.env["legs"]
    assert legs[0]["first_phase"] == 0 and legs[1]["first_phase"] >= 1  # resumed, not restarted
    assert _numbers(again.record.metrics) == want
    assert not ck.parent.exists()  # a finished run's checkpoints are removed


def test_the_requeue_hook_resubmits_the_same_run_which_resumes_from_its_phase_checkpoint(tmp_path, monkeypatch):
    import cloudpickle
    import submitit

    c = _tiny("lucir", phases=2)
    (want,) = _sequential([c], tmp_path / "ck-straight", monkeypatch)
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "ck"))
    task = study.Task(c)
    job = dispatch.RunJob(task, str(tmp_path / "res"), "cpu", 1)
    assert isinstance(job, submitit.helpers.Checkpointable)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, dispatch.RunJob) and delayed.args == () and delayed.kwargs == {}
    assert (delayed.function.task, delayed.function.root, delayed.function.device, delayed.function.threads) == \
        (task, str(tmp_path / "res"), "cpu", 1)
    # the job is interrupted after phase 0 (as by preemption), then the requeued submission runs
    with pytest.raises(trainer.Interrupted):
        trainer.run_incremental(c, "cpu", stop_after_phase=0)
    path = tmp_path / "requeued.pkl"
    delayed.dump(path)  # what submitit writes for the requeued job
    with path.open("rb") as f:
        out = cloudpickle.load(f).result()
    assert out["status"] == "computed" and out["error"] is None
    rec = results.require_cached(c, tmp_path / "res")
    assert [leg["first_phase"] for leg in rec.env["legs"]] == [0, 1]
    assert _numbers(rec.metrics) == want


# ------------------------------------------------------------------ slurm
FAKE_SBATCH = """#!/bin/sh
# records its arguments and the script it was given, answers like sbatch
n=$(ls "{rec}" | wc -l)
mkdir -p "{rec}/$n"
printf '%s\\n' "$@" > "{rec}/$n/args"
for a in "$@"; do [ -f "$a" ] && cp "$a" "{rec}/$n/script"; done
echo "Submitted batch job 4242"
"""


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    rec, bin_dir = tmp_path / "sbatch-calls", tmp_path / "bin"
    rec.mkdir()
    bin_dir.mkdir()
    exe = bin_dir / "sbatch"
    exe.write_text(FAKE_SBATCH.format(rec=rec))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it; the array's tasks would call it on the cluster
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return rec


def _fake_metrics(config) -> dict:
    return {"per_phase": [{"phase": 0, "n_classes": 10, "acc_cnn": 50.0, "acc_nme": 51.0, "acc_upper": 60.0}],
            "aia_cnn": 50.0, "wall_s_total": 1.0}


def test_slurm_submits_one_array_of_the_missing_runs_with_gpus_time_and_requeue(tmp_path, fake_sbatch):
    cs = study.table1_configs("synthetic", [2], [1993], ["lwf", "icarl", "bic", "lucir", "lucir_mnemonics"],
                              "smoke")
    tasks = [study.Task(c) for c in cs]
    opts = dispatch.SlurmOptions(partition="gpu", gpus_per_run=2, time_min=90, array_parallelism=3,
                                 mem_gb=32, setup=("module load cuda",))
    settings = dispatch.DispatchSettings(executor="slurm", folder=tmp_path / "logs", slurm=opts, wait=False)
    outs = study.run_tasks(tasks, tmp_path / "res", device="cuda", settings=settings)
    assert [o.status for o in outs] == ["submitted"] * 5
    assert [o.job_id for o in outs] == [f"4242_{i}" for i in range(5)]
    calls = sorted(fake_sbatch.iterdir())
    assert len(calls) == 1  # one sbatch: a job array
    script = (calls[0] / "script").read_text().splitlines()
    for line in ("#SBATCH --array=0-4%3", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
                 "#SBATCH --requeue", "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@120",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --job-name=mnemonics",
                 "#SBATCH --nodes=1", "module load cuda"):
        assert line in script, line
    assert any(line.startswith("srun ") and "-m submitit.core._submit" in line for line in script)
    # each array task runs the RunJob of one run, in the grid's order
    pickles = [tmp_path / "logs" / "slurm" / f"4242_{i}" / f"4242_{i}_submitted.pkl" for i in range(5)]
    jobs = []
    for p in pickles:
        with p.open("rb") as f:
            jobs.append(pickle.load(f).function)
    assert [j.task.key for j in jobs] == [t.key for t in tasks]
    assert {(j.device, j.threads, j.root) for j in jobs} == {("cuda", 8, str(tmp_path / "res"))}

    # resubmitting the grid sends only what the ledger lacks (here: two runs have finished)
    for c in cs[1:3]:
        results.run_or_load(c, _fake_metrics, tmp_path / "res")
    outs = study.run_tasks(tasks, tmp_path / "res", device="cuda", settings=settings)
    assert [o.status for o in outs] == ["submitted", "cached", "cached", "submitted", "submitted"]
    script = (sorted(fake_sbatch.iterdir())[1] / "script").read_text().splitlines()
    assert "#SBATCH --array=0-2%3" in script


def test_bad_dispatch_input_fails_with_one_line_naming_the_fix(monkeypatch, tmp_path):
    with pytest.raises(dispatch.DispatchError, match=r"^unknown executor 'slurmm' \(--executor\): expected one "
                                                     r"of local, slurm, debug$"):
        dispatch.resolve_executor("slurmm")
    monkeypatch.setenv("MNEMONICS_EXECUTOR", "pool")
    with pytest.raises(dispatch.DispatchError, match=r"'pool' \(MNEMONICS_EXECUTOR\)"):
        dispatch.resolve_executor()
    monkeypatch.setenv("MNEMONICS_EXECUTOR", "slurm")
    assert dispatch.resolve_executor() == "slurm" and dispatch.resolve_executor("local") == "local"
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(dispatch.DispatchError, match="no `sbatch`, `srun` on PATH; run on a Slurm login node, "
                                                     "or use --executor local"):
        study.run_tasks([study.Task(_tiny("lwf"))], tmp_path, executor="slurm")
    with pytest.raises(dispatch.DispatchError, match="jobs=0"):
        study.run_tasks([study.Task(_tiny("lwf"))], tmp_path, executor="debug", jobs=0)


def test_progress_counts_done_running_failed_queued_and_names_each_failures_log():
    said: list[str] = []
    tasks = [study.Task(_tiny(m)) for m in ("lwf", "icarl", "lucir")]
    p = dispatch.Progress(3, said.append, bar=False)
    assert p.line() == "done 0 / running 0 / failed 0 / queued 3"
    p.started(tasks[0])
    p.started(tasks[1])
    assert p.line() == "done 0 / running 2 / failed 0 / queued 1"
    p.finished(dispatch.JobResult(tasks[0], "computed", wall_s=12.0))
    p.finished(dispatch.JobResult(tasks[1], "failed", error="RuntimeError: boom", log="/logs/7_0_log.err"))
    assert p.line() == "done 1 / running 0 / failed 1 / queued 1"
    assert said[0] == f"computed {tasks[0].describe()} in 12s  [done 1 / running 1 / failed 0 / queued 1]"
    assert said[1] == f"FAILED {tasks[1].describe()}: RuntimeError: boom; log: /logs/7_0_log.err"


def test_a_failed_run_is_reported_with_its_error_and_sent_again_on_resubmission(tmp_path, monkeypatch):
    calls = []

    def flaky(task, root, device="auto"):
        calls.append(task.config.method)
        if task.config.method == "bic" and calls.count("bic") == 1:
            raise RuntimeError("CUDA out of memory")
        return results.run_or_load(task.config, _fake_metrics, root, study=task.study)

    monkeypatch.setattr(study, "compute_task", flaky)
    tasks = [study.Task(_tiny(m)) for m in ("lwf", "bic", "lucir")]
    outs = study.run_tasks(tasks, tmp_path, executor="debug")
    assert [o.status for o in outs] == ["computed", "failed", "computed"]
    assert outs[1].error == "RuntimeError: CUDA out of memory"
    outs = study.run_tasks(tasks, tmp_path, executor="debug")
    assert [o.status for o in outs] == ["cached", "computed", "cached"] and calls == ["lwf", "bic", "lucir", "bic"]


# ------------------------------------------------------------------ the run lock under Slurm
def test_the_run_lock_records_the_slurm_job_and_a_requeued_job_takes_over_its_own(tmp_path, monkeypatch):
    cfg = make_config(dataset="synthetic", profile="smoke", method="lwf", seed=5, epochs_override=1)
    name = results.run_dir_name(cfg)
    lock = tmp_path / "runs" / ".locks" / f"{name}.lock"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "80")
    seen = []

    def compute(c):
        seen.append(json.loads(lock.read_text()))
        return _fake_metrics(c)

    lock.parent.mkdir(parents=True)
    # the same array task's earlier attempt, on another node (preempted, requeued): taken over
    lock.write_text(json.dumps({"pid": 1, "host": "node-a", "started_utc": "x", "slurm_job": "77_3"}))
    results.run_or_load(cfg, compute, tmp_path)
    assert seen[0]["slurm_job"] == "77_3" and seen[0]["host"] == socket.gethostname()
    # another array task's live lock on another node: trusted
    other = make_config(dataset="synthetic", profile="smoke", method="lwf", seed=6, epochs_override=1)
    olock = tmp_path / "runs" / ".locks" / f"{results.run_dir_name(other)}.lock"
    olock.parent.mkdir(parents=True, exist_ok=True)
    olock.write_text(json.dumps({"pid": 1, "host": "node-b", "started_utc": "x", "slurm_job": "77_4"}))
    with pytest.raises(results.RunBusyError, match=r"pid 1 on node-b since x \(Slurm job 77_4\)"):
        results.run_or_load(other, compute, tmp_path)
