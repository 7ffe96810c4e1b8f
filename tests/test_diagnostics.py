"""The iCaRL phase-0 diagnostic: variants, runs stored and cached as runs, and its README table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mnemonics_lib import trainer
from mnemonics_lib.config import ConfigError
from mnemonics_lib.methods import get_method
from mnemonics_study import diagnostics

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str = "diagnose"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
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
            c.schedule.lr) == ("icarl", 5, 1994, 1994, 0, 60, 2.0)  # iCaRL's own lr


def test_phase0_table_is_exact():
    variants = ["icarl", "lwf:lr=0.5"]
    configs = diagnostics.phase0_configs(variants)
    rec = SimpleNamespace(config={"config_hash": configs[0].config_hash()},
                          metrics={"per_phase": [{"acc_cnn": 9.875, "acc_nme": 6.25}]},
                          env={"device": "Intel(R) Xeon(R) Processor", "cpu_compile": True})
    assert diagnostics.phase0_table(variants, configs, [rec]).splitlines()[2:] == [
        f"| icarl | BCE | 2 | 20 | 9.88 | 6.25 | {configs[0].config_hash()} | CPU compiled |",
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


def test_probe_table_marks_the_settings_that_act_and_the_choice():
    from mnemonics_study import step_probe

    rows = [{"program": "new", "beta": 0.1, "K": 1, "heldout_before": 2.0, "heldout_after": 1.5,
             "pixel_delta": 0.5, "pixel_max": 3.0},  # lowers the loss but moves < 1 grey level
            {"program": "new", "beta": 1.0, "K": 2, "heldout_before": 2.0, "heldout_after": 1.25,
             "pixel_delta": 9.4, "pixel_max": 255.0},
            {"program": "new", "beta": 10.0, "K": 2, "heldout_before": 2.0, "heldout_after": 2.5,
             "pixel_delta": 48.0, "pixel_max": 255.0},
            {"program": "old", "beta": 1.0, "K": 1, "heldout_before": 3.0, "heldout_after": 3.5,
             "pixel_delta": 8.0, "pixel_max": 255.0}]
    assert step_probe.choose(rows, "new") is rows[1] and step_probe.choose(rows, "old") is None
    assert step_probe.probe_table(rows).splitlines()[2:] == [
        "| new | 0.1 | 1 | — | — | — | 2.0000 | 1.5000 | -0.5000 | 0.50 / 3.0 | no | — |",
        "| new | **1** | 2 | — | — | — | 2.0000 | 1.2500 | -0.7500 | 9.40 / 255.0 | yes | — |",
        "| new | 10 | 2 | — | — | — | 2.0000 | 2.5000 | +0.5000 | 48.00 / 255.0 | no | — |",
        "| old | 1 | 1 | — | — | — | 3.0000 | 3.5000 | +0.5000 | 8.00 / 255.0 | no | — |"]


def test_a_setting_whose_inner_step_damages_the_network_does_not_teach():
    from mnemonics_study import step_probe

    common = {"program": "new", "K": 2, "pixel_max": 80.0, "pixel_delta": 5.0, "heldout_model": 0.75}
    repair = {**common, "beta": 1.0, "alpha": 0.1, "inner_params": "all", "heldout_before": 2.75,
              "heldout_after": 1.5}  # a large fall, but it only undoes the inner step's damage
    teach = {**common, "beta": 10.0, "alpha": 0.01, "inner_params": "head", "heldout_before": 0.76,
             "heldout_after": 0.74}
    assert step_probe.acts(repair) and step_probe.teaches(repair) is False
    assert step_probe.teaches(teach) is True
    assert step_probe.choose([repair, teach], "new") is teach
    assert step_probe.probe_table([repair, teach]).splitlines()[2:] == [
        "| new | 1 | 2 | 0.1 | all | 0.7500 | 2.7500 | 1.5000 | -1.2500 | 5.00 / 80.0 | yes | no |",
        "| new | **10** | 2 | 0.01 | head | 0.7500 | 0.7600 | 0.7400 | -0.0200 | 5.00 / 80.0 | yes | yes |"]
    config = step_probe.base_config("synthetic", "smoke", 1, 2, 1, synthetic_classes=8)
    assert step_probe.grid_item((10, 2), config) == {"beta": 10.0, "K": 2, "alpha": config.mnemonics.inner_lr,
                                                     "inner_params": "all"}
    assert step_probe.grid_item((10, 2, 0.01, "head"), config)["inner_params"] == "head"
    s = step_probe.probe_settings(config, 10.0, 2, 0.01, "head")
    assert (s.inner_lr, s.inner_params, s.outer_lr, s.inner_steps) == (0.01, "head", 10.0, 2)


def test_probe_moves_pixels_further_with_a_larger_step():
    from mnemonics_study import step_probe

    config = step_probe.base_config("synthetic", "smoke", 1, 2, 1, synthetic_classes=8)
    rows = step_probe.run_probe(config, "cpu", new_grid=((0.01, 1), (10.0, 1)), old_grid=((0.01, 1), (10.0, 1)),
                                say=lambda r: None)
    assert [(r["program"], r["beta"]) for r in rows] == [("new", 0.01), ("new", 10.0), ("old", 0.01), ("old", 10.0)]
    for program in ("new", "old"):
        small, large = [r for r in rows if r["program"] == program]
        assert large["pixel_delta"] > small["pixel_delta"] > 0
        assert small["heldout_before"] == large["heldout_before"]  # the same start, scored alike
        assert small["heldout_model"] == large["heldout_model"] > 0
        assert small["n_heldout"] > 0


# ------------------------------------------------------------------ the CBF probe
def test_cbf_probe_scores_old_new_and_the_new_share_exactly():
    from mnemonics_study import cbf_probe

    class Fixed(torch.nn.Module):  # logits chosen so each prediction is known
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 4).float()

    pred = torch.tensor([0, 1, 3, 3, 2, 0])  # labels 0, 1, 1, 3, 2, 3 with classes 0-1 old
    y = torch.tensor([0, 1, 1, 3, 2, 3])
    s = cbf_probe.scores(get_method("lucir"), {}, Fixed(), pred[:, None].float(), y, n_old=2)
    assert s == pytest.approx({"acc_all": 400 / 6, "acc_old": 200 / 3, "acc_new": 200 / 3,
                               "predicted_new_share": 300 / 6, "true_new_share": 300 / 6})


def test_cbf_probe_starts_from_the_herding_runs_own_phases():
    from mnemonics_study import cbf_probe

    config = cbf_probe.base_config("synthetic", "smoke", 1, 2, 2, synthetic_classes=8)
    rows = cbf_probe.run_probe(config, "cpu", say=lambda r: None)
    assert [(r["phase"], r["variant"]) for r in rows] == [
        (p, v) for p in (1, 2) for v in ("none", "lucir_loss", "no_margin_ranking")]
    herding = trainer.run_incremental(config, "cpu", checkpoints=False)["per_phase"]
    for p in (1, 2):
        before = next(r for r in rows if r["phase"] == p and r["variant"] == "none")
        assert before["acc_all"] == pytest.approx(herding[p]["acc_cnn"])
        assert before["true_new_share"] == pytest.approx(100 * 2 / (4 + 2 * p))  # 2 new of 6 / 8 classes
        full = next(r for r in rows if r["phase"] == p and r["variant"] == "lucir_loss")
        assert full["predicted_new_share"] < before["predicted_new_share"]  # the margin term lowers new scores


def test_probe_scripts_write_their_records_and_a_partial_grid_never_overwrites(tmp_path, capsys):
    base = ["--dataset", "synthetic", "--profile", "smoke", "--phases", "2", "--results-dir", str(tmp_path)]
    import mnemonics_lib.config as config_module

    assert _script("probe_cbf").main(base + ["--last-phase", "1"]) == 0
    (cbf,) = (tmp_path / "diagnostics" / "cbf_probe").glob("synthetic-smoke-s1993-*.json")
    rec = json.loads(cbf.read_text())
    assert [r["variant"] for r in rec["rows"]] == ["none", "lucir_loss", "no_margin_ranking"]
    assert rec["cbf_schedule"]["epochs"] == config_module.CBF_SCHEDULES["smoke"].epochs
    assert rec["env"]["git_commit"] and rec["base_config"]["exemplars"] == "herding"
    with pytest.raises(SystemExit):
        _script("probe_mnemonics").main(base + ["--new-grid", "1:x"])
    assert "write beta:K or beta:K:alpha:inner_params" in capsys.readouterr().err
    assert _script("probe_mnemonics").main(base + ["--new-grid", "1:1", "--old-grid", ""]) == 0
    (probe,) = (tmp_path / "diagnostics" / "mnemonics_probe").glob("*.json")
    assert "-grid" in probe.name and [r["program"] for r in json.loads(probe.read_text())["rows"]] == ["new"]


# ------------------------------------------------------------------ the exemplar-effect probe
def test_exemplar_effect_table_is_exact():
    from mnemonics_study import exemplar_effect

    row = {"phase": 2, "exemplars": exemplar_effect.set_name(0.1), "pixel_delta_new": 2.345, "pixel_delta_old": 0.5,
           "heldout_before": 2.1944, "heldout_after": 1.8891,
           "nme_all": 31.0, "nme_old": 30.0, "nme_new": 40.0, "cbf_acc_all": 32.0, "cbf_acc_old": 36.5,
           "cbf_acc_new": 16.25, "cbf_predicted_new_share": 3.64, "cbf_true_new_share": 18.9}
    assert exemplar_effect.probe_table([row]).splitlines()[2] == (
        "| 2 | mnemonics beta=0.1 | 2.194 → 1.889 | 2.35 / 0.50 | 31.00 / 30.00 / 40.00 | 32.00 / 36.50 / 16.25 | 3.6 / 18.9 |")
    herding = {**row, "exemplars": exemplar_effect.set_name(None), "heldout_before": None, "heldout_after": None}
    assert exemplar_effect.probe_table([herding]).splitlines()[2].startswith("| 2 | herding | — | 2.35")


def test_exemplar_effect_scores_the_herding_runs_own_state_and_the_moved_sets_from_it():
    from mnemonics_study import cbf_probe, exemplar_effect

    # alpha 0.1: on the smoke network the library's alpha 0.001 moves the class means too little at
    # beta 10 to change an NME prediction, and this test is about the probe, not the step
    config = cbf_probe.base_config("synthetic", "smoke", 1, 2, 2, synthetic_classes=8, mnemonics={"inner_lr": 0.1})
    rows = exemplar_effect.run_probe(config, "cpu", (1, 2), (None, 1e-9, 10.0), say=lambda r: None)
    assert [(r["phase"], r["exemplars"]) for r in rows] == [
        (p, s) for p in (1, 2) for s in ("herding", "mnemonics beta=1e-09", "mnemonics beta=10")]
    herding_run = trainer.run_incremental(config, "cpu", checkpoints=False)["per_phase"]
    for p in (1, 2):
        herding, still, moved = [r for r in rows if r["phase"] == p]
        # the herding set's class means are the run's own: its NME accuracy is the run's
        assert herding["nme_all"] == pytest.approx(herding_run[p]["acc_nme"])
        assert herding["cbf_true_new_share"] == pytest.approx(100 * 2 / (4 + 2 * p))  # 2 new of 6 / 8 classes
        # a vanishing step leaves the herding exemplars in place: the same means and CBF
        assert max(still["pixel_delta_new"], still["pixel_delta_old"]) < 1e-3
        assert {k: still[k] for k in ("nme_all", "cbf_acc_all")} == pytest.approx(
            {k: herding[k] for k in ("nme_all", "cbf_acc_all")})
        assert moved["pixel_delta_new"] > 0 and moved["pixel_delta_old"] > 0
        assert moved["heldout_before"] is not None and moved["heldout_after"] is not None
        assert moved["nme_all"] != herding["nme_all"]  # moved exemplars give other class means


def test_exemplar_effect_script_writes_its_record_and_refuses_phase_zero(tmp_path, capsys):
    base = ["--dataset", "synthetic", "--profile", "smoke", "--phases", "2", "--results-dir", str(tmp_path)]
    script = _script("probe_exemplar_effect")
    with pytest.raises(SystemExit, match="incremental phases only"):
        script.main(base + ["--probe-phases", "0"])
    with pytest.raises(SystemExit):
        script.main(base + ["--steps", "one"])
    assert "write float values separated by commas" in capsys.readouterr().err
    assert script.main(base + ["--probe-phases", "1", "--steps", "5"]) == 0
    (rec_path,) = (tmp_path / "diagnostics" / "exemplar_effect").glob("synthetic-smoke-s1993-*.json")
    rec = json.loads(rec_path.read_text())
    assert [r["exemplars"] for r in rec["rows"]] == ["herding", "mnemonics beta=5"]
    assert rec["steps"] == [None, 5.0] and rec["base_config"]["exemplars"] == "herding"
    assert rec["env"]["git_commit"]


def test_schedule_table_is_exact_and_compares_with_the_paper_profile_by_seed():
    variants = ["lucir:epochs=40", "lucir:epochs=80"]
    sched = diagnostics.schedule_configs([1993, 1994], variants)
    (paper_label, paper), (quick_label, quick) = diagnostics.table1_phase0_rows([1993, 1994])
    assert [c.schedule.base_epochs for c in sched[1994]] == [40, 80]
    assert (paper[1993].profile, paper[1993].phases, paper[1993].schedule.base_epochs) == ("paper", 10, 160)
    assert (quick[1994].profile, quick[1994].phases, quick[1994].schedule.base_epochs) == ("quick", 5, 20)

    def rec(c, acc, device="Intel(R) Xeon(R) Processor"):
        return SimpleNamespace(config={"config_hash": c.config_hash()},
                               metrics={"per_phase": [{"acc_cnn": acc}]}, env={"device": device, "cpu_compile": True})

    recs = [rec(paper[1993], 60.0, "NVIDIA H100 80GB HBM3"), rec(paper[1994], 70.0, "NVIDIA H100 80GB HBM3"),
            rec(quick[1993], 30.0), rec(quick[1994], 32.5), rec(sched[1993][1], 61.25)]
    assert diagnostics.schedule_table(variants, sched, recs, [(paper_label, paper), (quick_label, quick)]
                                      ).splitlines()[2:] == [
        "| paper profile (LUCIR N = 10 run) | 160 | 60.00 / 70.00 | 65.00 | (reference) | H100 |",
        "| quick profile (LUCIR N = 5 run) | 20 | 30.00 / 32.50 | 31.25 | -30.00 / -37.50 | CPU compiled |",
        "| lucir:epochs=40 | 40 | not run / not run |  | not run / not run |  |",
        "| lucir:epochs=80 | 80 | 61.25 / not run |  | +1.25 / not run | CPU compiled |"]
