"""GPU-hours of a grid from measured per-run costs, on a hand-made ledger with known timings."""
import json

import pytest

from mnemonics_study import grid_cost, results, study

H100 = "NVIDIA H100 80GB HBM3"
CPU = "Intel(R) Xeon(R) Processor"


def _write(root, config, device, phase0_s, phase_s, study_dir="runs", **env):
    """A run directory whose phases took ``phase0_s`` (phase 0) and ``phase_s`` each (train only)."""
    d = root / study_dir / results.run_dir_name(config)
    d.mkdir(parents=True)
    rows = [{"phase": p, "n_classes": 10 + p, "acc_cnn": 50.0, "acc_nme": 50.0, "acc_upper": 50.0,
             "wall_s": {"train": phase0_s if p == 0 else phase_s * 0.5, "exemplars": 0.0 if p == 0 else phase_s * 0.25,
                        "eval": 0.0 if p == 0 else phase_s * 0.25}} for p in range(config.phases + 1)]
    (d / "config.json").write_text(json.dumps({**config.to_dict(), "config_hash": config.config_hash()}))
    (d / "metrics.json").write_text(json.dumps({"per_phase": rows}))
    (d / "env.json").write_text(json.dumps({"device": device, **env}))


def _run(spec, dataset="caltech100", phases=5, seed=1993, profile="quick"):
    return study.make_run(spec, dataset=dataset, phases=phases, seed=seed, profile=profile)


def test_measured_runs_read_per_phase_timings_and_skip_copies_and_cut_runs(tmp_path):
    _write(tmp_path, _run("lucir"), H100, 600.0, 100.0)
    _write(tmp_path, _run("lucir"), H100, 600.0, 100.0, study_dir="snapshots", copied_from="runs/x")
    _write(tmp_path, _run("lwf"), CPU, 3000.0, 1000.0)
    cut = _run("lucir").replace(last_phase=1)
    _write(tmp_path, cut, H100, 10.0, 10.0, study_dir="sweeps/mnemonics")
    runs = grid_cost.measured_runs(tmp_path, gpu_only=False)
    assert [(r.key, r.phase0_s, r.incremental_s, r.device) for r in runs] == [
        (("caltech100", "quick", "lucir", 5), 600.0, 500.0, H100),
        (("caltech100", "quick", "lwf", 5), 3000.0, 5000.0, CPU)]
    assert [r.key[2] for r in grid_cost.measured_runs(tmp_path)] == ["lucir"]  # GPU only


def test_grid_cost_bases_and_gpu_hours_exact(tmp_path):
    # lucir measured on the GPU at seeds 1993, 1994 (phase 0 once from the cache: 0.04 s) and on the CPU;
    # lwf measured on the CPU only; lucir at the paper profile (3x the quick cost) for seed 1993
    _write(tmp_path, _run("lucir"), H100, 720.0, 144.0)
    _write(tmp_path, _run("lucir", seed=1994), H100, 0.04, 216.0)
    _write(tmp_path, _run("lucir", seed=1995), CPU, 7200.0, 1800.0)
    _write(tmp_path, _run("lwf"), CPU, 3600.0, 720.0)
    _write(tmp_path, _run("lucir", profile="paper"), H100, 2160.0, 432.0)
    _write(tmp_path, _run("lucir", phases=10), H100, 0.04, 100.0)  # phase 0 from the shared cache
    model = grid_cost.CostModel.from_ledger(tmp_path)
    # GPU/CPU ratio from the one key measured on both: a basis's phase 0 is its largest, the rest a mean
    gpu = 720.0 + (144.0 * 5 + 216.0 * 5) / 2
    cpu = 7200.0 + 1800.0 * 5
    assert model.gpu_per_cpu == pytest.approx(gpu / cpu)

    est = model.estimate(_run("lucir", seed=1993))
    assert (est.kind, est.phase0_s, est.incremental_s) == ("measured", 720.0, 720.0)
    est = model.estimate(_run("lucir", seed=1995))  # measured on the CPU only: the GPU seeds win
    assert (est.kind, est.phase0_s, est.incremental_s) == ("other seeds", 720.0, 900.0)
    est = model.estimate(_run("lwf"))
    assert est.kind == "device x" and est.incremental_s == pytest.approx(3600.0 * gpu / cpu)
    est = model.estimate(_run("lucir", profile="paper", seed=1994))
    assert (est.kind, est.phase0_s, est.incremental_s) == ("other seeds", 2160.0, 2160.0)
    # lwf at paper: its quick estimate (device x) times the paper/quick ratio measured on lucir N=5
    ratio = (2160.0 + 432.0 * 5) / gpu
    est = model.estimate(_run("lwf", profile="paper"))
    assert est.kind == "profile x" and est.incremental_s == pytest.approx(3600.0 * gpu / cpu * ratio)
    # CIFAR-100: caltech100's estimate times 500 / 54.94 training images per class
    est = model.estimate(_run("lucir", dataset="cifar100"))
    assert est.kind == "images x" and est.incremental_s == pytest.approx(900.0 * 500 / 54.94)
    assert est.phase0_s == pytest.approx(720.0 * 500 / 54.94)
    assert model.estimate(_run("bic")) is None

    # the grid: lucir N=5 and N=10 of seed 1993 share one phase 0 (counted once: 720 s), seed 1994
    # has its own (measured from the cache: 0.04 s); bic has no basis and is listed, not counted
    grid = [_run("lucir"), _run("lucir", phases=10), _run("lucir", seed=1994), _run("bic")]
    cost = grid_cost.grid_cost(grid, model)
    assert cost.runs == 3 and cost.unresolved == [_run("bic").config_hash()] and cost.bases == {"measured": 3}
    assert cost.gpu_hours == pytest.approx((720.0 + 720.0 + 1000.0 + 0.04 + 1080.0) / 3600.0)
    assert cost.line() == ("1.0 GPU-hours for 3 runs (3 measured); 1 run(s) with no measured basis are not "
                           "counted")
