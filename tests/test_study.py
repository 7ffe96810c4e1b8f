"""Run enumeration (counts, priority order, dedup), run specs, the parameter check, the task
runner (cached / computed / missing / failed / skipped), paper numbers and the report tables."""
import json
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from mnemonics_lib.config import ConfigError, MnemonicsSettings
from mnemonics_study import paper_numbers, report, results, snapshots, study

ROOT = Path(__file__).resolve().parent.parent


def params(profile: str) -> dict:
    return yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())


# ------------------------------------------------------------------ specs and builders
@pytest.mark.parametrize("value, expected", [(5, [5]), ([5, 10], [5, 10]), ((1,), [1]), ("lucir", ["lucir"]),
                                             (None, [])])
def test_as_list_accepts_scalars_and_lists(value, expected):
    assert study.as_list(value) == expected


@pytest.mark.parametrize("spec, fields", [
    ("lucir", {"method": "lucir", "exemplars": "herding"}),
    ("lucir_mnemonics", {"method": "lucir", "exemplars": "mnemonics"}),
    ("icarl_authors_code", {"method": "icarl", "exemplars": "authors_code"}),
    ("lucir_mnemonics+no_adjust_old", {"method": "lucir", "exemplars": "mnemonics",
                                       "mnemonics": {"adjust_old": False}}),
    ("lucir_herding+balanced_finetune", {"method": "lucir", "exemplars": "herding", "balanced_finetune": True}),
])
def test_parse_spec(spec, fields):
    assert study.parse_spec(spec) == fields


@pytest.mark.parametrize("spec", ["lucir", "lucir_random", "bic_mnemonics", "lwf_authors_code",
                                  "lucir_mnemonics+no_adjust_old", "lucir_mnemonics+weight_transfer",
                                  "lucir+balanced_finetune", "lucir_mnemonics+no_balanced_finetune"])
def test_spec_of_inverts_parse_spec(spec):
    c = study.make_run(spec, dataset="synthetic", phases=2, seed=1993, profile="smoke")
    assert study.spec_of(c) == spec
    assert study.spec_of(c.to_dict()) == spec


@pytest.mark.parametrize("bad", ["lucirr", "lucir_herd", "lucir+no_such_flag"])
def test_bad_spec_lists_the_vocabulary(bad):
    with pytest.raises(ConfigError, match="lucir"):
        study.parse_spec(bad)


def test_table1_configs_counts_seeds_and_order():
    cs = study.table1_configs("caltech100", [5, 10, 25], study.SEEDS)
    assert len(cs) == 45 and len({c.config_hash() for c in cs}) == 45
    # N, then seed, then method: the first five make a complete single-seed table for N=5
    assert [(c.phases, c.seed, study.spec_of(c)) for c in cs[:6]] == [
        (5, 1993, "lwf"), (5, 1993, "icarl"), (5, 1993, "bic"), (5, 1993, "lucir"), (5, 1993, "lucir_mnemonics"),
        (5, 1994, "lwf")]
    assert all(c.seed == c.class_order_seed for c in cs)
    mn = [c for c in cs if c.exemplars == "mnemonics"]
    assert len(mn) == 9 and all(c.method == "lucir" and c.use_balanced_finetune for c in mn)
    assert all(c.exemplars == "herding" and not c.use_balanced_finetune for c in cs if c not in mn)


def test_scalar_parameters_build_the_same_configs_as_lists():
    a = study.table1_configs("synthetic", 2, 1993, "lucir", "smoke")
    b = study.table1_configs("synthetic", [2], [1993], ["lucir"], "smoke")
    assert [c.config_hash() for c in a] == [c.config_hash() for c in b] and len(a) == 1


def test_ablation_configs_cover_exemplar_types_and_deconfounders():
    cs = study.ablation_configs("caltech100", 5, [1993], "quick")
    assert len(cs) == 4 * 4 + 3
    assert Counter(c.exemplars for c in cs) == {"random": 4, "herding": 5, "mnemonics": 6, "authors_code": 4}
    extras = {study.spec_of(c): c for c in cs[-3:]}
    assert extras["lucir_mnemonics+no_adjust_old"].mnemonics.adjust_old is False
    assert extras["lucir_mnemonics+weight_transfer"].weight_transfer is True
    bal = extras["lucir+balanced_finetune"]
    assert bal.exemplars == "herding" and bal.use_balanced_finetune


