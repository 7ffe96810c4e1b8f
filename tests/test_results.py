"""Results ledger: run-or-load caching, corruption handling, the tidy table."""

import hashlib
import json
import logging
import math
import os
import socket
from pathlib import Path
from dataclasses import asdict, dataclass

import pytest

from mnemonics_lib import provenance as engine_provenance
from mnemonics_study import results
from mnemonics_study.results import (
    MissingRunError,
    load_results,
    require_cached,
    run_dir_name,
    run_or_load,
    write_json_atomic,
)


@dataclass(frozen=True)
class FakeConfig:
    dataset: str = "cifar100"
    method: str = "lucir"
    exemplars: str = "herding"
    phases: int = 2
    seed: int = 0
    profile: str = "smoke"
    class_order_seed: int = 1993
    memory_mode: str = "fixed_total"
    memory_per_class: int = 20

    def to_dict(self) -> dict:
        return asdict(self)

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def fake_metrics(config: FakeConfig) -> dict:
    """Metrics in the trainer's schema; acc_upper missing in phase 0, null in phase 1."""
    per_phase = [
        {"phase": 0, "n_classes": 50, "acc_cnn": 80.0, "acc_nme": 79.0,
         "wall_s": {"train": 1.0, "exemplars": 0.1, "eval": 0.2}},
        {"phase": 1, "n_classes": 75, "acc_cnn": 70.0, "acc_nme": 72.0, "acc_upper": None,
         "acc_old": 65.0, "acc_new": 85.0, "extra_key": "tolerated"},
        {"phase": 2, "n_classes": 100, "acc_cnn": 60.0 + config.seed, "acc_nme": 62.0,
         "acc_upper": 75.0},
    ]
    return {"per_phase": per_phase, "aia_cnn": 70.0 + config.seed / 3, "aia_nme": 71.0,
            "forgetting_cnn": 20.0, "last_cnn": 60.0 + config.seed}


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, config):
        self.calls += 1
        return fake_metrics(config)


@pytest.fixture(autouse=True)
def _cheap_provenance(monkeypatch):
    # Real provenance imports torch and calls git: correct but slow on a shared CPU.
    monkeypatch.setattr(results, "provenance", lambda check_dirty=True: {"device": "cpu-test", "git_commit": "abc"})


def test_run_dir_name_fields_and_hash():
    c = FakeConfig()
    assert run_dir_name(c) == f"cifar100-lucir-herding-N2-o1993-s0-smoke-{c.config_hash()}"
    assert run_dir_name(FakeConfig(dataset="image/net")).startswith("image_net-")


def test_compute_once_then_cached(tmp_path, caplog):
    c, compute = FakeConfig(), Counter()
    first = run_or_load(c, compute, tmp_path)
    with caplog.at_level(logging.INFO, logger="mnemonics_study.results"):
        second = run_or_load(c, compute, tmp_path)
    assert compute.calls == 1
    assert "loaded cached run" in caplog.text
    assert second == first
    assert first.path == tmp_path / "runs" / run_dir_name(c)
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["config.json", "env.json", "metrics.json"]
    assert first.config == {**c.to_dict(), "config_hash": c.config_hash()}
    assert first.env["device"] == "cpu-test"
    assert first.env["wall_s"] >= 0 and first.env["started_utc"] <= first.env["ended_utc"]
    # Only the run directory is left in the study folder: no .tmp-* leftovers.
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [first.path.name]


def test_different_config_computes_again(tmp_path):
    compute = Counter()
    run_or_load(FakeConfig(seed=0), compute, tmp_path)
    run_or_load(FakeConfig(seed=1), compute, tmp_path)
    assert compute.calls == 2


def _corrupt_hash(run):
    cfg = json.loads((run / "config.json").read_text())
    cfg["config_hash"] = "000000000000"
    (run / "config.json").write_text(json.dumps(cfg))


def _corrupt_json(run):
    (run / "metrics.json").write_text('{"per_phase": [')  # truncated write


def _missing_file(run):
    (run / "env.json").unlink()


def _no_per_phase(run):
    (run / "metrics.json").write_text('{"aia_cnn": 1.0}')


