"""Notebook structure (conventions.md: one parameters cell first, no outputs, no def/class/magics/
absolute paths, no hand-typed numbers in Markdown, parameters cells generated from params/quick.yaml)
and every notebook executed with params/smoke.yaml
through Papermill, with results and figures in a temporary folder shared by all notebooks (runs are
reused across notebooks through the ledger, as with ``make figures``)."""
import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from mnemonics_lib.config import MnemonicsSettings
from mnemonics_study import report, study

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
# execution order: later notebooks reuse the runs of earlier ones
ORDER = ["table1", "figure4_curves", "forgetting", "ablation_exemplars", "sweep_mnemonics",
         "figure1_tsne", "exemplar_images"]
S = "synthetic_smoke_N2_seeds1993_m5"  # dataset, profile, N, seed and memory of params/smoke.yaml: outputs are named by them
EXPECTED = {  # files each notebook must write at smoke size
    "table1": [f"table1_{S}.md", f"table1_{S}.csv", f"table1_{S}.provenance.json"],
    "figure4_curves": [f"figure4_curves_{S}.png", f"figure4_curves_{S}.pdf", f"figure4_curves_{S}.provenance.json"],
    "forgetting": [f"forgetting_{S}.md", f"forgetting_{S}.csv"],
    "ablation_exemplars": [f"ablation_exemplars_{S}.md", f"ablation_exemplars_{S}.csv"],
    "sweep_mnemonics": [f"sweep_mnemonics_{S}.md", f"sweep_mnemonics_{S}.png"],
    "figure1_tsne": [f"figure1_tsne_{S}.png", f"figure1_tsne_{S}.pdf", f"exemplar_margins_{S}.png",
                     f"exemplar_margins_{S}.md"],
    "exemplar_images": [f"exemplar_images_early_{S}.png", f"exemplar_images_late_{S}.pdf"],
}
SIDE = {  # the sidecar whose config hashes must equal what study.notebook_configs enumerates
    name: f"{'exemplar_images_early' if name == 'exemplar_images' else name}_{S}.provenance.json" for name in EXPECTED
}
# a hand-typed measured number in Markdown: a decimal, or a duration
HAND_TYPED = re.compile(r"\d+\.\d+|\b\d+\s*(?:s|min|h|hours?|minutes?|seconds?)\b")


def notebooks() -> list[str]:
    return sorted(p.stem for p in NB_DIR.glob("*.ipynb"))


def smoke_params() -> dict:
    return yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())


def test_every_notebook_is_known_to_the_study_and_ordered():
    assert notebooks() == sorted(study.NOTEBOOKS) == sorted(ORDER)


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", sorted(study.NOTEBOOKS))
def test_structure(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown"
    md = nb.cells[0].source
    for word in ("papermill", "make figures", "source .venv/bin/activate"):
        assert word in md, f"cell 1 lacks {word!r}"
    for c in nb.cells:
        if c.cell_type == "markdown":
            assert not HAND_TYPED.search(c.source), f"hand-typed number in Markdown: {HAND_TYPED.search(c.source)[0]!r}"
    code_text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'notebook_text.intro("{name}", params)' in code_text, "the shared text is not rendered"
    assert "notebook_text.runtime(records)" in code_text, "the runtime is not printed from the runs"
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "exactly one parameters cell, the first code cell"
    assert 6 <= len(nb.cells) <= 9
    for c in code:
        assert not c.get("outputs") and c.get("execution_count") is None, "outputs are committed"
        tree = ast.parse(c.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                       for n in ast.walk(tree)), "def/class/lambda in a notebook"
        assert not re.search(r"^\s*[%!]", c.source, re.M), "magic or shell escape"
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [s for s in strings if re.match(r"^(/|~|[A-Za-z]:\\)", s)], "absolute path"


@pytest.mark.parametrize("name", sorted(study.NOTEBOOKS))
def test_parameters_cell_is_generated_from_the_quick_params_file(name):
    """One source for defaults: the cell is what notebook_params renders from params/quick.yaml
    (`python scripts/notebook_cells.py` rewrites it), its literals equal the file's values, and it
    declares every study parameter, so `-f params/quick.yaml` passes no unknown name."""
    from mnemonics_study.notebook_params import parameters_cell

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert cell.source == parameters_cell(name), "stale parameters cell: run python scripts/notebook_cells.py"
    found = {}
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.AnnAssign), f"not an annotated assignment: {ast.unparse(stmt)}"
        found[stmt.target.id] = ast.literal_eval(stmt.value)
    quick = yaml.safe_load((ROOT / "params" / "quick.yaml").read_text())
    assert set(found) == set(quick), "the cell does not declare every key of params/quick.yaml"
    assert {k: found[k] for k in study.NOTEBOOK_PARAMETERS[name]} == study.NOTEBOOK_DEFAULTS[name]
    assert all(found[k] == quick[k] for k in study.ALL_PARAMETERS), "a literal differs from params/quick.yaml"
    for line in cell.source.splitlines():
        assert "  # " in line or line.startswith("# "), f"parameter without a help comment: {line}"