def test_cbf_control_adds_only_herding_plus_cbf_beside_table1_runs():
    p = params("quick")
    table1 = {c.config_hash() for c in study.notebook_configs("table1", p)}
    abl = study.notebook_configs("ablation_exemplars", p)
    control = [c for c in abl if c.phases != 5]
    assert len(abl) == 57 + 18 and len({c.config_hash() for c in abl}) == 75
    assert Counter((c.phases, study.spec_of(c)) for c in control) == {
        (n, s): 3 for n in (10, 25) for s in ("lucir", "lucir_mnemonics", "lucir+balanced_finetune")}
    new = [c for c in control if c.config_hash() not in table1]
    assert {study.spec_of(c) for c in new} == {"lucir+balanced_finetune"} and len(new) == 6
    # a control N that is also an ablation N adds nothing: the ablation already has the control there
    same = study.ablation_with_controls("caltech100", [5], study.SEEDS, "quick", ["lucir"], ["herding"],
                                        ["lucir_herding+balanced_finetune", "lucir_mnemonics"], [5])
    assert len(same) == 9 and {c.phases for c in same} == {5}


def test_sweep_configs_grid():
    cs = study.sweep_configs("caltech100", [0.001, 0.01, 0.1], [0.001, 0.01, 0.1], [1, 3])
    assert len({c.config_hash() for c in cs}) == 18
    assert {(c.mnemonics.inner_lr, c.mnemonics.outer_lr, c.mnemonics.inner_steps) for c in cs} == {
        (a, b, k) for a in (0.001, 0.01, 0.1) for b in (0.001, 0.01, 0.1) for k in (1, 3)}
    assert all(c.method == "lucir" and c.exemplars == "mnemonics" and c.phases == 5 and c.seed == 1993 for c in cs)


# ------------------------------------------------------------------ all_configs
def _group(t: study.Task) -> int:
    """Priority group of a task as all_configs documents it."""
    c, art = t.config, t.artifacts[0]
    if art == "table1":
        return 0
    if art == "ablation_exemplars" and c.method == "lucir":
        return 1
    if t.study == study.STUDY_SWEEPS:
        return 2
    if "[" in art:
        return 3
    if t.kind == "snapshot":
        return 4
    if art == "ablation_exemplars":
        return 5
    return 6


def test_all_configs_quick_counts_and_priority_order():
    tasks = study.all_configs(params("quick"))
    # cifar10 ablation: herding + CBF and mnemonics without the old-exemplar adjustment, 3 seeds each;
    # the low-data control (cifar10_m5): herding, mnemonics, herding + CBF at 5 exemplars per class
    # forgetting: the authors' baseline trainer (cosinekd: herding, the code's own exemplar step with
    # weight transfer, and bilevel mnemonics) at N = 5, 10, 25 and 3 seeds, in its 2000-exemplar
    # memory, beside the LUCIR runs
    assert len(tasks) == len({t.key for t in tasks}) == 168
    by = Counter(t.artifacts[0] for t in tasks)
    # the quick sweep: alpha {0.001, 0.01} x beta1 {1, 10, 100} at K = 2, each run cut after phase 1
    assert by == {"table1": 45, "ablation_exemplars": 48, "sweep_mnemonics": 6, "table1[cifar10]": 15,
                  "table1[caltech101_jpeg]": 2, "ablation_exemplars[cifar10]": 6,
                  "ablation_exemplars[cifar10_m5]": 9,
                  "ablation_exemplars[caltech101_jpeg]": 1, "figure1_tsne": 3, "forgetting": 33}
    groups = [_group(t) for t in tasks]
    assert groups == sorted(groups), "tasks are not in priority order"
    assert set(groups) == set(range(7))
    sweep = [t.config for t in tasks if t.artifacts[0] == "sweep_mnemonics"]
    assert {(c.last_phase, c.mnemonics.inner_steps) for c in sweep} == {(1, 2)}
    # the sweep reports around the library's setting: its grid holds the default alpha and beta1
    assert (MnemonicsSettings().inner_lr, MnemonicsSettings().outer_lr) in {
        (c.mnemonics.inner_lr, c.mnemonics.outer_lr) for c in sweep}
    low = [t.config for t in tasks if t.artifacts[0] == "ablation_exemplars[cifar10_m5]"]
    assert {(c.dataset, c.memory_per_class, c.train_per_class) for c in low} == {("cifar10", 5, 500)}
    readme = [t.config for t in tasks if t.config.method == "cosinekd"]
    assert len(readme) == 27 and {(c.memory_mode, c.memory_total) for c in readme} == {("fixed_total", 2000)}
    cifar = [t.config for t in tasks if t.artifacts[0] == "table1[cifar10]"]
    assert {(c.dataset, c.phases) for c in cifar} == {("cifar10", 5)}
    # every notebook's configs are all enumerated (the CLI computes exactly what notebooks read)
    keys = {t.key for t in tasks}
    for nb in study.NOTEBOOKS:
        for t in study.notebook_tasks(nb, params("quick")):
            assert t.key in keys, (nb, t.describe())