@pytest.mark.parametrize("damage", [_corrupt_hash, _corrupt_json, _missing_file, _no_per_phase])
def test_invalid_run_is_moved_aside_and_recomputed(tmp_path, damage, caplog):
    c, compute = FakeConfig(), Counter()
    run = run_or_load(c, compute, tmp_path).path
    damage(run)
    damaged = {p.name: p.read_bytes() for p in run.iterdir()}

    with caplog.at_level(logging.WARNING, logger="mnemonics_study.results"):
        rec = run_or_load(c, compute, tmp_path)
    assert compute.calls == 2
    assert "invalid run directory" in caplog.text
    assert rec.metrics == fake_metrics(c)
    # The damaged directory is preserved byte for byte under a .corrupt-<time> name.
    aside = [p for p in (tmp_path / "runs").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith(run.name + ".corrupt-")
    assert {p.name: p.read_bytes() for p in aside[0].iterdir()} == damaged


def test_tmp_dirs_are_ignored(tmp_path):
    c, compute = FakeConfig(), Counter()
    # A half-written run from a crashed process: complete-looking but under .tmp-*.
    half = tmp_path / "runs" / ".tmp-crashed"
    half.mkdir(parents=True)
    write_json_atomic(half / "config.json", {**c.to_dict(), "config_hash": c.config_hash()})
    with pytest.raises(MissingRunError):
        require_cached(c, tmp_path)
    run_or_load(c, compute, tmp_path)
    assert compute.calls == 1
    assert half.is_dir()  # left alone, not deleted
    assert len(load_results(tmp_path)) == 3  # only the real run's 3 phases


def test_require_cached_message_and_hit(tmp_path):
    c = FakeConfig(profile="quick")
    with pytest.raises(MissingRunError) as err:
        require_cached(c, tmp_path)
    msg = str(err.value)
    assert run_dir_name(c) in msg and c.config_hash() in msg
    assert "make results PROFILE=quick" in msg
    assert isinstance(err.value, LookupError)
    rec = run_or_load(c, Counter(), tmp_path)
    assert require_cached(c, tmp_path) == rec


def test_require_cached_rejects_invalid_without_moving(tmp_path):
    c = FakeConfig()
    run = run_or_load(c, Counter(), tmp_path).path
    _corrupt_json(run)
    with pytest.raises(MissingRunError, match="invalid"):
        require_cached(c, tmp_path)
    assert run.is_dir()


def test_compute_result_must_have_per_phase(tmp_path):
    with pytest.raises(ValueError, match="per_phase"):
        run_or_load(FakeConfig(), lambda c: {"aia_cnn": 1.0}, tmp_path)
    assert list((tmp_path / "runs").iterdir()) == []


def test_write_json_atomic_leaves_no_temp(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "nan": math.nan})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    got = json.loads(path.read_text())
    assert got["a"] == 2 and math.isnan(got["nan"])
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert json.loads(path.read_text())["a"] == 2


def test_load_results_tidy_table(tmp_path, caplog):
    for seed in (0, 1):
        run_or_load(FakeConfig(seed=seed), fake_metrics, tmp_path)
    (tmp_path / "runs" / "garbage").mkdir()
    with caplog.at_level(logging.WARNING, logger="mnemonics_study.results"):
        df = load_results(tmp_path)
    assert "skipping run directory" in caplog.text and "garbage" in caplog.text
    assert df.shape == (6, len(results.COLUMNS))
    assert list(df.columns) == list(results.COLUMNS)
    s1 = df[df.seed == 1].set_index("phase")
    assert s1.loc[2, "acc_cnn"] == 61.0  # 60 + seed
    assert s1.loc[2, "n_classes"] == 100
    assert s1.loc[1, "acc_nme"] == 72.0
    assert math.isnan(s1.loc[0, "acc_upper"]) and math.isnan(s1.loc[1, "acc_upper"])
    assert s1.loc[2, "acc_upper"] == 75.0
    assert s1.loc[0, "aia_cnn"] == pytest.approx(70.0 + 1 / 3)
    assert (s1.memory_mode == "fixed_total").all() and (s1.memory_per_class == 20).all()
    assert (s1.device == "cpu-test").all() and (s1.commit == "abc").all()
    assert s1.run_id.nunique() == 1 and s1.run_id.iloc[0] == run_dir_name(FakeConfig(seed=1))


def test_load_results_empty(tmp_path):
    df = load_results(tmp_path)
    assert df.empty and list(df.columns) == list(results.COLUMNS)


def test_real_provenance_fields(monkeypatch):
    monkeypatch.undo()  # the real function, once
    env = engine_provenance.provenance()
    for key in ("git_commit", "git_dirty", "python", "torch", "numpy", "torchvision",
                "device", "hostname"):
        assert key in env
    assert isinstance(env["device"], str) and env["device"]
    assert env["torch"].split(".")[0].isdigit()


