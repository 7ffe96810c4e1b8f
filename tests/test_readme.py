"""The README's generated blocks: exact tables from fake records, and the block splice."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnemonics_lib.config import make_config
from mnemonics_study import report
from mnemonics_study.study import parse_spec
from tools import readme

ROOT = Path(__file__).resolve().parent.parent


def fake(spec: str, seed: int, aia: float, device: str = "Intel(R) Xeon(R)", compiled: bool = False,
         phases: int = 5, nme: float | None = None):
    c = make_config(**parse_spec(spec), dataset="caltech100", phases=phases, seed=seed, class_order_seed=seed)
    config = {**c.to_dict(), "config_hash": c.config_hash()}
    return SimpleNamespace(config=config, metrics={"aia_cnn": aia, "aia_nme": aia + 1 if nme is None else nme},
                           env={"device": device, "cpu_compile": compiled}, path=Path(c.config_hash()))


def test_seed_table_is_exact():
    recs = [fake("lucir", 1993, 40.0), fake("lucir", 1994, 30.0, "NVIDIA H200"),
            fake("lucir_mnemonics", 1993, 41.5, compiled=True), fake("lucir_mnemonics", 1994, 29.0),
            fake("icarl", 1993, 5.0, nme=7.25),
            fake("lucir", 1993, 99.0, phases=10)]  # another N: ignored
    rows = (readme.Row("LUCIR (herding)", "lucir"), readme.Row("LUCIR w/ mnemonics", "lucir_mnemonics"),
            readme.Row("iCaRL (NME)", "icarl", "aia_nme"), readme.Row("BiC", "bic"))
    table = readme.seed_table(recs, 5, "caltech100", seeds=(1993, 1994), rows=rows).splitlines()
    h = {r.config["seed"]: r.config["config_hash"] for r in recs if r.config["method"] == "lucir"
         and r.config["exemplars"] == "herding" and r.config["phases"] == 5}
    m = {r.config["seed"]: r.config["config_hash"] for r in recs if r.config["exemplars"] == "mnemonics"}
    assert table[0].startswith("| method | AIA, seed 1993 / 1994 (mean ± std) | Δ vs LUCIR (herding)")
    assert table[2] == (f"| LUCIR (herding) | 40.00 / 30.00 (35.00 ± 7.07) | (reference) | 63.17 [3p] | "
                        f"{h[1993]}, {h[1994]} | 1993: CPU, 1994: H200 |")
    assert table[3] == (f"| LUCIR w/ mnemonics | 41.50 / 29.00 (35.25 ± 8.84) | +1.50 / -1.00 (mean +0.25) | "
                        f"63.34 [3p] | {m[1993]}, {m[1994]} | 1993: CPU compiled, 1994: CPU |")
    assert table[4].startswith("| iCaRL (NME) | 7.25 / not run | -32.75 | 57.12 [3p] | ")
    assert table[5] == "| BiC | not run / not run |  | 59.36 [recalled] |  |  |"
    assert readme.ordering_line(recs, 5, (1993, 1994), rows) == (
        "The paper's ordering, pair by pair (seeds where it holds, of the seeds both have): "
        "LUCIR (herding) < LUCIR w/ mnemonics: 1 of 2; LUCIR w/ mnemonics < iCaRL (NME): 0 of 1; "
        "iCaRL (NME) < BiC: 0 of 0.")
    # no paper number for a dataset the paper did not use
    assert "| (reference) | none |" in readme.seed_table(recs[:1], 5, "cifar10", seeds=(1993,), rows=rows[:1])


def test_ablation_table_pairs_each_row_with_its_own_method_and_herding():
    recs = [fake("lucir", 1993, 40.0), fake("lucir", 1994, 30.0),
            fake("lucir_random", 1993, 41.0), fake("lucir_random", 1994, 28.5),
            fake("lucir_mnemonics+no_adjust_old", 1994, 31.25, "NVIDIA H100 80GB HBM3"),
            fake("icarl", 1993, 10.0, nme=2.5), fake("icarl_random", 1993, 99.0, nme=3.0),
            fake("lucir_random", 1993, 77.0, phases=10)]  # another N: ignored
    specs = ["lucir_random", "icarl", "lucir", "lucir_mnemonics+no_adjust_old", "icarl_random", "bic_mnemonics"]
    table = readme.ablation_table(recs, 5, specs, seeds=(1993, 1994)).splitlines()
    h = {(r.config["method"], r.config["exemplars"], r.config["seed"]): r.config["config_hash"] for r in recs
         if r.config["phases"] == 5}
    assert table[0] == ("| method | exemplars | AIA, seed 1993 / 1994 (mean ± std) | Δ vs the method with "
                        "herding, paired by seed | config hashes | device |")
    # herding first within a method, flagged runs last; methods in their first-seen order
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| LUCIR", "herding"], ["| LUCIR", "random"], ["| LUCIR", "mnemonics+no_adjust_old"],
        ["| iCaRL (NME)", "herding"], ["| iCaRL (NME)", "random"], ["| BiC", "mnemonics"]]
    assert table[3] == (f"| LUCIR | random | 41.00 / 28.50 (34.75 ± 8.84) | +1.00 / -1.50 (mean -0.25) | "
                        f"{h['lucir', 'random', 1993]}, {h['lucir', 'random', 1994]} | 1993: CPU, 1994: CPU |")
    assert table[4] == (f"| LUCIR | mnemonics+no_adjust_old | not run / 31.25 | +1.25 | "
                        f"{h['lucir', 'mnemonics', 1994]} | 1994: H100 |")
    # iCaRL: its NME head on both sides of the difference
    assert table[6].startswith("| iCaRL (NME) | random | 3.00 / not run | +0.50 | ")
    assert table[7] == "| BiC | mnemonics | not run / not run |  |  |  |"


def test_comparison_table_calls_a_difference_only_when_the_t_interval_excludes_zero():
    base = [fake("lucir", s, v) for s, v in ((1993, 40.0), (1994, 30.0), (1995, 20.0))]
    noisy = [fake("lucir_mnemonics", s, v) for s, v in ((1993, 38.5), (1994, 30.5), (1995, 22.5))]
    clear = [fake("lucir_random", s, v) for s, v in ((1993, 41.0), (1994, 31.2), (1995, 21.4))]
    one = [fake("lucir", 1993, 40.0, phases=10), fake("lucir_mnemonics", 1993, 40.75, phases=10)]
    recs = base + noisy + clear + one
    comps = [readme.Comparison("caltech100", 5, "lucir_mnemonics", "lucir", recs),
             readme.Comparison("caltech100", 5, "lucir_random", "lucir", recs),
             readme.Comparison("caltech100", 10, "lucir_mnemonics", "lucir", recs),
             readme.Comparison("cifar10", 5, "lucir_mnemonics", "lucir", recs[:3])]
    table = readme.comparison_table(comps).splitlines()
    # deltas -1.5 / +0.5 / +2.5: mean 0.5, sd 2, half-width 4.303 * 2 / sqrt(3) = 4.969
    assert table[2] == ("| caltech100 | 5 | lucir_mnemonics vs lucir | -1.50 / +0.50 / +2.50 | +0.50 ± 2.00 | "
                        "[-4.47, +5.47] | not resolved (3 seeds) |")
    # deltas +1.0 / +1.2 / +1.4: half-width 4.303 * 0.2 / sqrt(3) = 0.497
    assert table[3] == ("| caltech100 | 5 | lucir_random vs lucir | +1.00 / +1.20 / +1.40 | +1.20 ± 0.20 | "
                        "[+0.70, +1.70] | higher (3 seeds) |")
    assert table[4] == ("| caltech100 | 10 | lucir_mnemonics vs lucir | +0.75 / not run / not run |  |  | "
                        "not resolved (one seed) |")
    assert table[5] == "| cifar10 | 5 | lucir_mnemonics vs lucir | not run / not run / not run |  |  | not run |"
    lo_hi = readme.paired_stats([-2.0, -1.0, -1.5])[2:]
    assert lo_hi[1] < 0 and round(lo_hi[0], 3) == round(-1.5 - 4.303 * 0.5 / 3 ** 0.5, 3)


def test_margin_table_sets_exemplar_against_real_margins_under_the_same_run():
    herd, mnem = fake("lucir", 1993, 40.0), fake("lucir_mnemonics", 1993, 41.0, "NVIDIA H100 80GB HBM3")
    herd.metrics["snapshots"] = [{"phase": 1, "exemplar_margin": [-0.1, 0.3, 0.1], "real_margin": [-0.2, 0.0]},
                                 {"phase": 5, "exemplar_margin": [0.5], "real_margin": [-0.5, 0.25, 0.0]}]
    mnem.metrics["snapshots"] = [{"phase": 1, "exemplar_margin": [-0.25, -0.05], "real_margin": [0.0]},
                                 {"phase": 5, "exemplar_margin": [0.0], "real_margin": [0.1]}]
    random_missing = make_config(**parse_spec("lucir_random"), dataset="caltech100", phases=5)
    long = report.margin_table([herd, mnem], dataset="caltech100", profile="quick", missing=[random_missing]).long
    table = readme.margin_table([herd, mnem], long).splitlines()
    hh, mh = herd.config["config_hash"], mnem.config["config_hash"]
    assert table[2:] == [
        f"| herding | early (phase 1) | +0.1000 / -0.1000 | +0.2000 | 0.333 / 0.500 | {hh} | CPU |",
        f"| herding | late (phase 5) | +0.5000 / +0.0000 | +0.5000 | 0.000 / 0.333 | {hh} | CPU |",
        f"| mnemonics | early (phase 1) | -0.1500 / +0.0000 | -0.1500 | 1.000 / 0.000 | {mh} | H100 |",
        f"| mnemonics | late (phase 5) | +0.0000 / +0.1000 | -0.1000 | 0.000 / 0.000 | {mh} | H100 |",
        "| random | not run |  |  |  |  |  |"]


def test_sweep_table_is_a_grid_with_the_best_cell_in_bold():
    from mnemonics_study import study

    configs = study.sweep_configs("caltech100", [0.01, 0.1], [1.0, 100.0], [1], last_phase=1, memory_per_class=20)
    recs = [SimpleNamespace(config={"config_hash": c.config_hash()}, metrics={"aia_cnn": v})
            for c, v in zip(configs, (32.111, 32.349, 31.97))]  # the last config is not run
    h = [c.config_hash() for c in configs]
    assert readme.sweep_table(configs, recs).splitlines() == [
        "| K = 1: alpha \\ beta1 | 1 | 100 |", "|---|---|---|",
        f"| 0.01 | 32.11 ({h[0]}) | **32.35** ({h[1]}) |",
        f"| 0.1 | 31.97 ({h[2]}) | not run ({h[3]}) |"]


def test_device_label_names_each_device_a_resumed_run_used():
    xeon, h100 = "Intel(R) Xeon(R) Processor", "NVIDIA H100 80GB HBM3"
    assert report.device_of({"device": xeon, "cpu_compile": True}) == "CPU compiled"
    assert report.device_of({"device": "NVIDIA H200"}) == "H200"
    legs = [{"first_phase": 0, "device": xeon}, {"first_phase": 11, "device": xeon},
            {"first_phase": 23, "device": h100}]
    assert report.device_of({"device": h100, "legs": legs}) == "CPU (phases 0-22) + H100 (phases 23-)"
    # resumed on the same device: one label, as for an uninterrupted run
    same = [{"first_phase": 0, "device": xeon, "cpu_compile": True}, {"first_phase": 4, "device": xeon}]
    assert report.device_of({"device": xeon, "cpu_compile": True, "legs": same}) == "CPU compiled"
    unknown = [{"first_phase": 0, "device": None}, {"first_phase": 7, "device": h100}]
    assert report.device_of({"device": h100, "legs": unknown}) == "not recorded (phases 0-6) + H100 (phases 7-)"


def test_replace_block_touches_only_its_block():
    text = "intro\n<!-- generated: a -->\nold\n<!-- /generated: a -->\nmiddle\n"
    assert readme.replace_block(text, "a", "new 1\nnew 2\n") == (
        "intro\n<!-- generated: a -->\nnew 1\nnew 2\n<!-- /generated: a -->\nmiddle\n")
    with pytest.raises(readme.ReadmeError, match="<!-- generated: b -->"):
        readme.replace_block(text, "b", "x")
    with pytest.raises(readme.ReadmeError):
        readme.replace_block("<!-- /generated: a -->\n<!-- generated: a -->\n", "a", "x")


def test_update_files_fills_each_block_where_its_markers_are():
    texts = {"README.md": "a\n<!-- generated: x -->\n<!-- /generated: x -->\n",
             "docs/study.md": "<!-- generated: x -->\nold\n<!-- /generated: x -->\n<!-- generated: y -->\n"
                              "<!-- /generated: y -->\n"}
    new, absent = readme.update_files(texts, {"x": "X", "y": "Y", "z": "Z"})
    assert new["README.md"] == "a\n<!-- generated: x -->\nX\n<!-- /generated: x -->\n"
    assert "X" in new["docs/study.md"] and "Y" in new["docs/study.md"] and "old" not in new["docs/study.md"]
    assert absent == ["z"]


def test_headline_table_gives_the_mean_of_the_seeds_that_ran_beside_the_paper():
    recs = [fake("lucir", 1993, 40.0), fake("lucir", 1994, 30.0), fake("lucir", 1993, 20.0, phases=10)]
    rows = (readme.Row("LUCIR (herding)", "lucir"), readme.Row("BiC", "bic"))
    assert readme.headline_table(recs, "caltech100", [5, 10], seeds=(1993, 1994, 1995), rows=rows).splitlines() == [
        "| method | N = 5: ours (caltech100) / paper (cifar100) | N = 10: ours (caltech100) / paper (cifar100) |",
        "|---|---|---|",
        "| LUCIR (herding) | 35.00 (2 of 3 seeds) / 63.17 [3p] | 20.00 (1 of 3 seeds) / 60.14 [3p] |",
        "| BiC | not run / 59.36 [recalled] | not run / 54.20 [recalled] |"]


def test_committed_readme_blocks_match_the_committed_results(tmp_path):
    """`scripts/study.py readme` (quick and paper profiles) on the committed results leaves the
    committed README.md and docs/study.md unchanged: their tables are what results/ holds, not
    typed by hand. The README holds the headline; docs/study.md the seed-by-seed tables."""
    files = {"README.md": tmp_path / "README.md", "docs/study.md": tmp_path / "study.md"}
    for src, copy in files.items():
        copy.write_text((ROOT / src).read_text())
    args = [a for copy in files.values() for a in ("--readme", str(copy))]
    for profile in ("quick", "paper"):
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "readme", "--profile", profile,
                              *args], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "rewritten" not in out.stdout and out.stdout.count("unchanged") == 2, out.stdout
    assert "<!-- generated: headline-caltech100-quick -->" in files["README.md"].read_text()
    assert "<!-- generated: icarl-phase0-caltech100-quick -->" in files["README.md"].read_text()
    assert "<!-- generated: table1-caltech100-quick-N5 -->" in files["docs/study.md"].read_text()


def test_readme_is_short_and_about_the_project():
    """A page a newcomer reads in minutes: under 25 KB, with the card's call and the two commands,
    and no development diary (sessions, work periods, ticket numbers, dates)."""
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 25_000
    for must in ("make figures", "make test", "papermill notebooks/table1.ipynb out.ipynb -p phases 10",
                 "source .venv/bin/activate", "make lab", "docs/imagenet.md", "docs/cluster.md", "docs/study.md"):
        assert must in text, must
    assert not re.search(r"\bsession\b|issue #|\b20\d\d-\d\d-\d\d\b", text, re.I)


def _phase(before, after, new, old=None, model=None):
    change = {"new": {"mean": new, "max": 9.0}} | ({"old": {"mean": old, "max": 1.0}} if old is not None else {})
    return {"mnemonics_heldout_before": before, "mnemonics_heldout_after": after,
            "mnemonics_pixel_delta": new, "exemplar_change": change} | (
        {} if model is None else {"mnemonics_heldout_model": model})


def test_acts_table_counts_phases_and_applies_the_criterion():
    a, b = fake("lucir_mnemonics", 1993, 30.0), fake("lucir_mnemonics", 1994, 31.0)
    a.metrics["per_phase"] = [_phase(2.0, 1.5, 3.0, model=1.25), _phase(2.0, 2.5, 1.0, 0.5, model=2.5)]
    b.metrics["per_phase"] = [_phase(3.0, 2.0, 0.5), _phase(3.0, 2.9, 0.25, 0.25)]
    old = fake("lucir_mnemonics", 1995, 29.0)
    old.metrics["per_phase"] = [{"acc_cnn": 1.0}]  # a run from before the held-out measurement
    herding = fake("lucir", 1993, 40.0)
    lines = readme.acts_table([b, herding, old, a], "caltech100").splitlines()
    h = {r.config["seed"]: r.config["config_hash"] for r in (a, b, old)}
    assert lines[2:5] == [
        f"| 5 | 1993 | 1 of 2 (not at phase 1) | 1 of 2 | 2.000 (min 1.000, max 3.000) | 0.500 | {h[1993]} | CPU |",
        f"| 5 | 1994 | 2 of 2 | not measured | 0.375 (min 0.250, max 0.500) | 0.250 | {h[1994]} | CPU |",
        f"| 5 | 1995 | not measured (run predates the held-out split) |  |  |  | {h[1995]} | CPU |"]
    assert lines[-1] == ("Over 4 phases: held-out loss fell in 75 % (criterion >= 90 %), new exemplars moved "
                         "1.188 grey levels on average (criterion >= 1): does not act by the criterion.")
    b.metrics["per_phase"][0] = _phase(3.0, 2.0, 5.0)
    a.metrics["per_phase"][1] = _phase(2.0, 1.0, 1.0, 0.5)
    assert readme.acts_table([a, b], "caltech100").endswith(": acts.")
    assert readme.acts_table([herding], "cifar10") == (
        "No LUCIR w/ mnemonics run of cifar10 with the held-out measurement in results/ yet.")


def test_the_earlier_step_maps_only_the_mnemonics_configs():
    from mnemonics_lib.config import make_config

    mn, herding = make_config(exemplars="mnemonics"), make_config()
    earlier, same = readme.at_earlier_step([mn, herding])
    assert same is herding
    assert (earlier.mnemonics.inner_lr, earlier.mnemonics.outer_lr, earlier.mnemonics.old_lr) == (0.1, 1.0, 1.0)
    assert earlier.mnemonics.inner_steps == mn.mnemonics.inner_steps and earlier.config_hash() != mn.config_hash()


def test_probe_block_picks_the_phase_and_fills_alpha_from_the_records_settings(tmp_path):
    import json

    folder = tmp_path / "diagnostics" / "mnemonics_probe"
    folder.mkdir(parents=True)
    row = {"program": "new", "beta": 1.0, "K": 2, "heldout_before": 2.5, "heldout_after": 1.5,
           "pixel_delta": 9.0, "pixel_max": 200.0}
    for name, phase, written in (("a", 1, "2026-12-01T00:00:00+00:00"), ("b", 0, "2026-12-02T00:00:00+00:00")):
        rec = {"rows": [row], "probe_phase": phase, "base_config_hash": "abc", "written_utc": written,
               "probe_settings": {"inner_lr": 0.1 if phase else 0.001},
               "env": {"git_commit": "0123456789", "device": "cpu", "cpu_compile": True}}
        (folder / f"cifar10-quick-s1993-{name}.json").write_text(json.dumps(rec))
    at1 = readme.probe_block(tmp_path, "cifar10", "quick", 1).splitlines()
    assert at1[2] == "| new | **1** | 2 | 0.1 | all | — | 2.5000 | 1.5000 | -1.0000 | 9.00 / 200.0 | yes | — |"
    assert at1[-1].startswith("Base network: LUCIR herding after phase 1 (abc); `cifar10-quick-s1993-a.json`")
    assert "| 0.001 | all |" in readme.probe_block(tmp_path, "cifar10", "quick").splitlines()[2]  # the newest
    assert readme.probe_block(tmp_path, "cifar10", "quick", 2).endswith("--probe-phase 2`")


def test_cbf_probe_block_renders_the_newest_record(tmp_path):
    import json

    folder = tmp_path / "diagnostics" / "cbf_probe"
    folder.mkdir(parents=True)
    assert readme.cbf_probe_block(tmp_path, "caltech100", "quick") == (
        "n/a (not run): `python scripts/probe_cbf.py --dataset caltech100 --profile quick`")
    row = {"phase": 1, "acc_all": 29.0, "acc_old": 17.0, "acc_new": 58.125, "predicted_new_share": 48.0,
           "true_new_share": 16.67}
    # "b" is the newer record although "c" sorts after it by name
    for name, end, variant in (("b", "2026-12-02T00:00:00+00:00", "lucir_loss"), ("c", "2026-12-01T00:00:00+00:00", "none")):
        rec = {"rows": [row | {"variant": variant}], "base_config_hash": "abc", "base_config": {"seed": 1993},
               "cbf_schedule": {"epochs": 20, "lr": 0.01},
               "written_utc": end, "env": {"git_commit": "0123456789", "device": "cpu", "cpu_compile": True}}
        (folder / f"caltech100-quick-s1993-{name}.json").write_text(json.dumps(rec))
    lines = readme.cbf_probe_block(tmp_path, "caltech100", "quick").splitlines()
    assert lines[2] == "| 1 | `lucir_loss` | 29.00 / 17.00 / 58.12 | 48.0 / 16.7 |"
    assert lines[-1] == ("Base network: LUCIR herding (abc), caltech100, quick, seed 1993; CBF 20 epochs at lr 0.01; "
                         "`caltech100-quick-s1993-b.json`, commit 0123456, CPU compiled.")


def test_comparisons_add_the_no_adjust_old_rows_once_and_label_the_low_data_control():
    """Table 1 and the ablation both hold mnemonics vs herding: one row. Mnemonics without the
    old-exemplar adjustment is set against herding + CBF and full mnemonics where it ran; a variant
    with 5 exemplars per class gets rows of its own, named so."""
    aia = {"lucir": 40.0, "lucir_mnemonics": 37.0, "lucir+balanced_finetune": 42.0,
           "lucir_mnemonics+no_adjust_old": 41.0}
    recs = [fake(spec, s, v + (s - 1993) * 0.5 * (spec == "lucir_mnemonics+no_adjust_old"))
            for spec, v in aia.items() for s in (1993, 1994, 1995)]
    configs = [make_config(**parse_spec(spec), dataset="caltech100", phases=5) for spec in aia]
    p = {"dataset": "caltech100", "memory_per_class": 20, "phases": [5], "ablation_phases": [5],
         "cbf_control_phases": []}
    low = {**p, "memory_per_class": 5}
    # the ablation's record set lacks one mnemonics seed: the shared row must come from Table 1's
    partial = [r for r in recs if not (r.config["seed"] == 1995 and r.config["exemplars"] == "mnemonics"
                                       and r.config["mnemonics"]["adjust_old"])]
    comps = readme._ordered(readme._mnemonics_comparisons(
        [(p, configs, recs)], [(p, configs, partial), (low, configs[:3], recs)]))
    assert comps[0].records is recs
    assert [(c.dataset, c.spec, c.reference) for c in comps] == [
        ("caltech100", "lucir_mnemonics", "lucir"),
        ("caltech100", "lucir_mnemonics", "lucir+balanced_finetune"),
        ("caltech100", "lucir+balanced_finetune", "lucir"),
        ("caltech100", "lucir_mnemonics+no_adjust_old", "lucir+balanced_finetune"),
        ("caltech100", "lucir_mnemonics+no_adjust_old", "lucir_mnemonics"),
        ("caltech100, 5 exemplars per class", "lucir_mnemonics", "lucir"),
        ("caltech100, 5 exemplars per class", "lucir_mnemonics", "lucir+balanced_finetune"),
        ("caltech100, 5 exemplars per class", "lucir+balanced_finetune", "lucir")]
    rows = readme.comparison_table(comps).splitlines()
    # deltas -1.0 / -0.5 / 0.0: mean -0.5, sd 0.5, half-width 4.303 * 0.5 / sqrt(3) = 1.242
    assert rows[5] == ("| caltech100 | 5 | lucir_mnemonics+no_adjust_old vs lucir+balanced_finetune | "
                       "-1.00 / -0.50 / +0.00 | -0.50 ± 0.50 | [-1.74, +0.74] | not resolved (3 seeds) |")
    # at the earlier step: no no_adjust_old rows, and a variant without mnemonics runs is left out
    earlier = readme._mnemonics_comparisons([(p, configs, recs)], [(p, configs, recs), (low, configs[:3], [])],
                                            extras=False)
    assert [(c.dataset, c.spec, c.reference) for c in readme._ordered(earlier)] == [
        ("caltech100", "lucir_mnemonics", "lucir"), ("caltech100", "lucir_mnemonics", "lucir+balanced_finetune"),
        ("caltech100", "lucir+balanced_finetune", "lucir")]
    assert readme.dataset_label(p) == ("caltech100", "caltech100")
    assert readme.dataset_label(low) == ("caltech100-m5", "caltech100, 5 exemplars per class")


def test_probe_block_joins_the_settings_of_every_record_on_the_same_network(tmp_path):
    """A later probe of the same network and phase (e.g. K at the chosen alpha) adds its rows; a
    setting probed twice shows the newer result; a probe of another network does not mix in."""
    import json

    folder = tmp_path / "diagnostics" / "mnemonics_probe"
    folder.mkdir(parents=True)

    def row(k, after):
        return {"program": "new", "beta": 10.0, "K": k, "alpha": 0.001, "heldout_before": 0.7, "heldout_after": after,
                "heldout_model": 0.72, "pixel_delta": 5.0, "pixel_max": 90.0}

    env = {"git_commit": "0123456789", "device": "cpu", "cpu_compile": True}
    for name, base, phase, iters, written, rows in (
            ("a", "abc", 0, 10, "2026-12-01T00:00:00+00:00", [row(2, 0.69), row(1, 0.71)]),
            ("b", "abc", 0, 10, "2026-12-03T00:00:00+00:00", [row(2, 0.68), row(5, 0.65)]),
            ("c", "xyz", 0, 10, "2026-12-02T00:00:00+00:00", [row(3, 0.1)]),  # another network
            ("d", "abc", 1, 10, "2026-12-02T00:00:00+00:00", [row(3, 0.2)]),  # another phase
            ("e", "abc", 0, 20, "2026-12-02T00:00:00+00:00", [row(3, 0.3)])):  # another outer loop
        rec = {"rows": rows, "probe_phase": phase, "base_config_hash": base, "written_utc": written,
               "probe_settings": {"inner_lr": 0.001, "inner_steps": 1, "outer_iters": iters}, "env": env}
        (folder / f"cifar10-quick-s1993-{name}.json").write_text(json.dumps(rec))
    lines = readme.probe_block(tmp_path, "cifar10", "quick", 0).splitlines()
    assert [ln.split(" | ")[2] for ln in lines[2:5]] == ["2", "1", "5"]  # K, first seen first
    assert lines[2].split(" | ")[7] == "0.6800"  # the newer of the two K = 2 results
    assert len(lines) == 7 and not any(f"s1993-{n}.json" in lines[-1] for n in "cde")
    assert "`cifar10-quick-s1993-a.json`" in lines[-1] and "`cifar10-quick-s1993-b.json`" in lines[-1]