def test_all_configs_paper_starts_with_the_lucir_pair_at_n10():
    tasks = study.all_configs(params("paper"))
    first = [(t.config.phases, study.spec_of(t.config), t.config.profile) for t in tasks[:2]]
    assert first == [(10, "lucir", "paper"), (10, "lucir_mnemonics", "paper")]


def test_smoke_params_stay_small_and_out_of_results():
    p = params("smoke")
    assert len(study.all_configs(p)) <= 21  # one synthetic run per forgetting spec, the rest shared
    assert p["results_dir"].startswith("../build/") and p["figures_dir"].startswith("../build/")
    assert p["profile"] == "smoke" and p["dataset"] == "synthetic"


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_params_files_only_hold_known_keys(profile):
    p = params(profile)
    assert set(p) <= study.ALL_PARAMETERS | study.STUDY_KEYS
    assert set(study.ALL_PARAMETERS) <= set(p), "params files list every parameter explicitly"


def test_select_tasks_by_artifact():
    tasks = study.all_configs(params("quick"))
    tsne = study.select_tasks(tasks, ["exemplar_images"])
    assert len(tsne) == 3 and all(t.kind == "snapshot" for t in tsne)
    assert len(study.select_tasks(tasks, ["table1"])) == 45 + 15 + 2  # the variants belong to table1 too
    cifar = study.select_tasks(tasks, ["table1[cifar10]"])
    assert len(cifar) == 15
    # the quick CIFAR-10 variant keeps CIFAR-100's 500 training images per class; the rest keep all
    assert {(t.config.dataset, t.config.train_per_class) for t in cifar} == {("cifar10", 500)}
    assert {t.config.train_per_class for t in tasks if t.config.dataset == "caltech100"} == {None}
    with pytest.raises(study.ParameterError, match="known"):
        study.select_tasks(tasks, ["tabel1"])


def test_launch_order_starts_distinct_phase0_first():
    tasks = study.all_configs(params("smoke"))
    from mnemonics_lib.methods import get_method
    from mnemonics_lib.trainer import phase0_key

    ordered = study.launch_order(tasks, jobs=2)
    keys = [phase0_key(t.config, get_method(t.config.method)) for t in ordered]
    n = len(set(keys))
    assert len(set(keys[:n])) == n, "one task per distinct phase 0 first"
    assert sorted(t.key for t in ordered) == sorted(t.key for t in tasks)
    assert study.launch_order(tasks, jobs=1) == tasks


# ------------------------------------------------------------------ check_parameters
def test_check_parameters_accepts_known_and_returns_them():
    ns = {**study.NOTEBOOK_DEFAULTS["table1"], "study": study, "In": [""], "Out": {}, "_": 3,
          "get_ipython": print}
    assert study.check_parameters(ns, "table1") == study.NOTEBOOK_DEFAULTS["table1"]


def test_check_parameters_rejects_unknown_with_the_known_list():
    ns = {**study.NOTEBOOK_DEFAULTS["table1"], "phase": 10}
    with pytest.raises(study.ParameterError) as e:
        study.check_parameters(ns, "table1")
    assert "'phase'" in str(e.value) and "known parameters" in str(e.value) and "'phases'" in str(e.value)


def test_check_parameters_reads_papermills_injected_cell_from_the_input_history():
    """In a kernel, only the names papermill's injected cell assigned are candidates: a later
    cell's variables (re-running the check) are not parameters, a typo in the injection is."""
    later = {"prov": {"artifact": "table1"}, "saved": ["a.md"], "params": {"dataset": "x"}}
    ok = {**study.NOTEBOOK_DEFAULTS["table1"], **later,
          "In": ["", "dataset: str = 'caltech100'", "# Parameters\nphases = 2\nseeds = [1993]\n", "..."]}
    assert study.check_parameters(ok, "table1")["phases"] == [5, 10, 25]
    bad = {**ok, "phase": 3, "In": ok["In"] + ["# Parameters\nphases = 2\nphase = 3\n"]}
    with pytest.raises(study.ParameterError, match=r"\['phase'\] for notebook 'table1'; known parameters"):
        study.check_parameters(bad, "table1")
    assert study.injected_names({"x": 1}) is None