def test_notebook_cells_script_check_passes():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "notebook_cells.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(study.NOTEBOOKS))
def test_papermill_parses_every_parameter(name):
    """papermill's own parser reads each parameter, so `-p` never warns "unknown parameter" and
    `papermill --help-notebook` lists them all (it cannot parse a `int | None` annotation: such
    parameters would be missing from both)."""
    import papermill as pm

    seen = pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    assert set(seen) == set(study.ALL_PARAMETERS) | set(study.STUDY_KEYS)
    assert all(v["help"] for v in seen.values()), "a parameter's help comment was not parsed"



@pytest.mark.parametrize("name", sorted(study.NOTEBOOKS))
def test_run_or_load_cell_passes_missing_and_prints_what_is_not_run(name):
    """``missing`` reaches run_configs / snapshot_records, and the missing runs are printed."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "missing=missing" in code and f'print(records.summary("{name}"), notebook_text.runtime(records)' in code
    assert "compute_missing" not in code
    assert 'missing: str = "skip"' in next(c.source for c in nb.cells if c.cell_type == "code")

# ------------------------------------------------------------------ execution (smoke)
@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Execute every notebook once with params/smoke.yaml; results and figures in a tmp folder."""
    import papermill as pm

    tmp = tmp_path_factory.mktemp("notebooks")
    env = pytest.MonkeyPatch()
    env.setenv("OMP_NUM_THREADS", "1")  # kernels inherit it: 2 shared cores (see conftest)
    params = {**smoke_params(), "results_dir": str(tmp / "results"), "figures_dir": str(tmp / "figures")}
    out = {}
    for name in ORDER:
        out[name] = tmp / f"{name}.ipynb"
        pm.execute_notebook(str(NB_DIR / f"{name}.ipynb"), str(out[name]), parameters=params,
                            kernel_name="python3", cwd=str(NB_DIR), progress_bar=False)
    yield {"dir": tmp, "notebooks": out, "params": params}
    env.undo()


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_notebook_runs_with_smoke_params(executed, name):
    nb = nbformat.read(executed["notebooks"][name], as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert nb.metadata["papermill"]["parameters"]["profile"] == "smoke"
    figs = executed["dir"] / "figures"
    for f in EXPECTED[name]:
        assert (figs / f).is_file() and (figs / f).stat().st_size > 0, f
    side = json.loads((figs / SIDE[name]).read_text())
    want = sorted(c.config_hash() for c in study.notebook_configs(name, executed["params"]))
    assert side["config_hashes"] == want, "the notebook read other runs than study enumerates"
    assert side["profile"] == "smoke" and side["dataset"] == "synthetic" and side["commits"]



@pytest.mark.slow
def test_table1_with_missing_skip_renders_only_what_exists(tmp_path, monkeypatch):
    """`missing: skip` against a ledger holding 2 of table1's 5 smoke runs: the notebook computes
    nothing, lists the 3 others (spec, N, seed, hash) with the command, and writes the table with
    their cells "n/a (not run)" and the availability in the caption and the sidecar."""
    import papermill as pm

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = {**smoke_params(), "results_dir": str(tmp_path / "results"),
              "figures_dir": str(tmp_path / "figs"), "missing": "skip"}
    configs = study.notebook_configs("table1", params)
    have = [c for c in configs if study.spec_of(c) in ("lwf", "icarl")]
    absent = [c for c in configs if c not in have]
    assert len(have) == 2 and len(absent) == 3
    study.run_configs(have, params["results_dir"], device="cpu")
    out = tmp_path / "table1-skip.ipynb"
    pm.execute_notebook(str(NB_DIR / "table1.ipynb"), str(out), parameters=params, kernel_name="python3",
                        cwd=str(NB_DIR), progress_bar=False)
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 2, "skip computed a run"
    nb = nbformat.read(out, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", [])
                      if o.get("output_type") == "stream" and o.get("name") == "stdout")
    assert "2 of 5 runs found" in printed and "make results PROFILE=smoke" in printed
    for c in absent:
        assert any(line.split()[:4] == [study.spec_of(c), "synthetic", str(c.phases), str(c.seed)]
                   and line.split()[-1] == c.config_hash() for line in printed.splitlines()), c
    md = (tmp_path / "figs" / f"table1_{S}.md").read_text()
    assert md.count(f"| {report.NOT_RUN} |") == 3 and "Runs available: 2 of 5; 3 not run" in md
    assert "2 of 5 runs (3 not run)" in md  # the provenance footer
    side = json.loads((tmp_path / "figs" / f"table1_{S}.provenance.json").read_text())
    assert side["config_hashes"] == sorted(c.config_hash() for c in have) and side["n_runs_wanted"] == 5
    assert sorted(d["config_hash"] for d in side["not_run"]) == sorted(c.config_hash() for c in absent)

@pytest.mark.slow
def test_unknown_parameter_fails_with_the_known_list(executed):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NB_DIR / "table1.ipynb"), str(executed["dir"] / "bad.ipynb"),
                            parameters={**executed["params"], "phase": 10}, kernel_name="python3",
                            cwd=str(NB_DIR), progress_bar=False)
    assert e.value.ename == "ParameterError"
    assert "'phase'" in e.value.evalue and "known parameters" in e.value.evalue and "'phases'" in e.value.evalue