def test_a_run_of_another_study_is_copied_with_its_origin(tmp_path):
    cfg = FakeConfig(seed=3)
    snap_metrics = {**fake_metrics(cfg), "snapshots": [{"phase": 0}], "snapshot_settings": {}}
    src = run_or_load(cfg, lambda c: snap_metrics, tmp_path, study="snapshots")
    with pytest.raises(MissingRunError):
        require_cached(cfg, tmp_path, study="runs")
    assert results.copy_from_other_study(cfg, tmp_path, study="runs", sources=["sweeps/mnemonics"]) is None
    rec = results.copy_from_other_study(cfg, tmp_path, study="runs", sources=["runs", "snapshots"])
    assert rec is not None and rec.path == tmp_path / "runs" / run_dir_name(cfg)
    again = require_cached(cfg, tmp_path, study="runs")
    assert "snapshots" not in again.metrics and "snapshot_settings" not in again.metrics
    assert again.metrics == fake_metrics(cfg)
    assert again.env["copied_from"] == f"snapshots/{run_dir_name(cfg)}"
    assert again.env["git_commit"] == src.env["git_commit"]  # the provenance is the original run's
    assert again.config == src.config


def test_a_damaged_source_is_not_copied(tmp_path):
    cfg = FakeConfig(seed=4)
    src = run_or_load(cfg, fake_metrics, tmp_path, study="snapshots")
    (src.path / "metrics.json").write_text("{not json")
    assert results.copy_from_other_study(cfg, tmp_path, study="runs", sources=["snapshots"]) is None
    assert not (tmp_path / "runs" / run_dir_name(cfg)).exists()


def test_a_launcher_named_commit_wins_over_the_copys_git(monkeypatch):
    """A copied checkout whose .git is stale (an older HEAD, so 'dirty'): the commit the launcher
    names is recorded, with the copy's HEAD beside it and dirty unknown."""
    monkeypatch.undo()
    monkeypatch.setattr(engine_provenance, "_git", lambda *a: "0" * 40 + "\n" if a[0] == "rev-parse" else " M x.py\n")
    monkeypatch.setenv("MNEMONICS_GIT_COMMIT", "c" * 40)
    env = engine_provenance.provenance()
    assert env["git_commit"] == "c" * 40 and env["git_dirty"] is None
    assert env["git_head_in_copy"] == "0" * 40 and "MNEMONICS_GIT_COMMIT" in env["git_commit_source"]
    monkeypatch.delenv("MNEMONICS_GIT_COMMIT")
    env = engine_provenance.provenance()
    assert env["git_commit"] == "0" * 40 and env["git_dirty"] is True and "git_commit_source" not in env


# --------------------------------------------------------------------------- the computing lock
def _lock_file(root, cfg, study="runs"):
    return Path(root) / study / ".locks" / f"{run_dir_name(cfg)}.lock"


def test_a_run_being_computed_elsewhere_is_busy_not_computed_twice(tmp_path):
    cfg = FakeConfig(seed=11)
    lock = _lock_file(tmp_path, cfg)
    lock.parent.mkdir(parents=True)
    # a live holder: this very process, as another worker on this host would be
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_utc": "x"}))
    calls = []
    with pytest.raises(results.RunBusyError, match=f"pid {os.getpid()}"):
        run_or_load(cfg, lambda c: calls.append(c) or fake_metrics(c), tmp_path)
    assert calls == [] and lock.exists()  # nothing computed, the holder's lock untouched


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tmp_path):
    import subprocess
    import sys

    cfg = FakeConfig(seed=12)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _lock_file(tmp_path, cfg)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_utc": "x"}))
    seen = []

    def compute(c):
        seen.append(json.loads(lock.read_text())["pid"])  # held by us while computing
        return fake_metrics(c)

    rec = run_or_load(cfg, compute, tmp_path)
    assert seen == [os.getpid()] and not lock.exists() and rec.metrics["aia_cnn"] == fake_metrics(cfg)["aia_cnn"]

    def boom(c):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_or_load(FakeConfig(seed=13), boom, tmp_path)
    assert not _lock_file(tmp_path, FakeConfig(seed=13)).exists()
    assert load_results(tmp_path).run_id.nunique() == 1  # the .locks folder is not a run


def test_run_tasks_reports_a_busy_run_and_goes_on(tmp_path):
    from mnemonics_study import study
    from mnemonics_lib.config import make_config

    busy, free = (make_config(dataset="synthetic", profile="smoke", method="lwf", seed=s, epochs_override=1)
                  for s in (1, 2))
    lock = _lock_file(tmp_path, busy)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_utc": "x"}))
    outs = study.run_tasks([study.Task(busy), study.Task(free)], tmp_path, device="cpu")
    assert [o.status for o in outs] == ["busy", "computed"]
    assert "being computed by pid" in outs[0].error