def test_check_parameters_accepts_other_notebooks_parameters_silently():
    """`-f params/quick.yaml` passes every study parameter to every notebook (each declares them
    all): normal use, so no warning."""
    import warnings

    ns = {**study.NOTEBOOK_DEFAULTS["table1"], "sweep_seed": 1, "variants": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert study.check_parameters(ns, "table1") == study.NOTEBOOK_DEFAULTS["table1"]


@pytest.mark.parametrize("name, value, fix", [
    ("phases", "abc", "`-p phases 10`, or a list: `-y \"phases: [5, 10]\"`"),
    ("seeds", [1993, "x"], "`-p seeds 10`"),
    ("memory_per_class", 2.5, "`-p memory_per_class 5`"),
    ("missing", "skipp", "expected one of ['compute', 'skip', 'error']"),
    ("methods", 3, "`-p methods lucir`"),
])
def test_a_bad_parameter_value_is_one_line_naming_the_fix(name, value, fix):
    ns = {**study.NOTEBOOK_DEFAULTS["table1"], name: value}
    with pytest.raises(study.ParameterError) as e:
        study.check_parameters(ns, "table1")
    msg = str(e.value)
    assert msg.startswith(f"{name}={value!r}: expected") and fix in msg and "\n" not in msg


def test_scalars_and_lists_both_pass_the_check():
    for phases in (10, [5, 10]):
        ns = {**study.NOTEBOOK_DEFAULTS["table1"], "phases": phases, "seeds": 1993, "methods": "lucir"}
        assert study.check_parameters(ns, "table1")["phases"] == phases


def test_notebook_defaults_are_read_from_the_quick_params_file():
    """One source: every notebook's defaults are params/quick.yaml's values."""
    quick = params("quick")
    for nb, defaults in study.NOTEBOOK_DEFAULTS.items():
        assert defaults == {k: quick[k] for k in study.NOTEBOOK_PARAMETERS[nb]}, nb
    assert set(quick) == set(study.ALL_PARAMETERS) | set(study.STUDY_KEYS)


def test_check_parameters_reports_a_deleted_parameter():
    ns = dict(study.NOTEBOOK_DEFAULTS["table1"])
    del ns["seeds"]
    with pytest.raises(study.ParameterError, match="seeds"):
        study.check_parameters(ns, "table1")
    with pytest.raises(study.ParameterError, match="known"):
        study.check_parameters(ns, "table2")


# ------------------------------------------------------------------ run_tasks
def _fake_metrics(config) -> dict:
    acc = 80.0 - config.seed % 10
    return {"per_phase": [{"phase": 0, "n_classes": 10, "acc_cnn": acc, "acc_nme": acc + 1, "acc_upper": 90.0}],
            "aia_cnn": acc, "aia_nme": acc + 1, "last_cnn": acc, "last_nme": acc + 1,
            "forgetting_cnn": 5.0, "forgetting_nme": 4.0, "wall_s_total": 1.0}


def test_run_tasks_statuses(tmp_path, monkeypatch):
    calls = []

    def fake_compute(task, root, device="auto"):
        calls.append(task.config.config_hash())
        if task.config.method == "bic":
            raise RuntimeError("boom")
        return results.run_or_load(task.config, _fake_metrics, root, study=task.study)

    monkeypatch.setattr(study, "compute_task", fake_compute)
    cs = study.table1_configs("synthetic", 2, [1993], ["lwf", "bic", "lucir"], "smoke")
    tasks = [study.Task(c) for c in cs]
    outs = study.run_tasks(tasks, tmp_path, compute_missing=False)
    assert [o.status for o in outs] == ["missing"] * 3 and not calls
    outs = study.run_tasks(tasks, tmp_path, time_limit=0.0)
    assert [o.status for o in outs] == ["skipped"] * 3
    outs = study.run_tasks(tasks, tmp_path)
    assert [o.status for o in outs] == ["computed", "failed", "computed"]
    assert "boom" in outs[1].error
    outs = study.run_tasks(tasks, tmp_path)
    assert [o.status for o in outs] == ["cached", "failed", "cached"]
    with pytest.raises(RuntimeError, match="boom"):
        study.run_configs(cs, tmp_path)
    with pytest.raises(results.MissingRunError, match="make results"):
        study.run_configs(cs, tmp_path, compute_missing=False)



def test_run_tasks_copies_a_run_another_study_holds(tmp_path, monkeypatch):
    """The Fig. 1 snapshot run of a config is the same run Table 1 needs: copied, not retrained."""
    monkeypatch.setattr(study, "compute_task", lambda *a, **k: pytest.fail("must copy, not compute"))
    (c,) = study.table1_configs("synthetic", 2, [1993], ["lucir"], "smoke")
    snap = {**_fake_metrics(c), "snapshots": [], "snapshot_settings": {}}
    results.run_or_load(c, lambda _: snap, tmp_path, study=study.STUDY_SNAPSHOTS)
    (dry,) = study.run_tasks([study.Task(c)], tmp_path, compute_missing=False)
    assert dry.status == "missing"  # a dry run writes nothing
    (out,) = study.run_tasks([study.Task(c)], tmp_path)
    assert out.status == "copied" and out.record.metrics == _fake_metrics(c)
    (out,) = study.run_tasks([study.Task(c)], tmp_path)
    assert out.status == "cached"


@pytest.mark.parametrize("missing, compute_missing, mode", [
    (None, None, "compute"), (None, True, "compute"), (None, False, "error"), ("skip", None, "skip"),
    ("error", False, "error"), ("compute", True, "compute")])
def test_missing_mode_keeps_compute_missing_working(missing, compute_missing, mode):
    assert study.missing_mode(missing, compute_missing) == mode


def test_missing_mode_rejects_unknown_and_contradictions():
    with pytest.raises(study.ParameterError, match="compute"):
        study.missing_mode("skipp")
    with pytest.raises(study.ParameterError, match="contradicts"):
        study.missing_mode("skip", compute_missing=True)


def test_params_files_skip_missing_runs_except_smoke():
    assert params("quick")["missing"] == params("paper")["missing"] == "skip"
    assert params("smoke")["missing"] == "compute"  # the notebook tests need real smoke runs
    assert all(d["missing"] == "skip" for d in study.NOTEBOOK_DEFAULTS.values())


def test_run_configs_skip_returns_what_exists_and_lists_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "compute_task", lambda *a, **k: pytest.fail("skip must compute nothing"))
    cs = study.table1_configs("caltech100", [5, 10], [1993, 1994], ["lwf", "icarl", "lucir"], "quick")
    have = [cs[0], cs[1], cs[4]]  # N=5: lwf and icarl of seed 1993, icarl of seed 1994
    for c in have:
        results.run_or_load(c, _fake_metrics, tmp_path)
    recs = study.run_configs(cs, tmp_path, missing="skip")
    absent = [c for c in cs if c not in have]
    assert [r.config["config_hash"] for r in recs] == [c.config_hash() for c in have]
    assert recs.missing == absent and recs.wanted == 12 and len(list((tmp_path / "runs").iterdir())) == 3
    text = recs.summary("table1")
    assert "3 of 12 runs found" in text and "make results PROFILE=quick" in text and "--only table1" in text
    for c in absent:  # spec, N, seed and hash of every missing run, one per line
        assert any(line.split()[:4] == [study.spec_of(c), "caltech100", str(c.phases), str(c.seed)]
                   and line.split()[-1] == c.config_hash() for line in text.splitlines()), c

    t = report.table1(recs, dataset="caltech100", profile="quick")
    cell = t.long.set_index(["spec", "phases"])
    assert cell.loc[("icarl", 5), "n_seeds"] == 2 and cell.loc[("lwf", 5), "n_missing"] == 1
    assert cell.loc[("lucir", 5), "n_seeds"] == 0 and math.isnan(cell.loc[("lucir", 5), "aia_mean"])
    wide = t.wide.set_index("method")
    assert wide.loc["LUCIR", "N=5 ours"] == report.NOT_RUN and wide.loc["LUCIR", "N=5 paper"] == "63.17 [3p]"
    # _fake_metrics: CNN AIA 77 (seed 1993), 76 (1994); iCaRL is scored with NME (+1)
    assert wide.loc["LwF", "N=5 ours"] == "77.00 (1 of 2 seeds)"
    assert wide.loc["iCaRL", "N=5 ours"] == "77.50 ± 0.71"
    assert (t.wide == report.NOT_RUN).to_numpy().sum() == 4  # lucir N=5 and every N=10 cell
    assert "Runs available: 3 of 12; 9 not run" in t.caption
    assert "training images" not in t.caption  # no cap, nothing said
    capped = report.table1(recs, dataset="caltech100", profile="quick",
                           missing=[c.replace(train_per_class=30) for c in absent])
    assert "; all training images; at most 30 training images per class (a fixed subset);" in capped.caption
    side = json.loads(report.save_table(t, tmp_path / "fig")[2].read_text())
    assert side["n_runs"] == 3 and side["n_runs_wanted"] == 12 and not side["complete"]
    assert [d["config_hash"] for d in side["not_run"]] == [c.config_hash() for c in absent]
    assert "3 of 12 runs (9 not run)" in report.footer(side)

    with pytest.raises(results.MissingRunError) as e:  # error: every missing run listed at once
        study.run_configs(cs, tmp_path, missing="error")
    assert all(c.config_hash() in str(e.value) for c in absent)


