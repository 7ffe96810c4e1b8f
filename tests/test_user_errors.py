"""What a new user meets first: the card's papermill call, a bad parameter value, the params file
passed whole, a wrong data location. Each either works as typed or fails in one line naming the fix;
an execution with other parameters never overwrites another's outputs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnemonics_lib import datasets
from mnemonics_lib.datasets import DatasetError
from mnemonics_study import report, study

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"


def _papermill(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("papermill")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env)


def _rec(spec: str, phases: int, seed: int):
    c = study.make_run(spec, dataset="caltech100", phases=phases, seed=seed, profile="quick")
    return SimpleNamespace(config={**c.to_dict(), "config_hash": c.config_hash()})


def test_outputs_are_named_by_their_phases_and_seeds():
    """`-p phases 10` (the card's call) writes other files than `make figures` (N = 5/10/25)."""
    full = [_rec("lucir", n, s) for n in (5, 10, 25) for s in study.SEEDS]
    one_n = [r for r in full if r.config["phases"] == 10]
    one_seed = [r for r in one_n if r.config["seed"] == 1993]
    names = [report.output_name("table1", recs, dataset="caltech100", profile="quick")
             for recs in (full, one_n, one_seed)]
    assert names == ["table1_caltech100_quick_N5-10-25", "table1_caltech100_quick_N10",
                     "table1_caltech100_quick_N10_seeds1993"]
    # missing runs count as asked for: the name says what the table holds, found or not
    missing = [study.make_run("lwf", dataset="caltech100", phases=25, seed=1993, profile="quick")]
    assert report.output_name("table1", one_seed, dataset="caltech100", profile="quick",
                              missing=missing) == "table1_caltech100_quick_N10-25_seeds1993"
    # the low-data control keeps 5 exemplars per class: its files must not overwrite the paper's 20
    m5 = [SimpleNamespace(config={**(c := study.make_run("lucir", dataset="cifar10", phases=5, seed=s,
                                                          profile="quick", memory_per_class=5)).to_dict(),
                                  "config_hash": c.config_hash()}) for s in study.SEEDS]
    assert report.output_name("ablation_exemplars", m5, dataset="cifar10", profile="quick") == \
        "ablation_exemplars_cifar10_quick_N5_m5"
    low = study.make_run("lucir", dataset="cifar10", phases=5, seed=1993, profile="quick", memory_per_class=5)
    assert study.Task(low).describe().startswith("runs/cifar10-lucir-N5-s1993-m5-quick [")
    assert study.Task(study.make_run("lucir", dataset="cifar10", phases=5, seed=1993,
                                     profile="quick")).describe().startswith("runs/cifar10-lucir-N5-s1993-quick [")


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("MNEMONICS_DATA", raising=False)
    return monkeypatch


def test_mnemonics_data_pointing_at_a_missing_or_empty_folder_is_an_error(tmp_path, no_data_env):
    no_data_env.setenv("MNEMONICS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"MNEMONICS_DATA=.*nowhere is not a folder: point it at"):
        datasets.data_roots()
    (tmp_path / "empty").mkdir()
    no_data_env.setenv("MNEMONICS_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match=r"is empty: put the dataset folders there .* or unset it"):
        datasets.load_dataset("caltech100")


def test_mnemonics_data_is_the_only_root_when_set(tmp_path, no_data_env):
    """Set to a folder that lacks the dataset: not found there, and no silent fall-back."""
    (tmp_path / "other").mkdir()
    no_data_env.setenv("MNEMONICS_DATA", str(tmp_path))
    assert datasets.data_roots() == [tmp_path]
    with pytest.raises(DatasetError) as e:
        datasets.load_dataset("caltech100")
    looked = str(e.value).split("looked at: ", 1)[1].split(". ", 1)[0]
    assert looked.startswith(str(tmp_path)) and "shared/data/" not in looked
    no_data_env.delenv("MNEMONICS_DATA")
    assert datasets.data_roots() == [ROOT / "data", ROOT.parent / "shared" / "data"]


def test_user_errors_print_as_one_line_in_a_kernel():
    """The kernel shows a ParameterError (and the other user errors) as `Type: message`."""
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    from mnemonics_study import notebook_params

    shell = InteractiveShell.instance()
    shown = []
    shell._showtraceback = lambda etype, value, stb: shown.append(stb)
    try:
        assert notebook_params.short_user_errors()
        shell.run_cell("from mnemonics_study import study\n"
                       "study.check_parameters({**study.NOTEBOOK_DEFAULTS['table1'], 'phases': 'abc'}, 'table1')")
    finally:
        shell.set_custom_exc((), None)
    assert len(shown) == 1 and len(shown[0]) == 1 and shown[0][0].startswith("ParameterError: phases='abc'")


@pytest.mark.slow
def test_the_cards_papermill_call_works_as_typed_and_keeps_make_figures_outputs(tmp_path):
    """`papermill notebooks/table1.ipynb out.ipynb -p phases 10` from the repository root, with
    figures_dir in a tmp folder: it writes the N = 10 table under its own name only."""
    figs = tmp_path / "figs"
    figs.mkdir()
    keep = figs / "table1_caltech100_quick_N5-10-25.md"
    keep.write_text("make figures' table\n")
    out = _papermill("notebooks/table1.ipynb", str(tmp_path / "out.ipynb"), "-p", "phases", "10",
                     "-p", "figures_dir", str(figs))
    assert out.returncode == 0, out.stderr[-3000:]
    assert keep.read_text() == "make figures' table\n"
    assert (figs / "table1_caltech100_quick_N10.md").is_file()
    assert (figs / "table1_caltech100_quick_N10.provenance.json").is_file()


@pytest.mark.slow
def test_params_file_passed_whole_gives_no_unknown_parameter_warning(tmp_path):
    out = _papermill("notebooks/table1.ipynb", str(tmp_path / "out.ipynb"), "-f", "params/quick.yaml",
                     "-p", "figures_dir", str(tmp_path / "figs"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "unknown parameter" not in (out.stdout + out.stderr).lower()


@pytest.mark.slow
def test_a_bad_value_from_the_command_line_ends_in_one_line_naming_the_fix(tmp_path):
    out = _papermill("notebooks/table1.ipynb", str(tmp_path / "out.ipynb"), "-p", "phases", "abc")
    assert out.returncode != 0
    cell_part = out.stderr.split('Exception encountered at "In [', 1)[1].strip().splitlines()
    assert len(cell_part) == 2, cell_part  # the cell number, then the one line
    assert cell_part[1].startswith("ParameterError: phases='abc': expected an integer or a list of integers")
    assert '-y "phases: [5, 10]"' in cell_part[1] and "int()" not in out.stderr


def test_an_impossible_protocol_from_set_ends_in_one_line_naming_the_flag():
    """`--set dataset=cifar10` keeps the profile's N = 5, 10, 25, which CIFAR-10's 5 incremental
    classes cannot take: one line, no traceback, naming the parameters to override."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "results", "--profile", "quick",
                          "--dry-run", "--set", "dataset=cifar10"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "cannot be split into 10 equal phases" in out.stderr and "cbf_control_phases=[10, 25]" in out.stderr
    assert "phases=[5, 10, 25]" in out.stderr and "ablation_phases" not in out.stderr  # N = 5 fits
    assert len(out.stderr.strip().splitlines()) == 1
    half = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "results", "--profile", "quick",
                           "--dry-run", "--set", "dataset=cifar10", "--set", "phases=[5]"],
                          capture_output=True, text=True, cwd=ROOT)
    assert half.returncode != 0 and "--set 'cbf_control_phases=[...]'" in half.stderr
    assert "--set 'phases=" not in half.stderr  # the flag already given is not suggested again
    fixed = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "results", "--profile", "quick",
                            "--dry-run", "--set", "dataset=cifar10", "--set", "phases=[5]",
                            "--set", "cbf_control_phases=[]"], capture_output=True, text=True, cwd=ROOT)
    assert fixed.returncode == 0, fixed.stderr