@pytest.mark.slow
def test_scalar_parameters_work(executed):
    """`-p phases 2 -p seeds 1993 -p methods lucir`: scalars where lists are the default."""
    import papermill as pm

    figs = executed["dir"] / "scalar"
    params = {**executed["params"], "phases": 2, "seeds": 1993, "methods": "lucir", "figures_dir": str(figs)}
    pm.execute_notebook(str(NB_DIR / "table1.ipynb"), str(executed["dir"] / "scalar.ipynb"), parameters=params,
                        kernel_name="python3", cwd=str(NB_DIR), progress_bar=False)
    side = json.loads((figs / "table1_synthetic_smoke_N2_seeds1993_m5.provenance.json").read_text())
    c = study.make_run("lucir", dataset="synthetic", phases=2, seed=1993, profile="smoke", memory_per_class=5)
    assert side["config_hashes"] == [c.config_hash()]


@pytest.mark.slow
def test_kernel_input_history_holds_the_injected_cell(tmp_path):
    """The mechanism behind check_parameters: in a papermill kernel, ``In`` holds the injected
    cell, so exactly the injected names are found (a literal defined by a later cell is not)."""
    import papermill as pm
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell("phases: int = 5  # N")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("later = [1, 2]"),
                             new_code_cell("from mnemonics_study import study\n"
                                           "print(sorted(study.injected_names(globals())))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "probe.ipynb", tmp_path / "probe-out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(out), parameters={"phases": 2, "typo": 1}, kernel_name="python3",
                        progress_bar=False)
    printed = nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"].strip()
    assert printed == "['phases', 'typo']"


@pytest.mark.slow
def test_nbval_revalidates_every_executed_notebook(executed):
    """nbval re-executes each smoke-executed notebook (its injected smoke parameters included) in
    a fresh kernel; ``--nbval-lax`` fails on any error, and the notebooks' own assert cells are the
    checks (outputs are stripped in the repository, so there is nothing else to compare)."""
    import os
    import subprocess
    import sys

    files = [str(executed["notebooks"][n]) for n in ORDER]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider", *files],
        cwd=NB_DIR, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 5 * len(ORDER), proc.stdout[-2000:]  # cells checked


@pytest.mark.parametrize("name", ["table1", "ablation_exemplars", "forgetting", "figure4_curves", "figure1_tsne"])
def test_notebook_configs_are_the_clis_whatever_the_results_folder_holds(name, tmp_path):
    """The configs a notebook builds (its own code) are the ones the CLI computes, at the library's
    mnemonics settings even beside a sweep choice file (the sweep reports, it does not choose):
    otherwise `make figures` asks for runs nobody computes."""
    choice = {"chosen": {"inner_lr": 0.01, "outer_lr": 100.0, "inner_steps": 1},
              "step": MnemonicsSettings().step}
    (tmp_path / "sweeps" / "mnemonics").mkdir(parents=True)
    (tmp_path / "sweeps" / "mnemonics" / "choice.json").write_text(json.dumps(choice))
    params = {**study.NOTEBOOK_DEFAULTS[name], "results_dir": str(tmp_path)}
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "configs = study." in c.source)
    statement = cell[: cell.index("\nprint(")]  # the configs = ... statement only
    namespace = {"study": study, "params": params, **params}
    exec(statement, namespace)  # noqa: S102 - the notebook's own code
    ours = [c.config_hash() for c in namespace["configs"]]
    assert ours == [c.config_hash() for c in study.notebook_configs(name, params)]
    mn = [c for c in namespace["configs"] if c.exemplars == "mnemonics"]
    default = MnemonicsSettings()
    assert mn and all((c.mnemonics.inner_lr, c.mnemonics.outer_lr, c.mnemonics.inner_steps)
                      == (default.inner_lr, default.outer_lr, default.inner_steps) for c in mn)