def test_nothing_cached_renders_every_cell_not_run(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    cs = study.table1_configs("cifar10", 5, [1993], ["lwf", "lucir"], "quick")
    recs = study.run_configs(cs, tmp_path, missing="skip")
    assert list(recs) == [] and recs.missing == cs and "NONE of the 2 runs" in recs.summary()
    t = report.table1(recs, dataset="cifar10", profile="quick")
    assert list(t.wide["N=5 ours"]) == [report.NOT_RUN] * 2 and t.provenance["n_runs"] == 0
    fig = report.plot_phase_curves(recs, ["lwf", "lucir"])
    files = report.save_figure(fig, "curves", tmp_path, t.provenance)
    assert json.loads(files[2].read_text())["n_runs_wanted"] == 2
    snaps = study.snapshot_configs("synthetic", "lucir", profile="smoke", phases=2)
    srecs = study.snapshot_records(snaps, tmp_path, missing="skip")
    assert len(srecs.missing) == 3 and srecs.study == study.STUDY_SNAPSHOTS
    m = report.margin_table(srecs, dataset="synthetic", profile="smoke")
    assert list(m.long["stage"]) == [report.NOT_RUN] * 3
    for fig in (report.plot_tsne(srecs), report.plot_margins(srecs), report.plot_exemplar_grid(srecs)):
        assert "NOT RUN: none of its 3 runs" in fig.axes[0].texts[0].get_text()

# ------------------------------------------------------------------ snapshots
def test_margins_on_hand_made_features():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 0])
    m = snapshots.margins(feats, labels, means)
    assert torch.allclose(m, torch.tensor([1.0, 0.0, -1.0]), atol=1e-6)


