"""The iCaRL phase-0 diagnostic: variants, runs stored and cached as runs, and its README table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnemonics_lib import diagnostics
from mnemonics_lib.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("diagnose", ROOT / "scripts" / "diagnose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_parse_and_bad_ones_name_the_syntax():
    assert diagnostics.parse_variant("icarl") == ("icarl", {})
    assert diagnostics.parse_variant("icarl:lr=2.0,epochs=60") == (
        "icarl", {"lr_override": 2.0, "epochs_override": 60})
    with pytest.raises(ConfigError, match="method\\[:knob=value"):
        diagnostics.parse_variant("icarl:momentum=0.5")
    with pytest.raises(SystemExit, match="bad variant 'icarl:lr'"):
        _script().main(["icarl", "--variant", "icarl:lr"])
    # phase 0 of the Table 1 run: N = 5, seed = class-order seed, only phase 0 trained
    c = diagnostics.phase0_configs(["icarl:epochs=60"], seed=1994)[0]
    assert (c.method, c.phases, c.seed, c.class_order_seed, c.last_phase, c.schedule.base_epochs,
            c.schedule.lr) == ("icarl", 5, 1994, 1994, 0, 60, 0.1)


def test_phase0_table_is_exact():
    variants = ["icarl", "lwf:lr=0.5"]
    configs = diagnostics.phase0_configs(variants)
    rec = SimpleNamespace(config={"config_hash": configs[0].config_hash()},
                          metrics={"per_phase": [{"acc_cnn": 9.875, "acc_nme": 6.25}]},
                          env={"device": "Intel(R) Xeon(R) Processor", "cpu_compile": True})
    assert diagnostics.phase0_table(variants, configs, [rec]).splitlines()[2:] == [
        f"| icarl | BCE | 0.1 | 20 | 9.88 | 6.25 | {configs[0].config_hash()} | CPU compiled |",
        f"| lwf:lr=0.5 | CE | 0.5 | 20 | not run |  | {configs[1].config_hash()} |  |"]


def test_phase0_runs_are_stored_with_their_overrides_and_then_loaded(tmp_path, capsys, monkeypatch):
    mod = _script()
    argv = ["icarl", "--dataset", "synthetic", "--profile", "smoke", "--device", "cpu", "--results-dir", str(tmp_path),
            "--variant", "icarl:lr=0.5,epochs=1", "--variant", "lwf:epochs=1"]
    assert mod.main(argv) == 0
    dirs = sorted((tmp_path / "diagnostics" / "icarl_phase0").iterdir())
    assert [d.name.split("-")[1] for d in dirs] == ["icarl", "lwf"]
    cfg = json.loads((dirs[0] / "config.json").read_text())
    assert (cfg["lr_override"], cfg["schedule"]["lr"], cfg["schedule"]["base_epochs"], cfg["last_phase"]) == (
        0.5, 0.5, 1, 0)
    assert len(json.loads((dirs[0] / "metrics.json").read_text())["per_phase"]) == 1  # phase 0 only
    first = capsys.readouterr().out.splitlines()
    assert first[-2].startswith("| icarl:lr=0.5,epochs=1 | BCE | 0.5 | 1 | ")
    assert first[-1].startswith("| lwf:epochs=1 | CE | 0.05 | 1 | ")

    import mnemonics_lib.trainer as trainer

    monkeypatch.setattr(trainer, "run_incremental", lambda *a, **k: pytest.fail("a cached variant was recomputed"))
    assert mod.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == first


def test_step_configs_repeat_the_sweeps_own_run_and_extend_it():
    choice = json.loads((ROOT / "results" / "sweeps" / "mnemonics" / "choice.json").read_text())
    at_choice = next(r for r in choice["sweep"] if (r["inner_lr"], r["outer_lr"]) == (0.01, 100.0))
    beyond = diagnostics.step_configs([100.0, 1000.0])
    assert beyond[0].config_hash() == at_choice["config_hash"]  # the same run: a reproducibility check
    assert (beyond[1].mnemonics.outer_lr, beyond[1].last_phase, beyond[1].exemplars) == (1000.0, 1, "mnemonics")


def test_step_table_is_exact():
    configs = diagnostics.step_configs([100.0, 1000.0])
    per_phase = [{}, {"exemplar_change": {"new": {"max": 4.25, "mean": 0.0312}}}]
    rec = SimpleNamespace(config={"config_hash": configs[0].config_hash()},
                          metrics={"aia_cnn": 32.3481, "per_phase": per_phase}, env={"device": "NVIDIA H200"})
    assert diagnostics.step_table(configs, [rec]).splitlines()[2:] == [
        f"| 100 | 10 | 0.01 | 0-1 | 32.35 | 4.2 / 0.031 | not recorded | {configs[0].config_hash()} | H200 |",
        f"| 1000 | 10 | 0.01 | 0-1 | not run |  |  | {configs[1].config_hash()} |  |"]


def test_step_grid_raises_beta2_without_touching_the_existing_runs():
    grid = diagnostics.step_configs()
    assert [(c.mnemonics.outer_lr, c.mnemonics.old_lr, c.last_phase) for c in grid] == [
        (100.0, 10.0, 1), (1000.0, 10.0, 1), (100.0, 100.0, 1), (100.0, 1000.0, 1), (100.0, 10.0, 2),
        (100.0, 1000.0, 2)]
    plain = diagnostics.step_configs([100.0, 1000.0])
    # the beta2 = 10 runs keep the hashes they were computed under (the sweep's run among them)
    assert [c.config_hash() for c in grid[:2]] == [c.config_hash() for c in plain]
    assert grid[0].config_hash() == "eca41fec5187" and grid[3].config_hash() == "49e46cacdca2"
    assert len({c.config_hash() for c in grid}) == 6
    assert all(c.mnemonics.outer_lr == 100.0 and c.mnemonics.inner_lr == 0.01 for c in grid[2:])


def test_mnemonics_step_runs_record_the_pixel_change(tmp_path, capsys):
    argv = ["mnemonics-step", "--dataset", "synthetic", "--profile", "smoke", "--device", "cpu",
            "--results-dir", str(tmp_path), "--outer-lr", "10", "--outer-lr", "1000"]
    assert _script().main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert rows[0].startswith("| 10 | 10 | 0.01 | 0-1 | ") and rows[1].startswith("| 1000 | 10 | 0.01 | 0-1 | ")
    # the change is recorded for both programs in phase 1, and a 100x step moves the pixels further
    moved = [float(r.split(" | ")[5].split(" / ")[1]) for r in rows]
    assert all("not recorded" not in r for r in rows) and moved[1] > moved[0] > 0


def test_a_larger_beta2_moves_the_old_exemplars_further(tmp_path, capsys):
    argv = ["mnemonics-step", "--dataset", "synthetic", "--profile", "smoke", "--device", "cpu",
            "--results-dir", str(tmp_path), "--outer-lr", "10", "--old-lr", "10", "--old-lr", "1000"]
    assert _script().main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert rows[0].startswith("| 10 | 10 | 0.01 | 0-1 | ") and rows[1].startswith("| 10 | 1000 | 0.01 | 0-1 | ")
    old_moved = [float(r.split(" | ")[6].split(" / ")[1]) for r in rows]
    new_moved = [float(r.split(" | ")[5].split(" / ")[1]) for r in rows]
    assert old_moved[1] > old_moved[0] > 0
    assert new_moved[0] == new_moved[1]  # beta2 leaves the new-class program alone