def test_snapshot_records_what_the_figures_need(tmp_path):
    c = study.make_run("lucir_mnemonics", dataset="synthetic", phases=2, seed=1993, profile="smoke",
                       memory_per_class=3, epochs_override=1)
    rec = study.snapshot(c, None, tmp_path, device="cpu")
    snaps = rec.metrics["snapshots"]
    assert [s["phase"] for s in snaps] == [1, 2]
    for s in snaps:
        assert s["classes"] == [0, 1, 2, 3, 4]
        assert len(s["exemplar_features"]) == 5 * 3 and set(s["exemplar_labels"]) == set(range(5))
        assert len(s["real_features"]) == 5 * 60 and len(s["class_means"]) == s["n_classes"]
        assert len(s["exemplar_margin"]) == 3 * s["n_classes"]
        assert all(-2 <= v <= 2 for v in s["exemplar_margin"] + s["real_margin"])
        x, y = snapshots.decode_pixels(s["exemplar_pixels"])
        assert x.shape == (15, 3, 32, 32) and x.dtype.name == "uint8" and sorted(set(y)) == [0, 1, 2, 3, 4]
    assert study.snapshot(c, None, tmp_path, compute_missing=False).path == rec.path
    # every phase records how far the bilevel program moved the pixels: the new classes' exemplars,
    # and from phase 1 on the adjusted old ones, in grey levels
    change = [p["exemplar_change"] for p in rec.metrics["per_phase"]]
    assert [sorted(ch) for ch in change] == [["new"], ["new", "old"], ["new", "old"]]
    assert all(0 < ch[k]["mean"] <= ch[k]["max"] <= 255 for ch in change for k in ch)
    with pytest.raises(ValueError, match="recorded phases"):
        study.snapshot(c, (0, 2), tmp_path)
    # Fig. 1 with its first column "not run": the phase row labels are still there
    import matplotlib

    matplotlib.use("Agg")
    cs = study.snapshot_configs("synthetic", "lucir", ["random", "mnemonics"], 2, 1993, "smoke",
                                memory_per_class=3, epochs_override=1)
    assert cs[1].config_hash() == c.config_hash()
    fig = report.plot_tsne(study.snapshot_records(cs, tmp_path, missing="skip"))
    assert [ax.get_ylabel().split("\n")[0] for ax in fig.axes[::2]] == [
        f"phase {s['phase']} ({s['n_classes']} classes)" for s in snaps]


# ------------------------------------------------------------------ paper numbers and tables
def test_paper_numbers_have_tags_and_sources():
    assert len(paper_numbers.TABLE1) == 5 * 3 * 3 and len(paper_numbers.AUTHORS_README) == 4 * 2 * 3
    for n in [*paper_numbers.TABLE1.values(), *paper_numbers.AUTHORS_README.values()]:
        assert n.tag in paper_numbers.TAGS and n.source and 0 < n.value < 100
    assert paper_numbers.TABLE1[("lucir_mnemonics", "cifar100", 5)] .value == 63.34
    assert paper_numbers.TABLE1[("lucir_mnemonics", "cifar100", 5)].tag == "[3p]"
    assert paper_numbers.TABLE1[("bic", "imagenet", 25)].tag == "[recalled]"
    assert Counter(n.tag for n in paper_numbers.TABLE1.values()) == {"[recalled]": 37, "[3p]": 8}
    assert paper_numbers.table1_number("lucir", "caltech100", 10).value == 60.14  # stand-in for CIFAR-100
    assert paper_numbers.table1_number("lucir", "cifar10", 5) is None
    row, num = paper_numbers.readme_number("nme", True, "forgetting", 25)
    assert row == "iCaRL w/ mnemonics" and num.value == 28.92 and num.tag == "[code]"


def test_table1_report_mean_std_and_delta(tmp_path):
    cs = study.table1_configs("caltech100", 5, [1993, 1994, 1995], ["lucir", "icarl"], "quick")
    recs = [results.run_or_load(c, _fake_metrics, tmp_path) for c in cs]
    t = report.table1(recs, dataset="caltech100", profile="quick")
    lucir = t.long.set_index("spec").loc["lucir"]
    # seeds 1993..1995 -> CNN AIA 77, 76, 75; iCaRL is scored with NME (+1)
    assert lucir["aia_mean"] == pytest.approx(76.0) and lucir["aia_std"] == pytest.approx(1.0)
    assert lucir["paper"] == 63.17 and lucir["delta"] == pytest.approx(76.0 - 63.17)
    assert t.long.set_index("spec").loc["icarl", "aia_mean"] == pytest.approx(77.0)
    assert t.wide.loc[0, "N=5 ours"] == "76.00 ± 1.00" and t.wide.loc[0, "N=5 paper"] == "63.17 [3p]"
    files = report.save_table(t, tmp_path / "fig")
    assert [f.suffix for f in files] == [".md", ".csv", ".json"]
    md = files[0].read_text()
    assert "caltech100" in md and "quick profile" in md and "[3p]" in md and "provenance" in md
    side = json.loads(files[2].read_text())
    assert side["config_hashes"] == sorted(c.config_hash() for c in cs) and side["profile"] == "quick"
    assert math.isclose(float(t.long["delta"].iloc[0]), float(t.long["aia_mean"].iloc[0]) - float(t.long["paper"].iloc[0]))


def test_forgetting_table_matches_readme_rows(tmp_path):
    authors = "cosinekd_authors_code+weight_transfer"
    cs = study.forgetting_configs("caltech100", 5, [1993],
                                  ["lucir", "lucir_mnemonics", "cosinekd", authors, "cosinekd_mnemonics"], "quick")
    by_spec = {study.spec_of(c): c for c in cs}
    memory = {s: (c.memory_mode, c.memory_total) for s, c in by_spec.items()}
    assert memory["cosinekd"] == memory[authors] == memory["cosinekd_mnemonics"] == ("fixed_total", 2000)
    assert memory["lucir"][0] == "per_class"
    # the code behind the README's 'w/ mnemonics' rows: its own exemplar step, no balanced
    # fine-tuning, the weight-transferred network from phase 1 on
    a = by_spec[authors]
    assert (a.exemplars, a.use_balanced_finetune, a.weight_transfer) == ("authors_code", False, True)
    recs = [results.run_or_load(c, _fake_metrics, tmp_path) for c in cs]
    t = report.forgetting_table(recs, dataset="caltech100", profile="quick")
    rows = t.long.set_index(["spec", "head", "metric"])["readme_row"].to_dict()
    # the README rows measured the authors' baseline trainer: only its runs sit beside them
    assert rows[("cosinekd", "cnn", "aia")] == "LwF" and rows[(authors, "nme", "forgetting")] == "iCaRL w/ mnemonics"
    # the paper's bilevel program was never behind those numbers, in either trainer
    assert rows[("cosinekd_mnemonics", "nme", "aia")] == "—"
    assert rows[("lucir", "cnn", "aia")] == rows[("lucir_mnemonics", "nme", "aia")] == "—"
    paper = t.long.set_index(["spec", "head", "metric"])["paper"]
    assert paper[("cosinekd", "nme", "aia")] == 58.03 and math.isnan(paper[("lucir", "cnn", "aia")])
    assert paper[(authors, "cnn", "forgetting")] == 40.00
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.to_markdown(t.wide)


def test_relative_notebook_dirs_resolve_against_notebooks_not_the_cwd(tmp_path, monkeypatch):
    # `papermill notebooks/table1.ipynb out.ipynb` from the repository root must read results/
    from mnemonics_lib.datasets import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    assert study.notebook_dir("../results") == PROJECT_ROOT / "results"
    assert study.notebook_dir(tmp_path / "x") == tmp_path / "x"


def test_exemplar_stage_in_training_epochs():
    cfg = {"schedule": {"epochs": 8}}
    rows = [{"phase": 0, "wall_s": {"train": 0.04, "exemplars": 100.0}},  # cached phase 0: left out
            {"phase": 1, "wall_s": {"train": 16.0, "exemplars": 10.0}},
            {"phase": 2, "wall_s": {"train": 8.0, "exemplars": 5.0}}]
    assert report.exemplar_stage_epochs(cfg, rows) == pytest.approx(15.0 / (24.0 / 8))
    assert math.isnan(report.exemplar_stage_epochs(cfg, rows[:1]))
    assert math.isnan(report.exemplar_stage_epochs({}, rows))


def test_a_sweep_choice_file_in_results_changes_no_run(tmp_path):
    """The mnemonics settings are the library's (chosen on held-out training images), whatever a
    results folder holds: the earlier sweep's choice.json, picked on test accuracy, once rewrote every
    mnemonics run's settings. The same configs with and without one, at the library defaults."""
    choice = {"chosen": {"inner_lr": 0.01, "outer_lr": 100.0, "inner_steps": 1}, "step": MnemonicsSettings().step}
    (tmp_path / "with" / "sweeps" / "mnemonics").mkdir(parents=True)
    (tmp_path / "with" / "sweeps" / "mnemonics" / "choice.json").write_text(json.dumps(choice))
    hashes = {}
    for name in ("with", "without"):
        configs = study.notebook_configs("table1", {**params("quick"), "results_dir": str(tmp_path / name)})
        mn = [c for c in configs if c.exemplars == "mnemonics"]
        assert mn and all(c.mnemonics == MnemonicsSettings() for c in mn)
        hashes[name] = [c.config_hash() for c in configs]
    assert hashes["with"] == hashes["without"]


def test_an_interrupted_snapshot_run_resumes_with_the_phases_it_had_recorded(tmp_path, monkeypatch):
    import functools

    from mnemonics_lib import trainer

    c = study.make_run("lucir", dataset="synthetic", phases=2, seed=1993, profile="smoke",
                       memory_per_class=3, epochs_override=1)
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "a"))
    plain = trainer.run_incremental
    monkeypatch.setattr(trainer, "run_incremental", functools.partial(plain, stop_after_phase=1))
    with pytest.raises(trainer.Interrupted):
        snapshots.record_snapshots(c, (1, 2), "cpu")
    ck = tmp_path / "a" / "snapshots" / c.config_hash()
    assert sorted(p.name for p in ck.iterdir()) == ["phase_001.pt", "snapshots.json"]
    monkeypatch.setattr(trainer, "run_incremental", plain)
    resumed = snapshots.record_snapshots(c, (1, 2), "cpu")
    assert not ck.exists()  # cleaned up once complete
    monkeypatch.setenv("MNEMONICS_CHECKPOINTS", str(tmp_path / "b"))
    straight = snapshots.record_snapshots(c, (1, 2), "cpu")
    assert [s["phase"] for s in resumed["snapshots"]] == [1, 2]
    assert json.dumps(resumed["snapshots"]) == json.dumps(straight["snapshots"])
    assert [leg["first_phase"] for leg in resumed["legs"]] == [0, 2]


def test_set_overrides_a_profile_parameter_and_refuses_unknown_ones():
    """`study.py results --set KEY=VALUE` changes the profile's parameters without editing the
    committed params file (VALUE read as YAML); a misspelt key fails, listing the known ones."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    base = [sys.executable, str(root / "scripts" / "study.py"), "results", "--profile", "paper", "--dry-run",
            "--only", "table1", "--first", "2"]
    out = subprocess.run(base + ["--set", "dataset=cifar100", "--set", "seeds=[1994]"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    expected = [study.Task(c).describe().split(" (")[0] for c in
                study.table1_configs("cifar100", [10], [1994], ["lucir", "lucir_mnemonics"], "paper",
                                     **study.common_fields(params("paper")))]
    listed = [line.split("missing  ")[1].split(" (")[0] for line in out.stdout.splitlines() if "missing  " in line]
    assert listed == expected and all("cifar100" in x and "-s1994-" in x for x in listed)
    bad = subprocess.run(base + ["--set", "datset=cifar100"], capture_output=True, text=True, cwd=root)
    assert bad.returncode != 0 and "unknown parameter 'datset'" in bad.stderr and "'dataset'" in bad.stderr
    bad = subprocess.run(base + ["--set", "dataset"], capture_output=True, text=True, cwd=root)
    assert bad.returncode != 0 and "expected KEY=VALUE" in bad.stderr
