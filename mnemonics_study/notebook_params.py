"""The notebooks' parameters: which ones each notebook uses, their help text and kind, and their
defaults, read from ``params/quick.yaml`` (the one place a default is written).

Every notebook's ``parameters`` cell declares every study parameter (its own first), so that one
params file serves all seven: ``papermill notebooks/x.ipynb out.ipynb -f params/quick.yaml`` passes
no name the notebook does not declare. :func:`parameters_cell` renders that cell;
``tests/test_notebooks.py`` checks each notebook's cell equals it, and
``python scripts/notebook_cells.py`` rewrites the cells after a change here or in quick.yaml.

:func:`check_parameters` (the notebooks' third cell) rejects an unknown name or a value of the
wrong kind with one line that names the fix, and makes such user errors show as that one line
instead of a traceback.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
DEFAULTS_FILE = PARAMS_DIR / "quick.yaml"
INJECTED_MARK = "# Parameters"  # first line of the cell papermill injects (its default comment)
_IPYTHON_NAMES = frozenset({"In", "Out"})
_SCALARS = (bool, int, float, str, type(None))


class ParameterError(ValueError):
    """A notebook received a parameter it does not know, or a value of the wrong kind (the
    message names the parameter and the fix)."""


@dataclass(frozen=True)
class Param:
    """``kind``: int | ints (an int or a list of ints) | optint (an int or None) | str | strs
    (a str or a list of them) | floats (a number or a list) | dict."""

    kind: str
    help: str
    choices: tuple[str, ...] = ()


_ANNOTATION = {"int": "int", "ints": "list", "optint": '"Optional[int]"', "str": "str", "strs": "list",
               "floats": "list", "dict": "dict"}

#: Every parameter of the study, in the order the cells list them.
PARAMETERS: dict[str, Param] = {
    "dataset": Param("str", "caltech100 (CIFAR-100 stand-in) | cifar100 | cifar10 | caltech101_jpeg (ImageNet-Subset stand-in) | imagenet_subset | imagenet | synthetic"),
    "profile": Param("str", "smoke | quick | paper: schedule and network size, never the method",
                     ("smoke", "quick", "paper")),
    "phases": Param("ints", "incremental phases N after the base phase (int or list)"),
    "seeds": Param("ints", "class-order and training seeds (int or list), 1993 is the paper order"),
    "methods": Param("strs", "run specs method[_exemplars][+flag] (str or list)"),
    "forgetting_methods": Param("strs", "run specs of the forgetting table (str or list)"),
    "ablation_phases": Param("ints", "incremental phases N of the ablation (int or list)"),
    "ablation_methods": Param("strs", "methods of the ablation (str or list)"),
    "ablation_exemplars": Param("strs", "exemplar types of the ablation (str or list)"),
    "ablation_extras": Param("strs", "extra run specs of the ablation (str or list)"),
    "cbf_control_phases": Param("ints", "further N with LUCIR herding / mnemonics / herding + CBF (int or list; [] for none)"),
    "sweep_inner_lr": Param("floats", "alpha: inner (temporary model) learning rate (float or list)"),
    "sweep_outer_lr": Param("floats", "beta1: exemplar learning rate (float or list)"),
    "sweep_inner_steps": Param("ints", "K: unrolled inner steps (int or list)"),
    "sweep_phases": Param("int", "incremental phases N of the sweep runs"),
    "sweep_seed": Param("int", "class-order and training seed of the sweep runs"),
    "sweep_last_phase": Param("optint", "end each sweep run after this phase; None: the whole run"),
    "snapshot_method": Param("str", "method whose runs are recorded for Fig. 1 and the exemplar images"),
    "snapshot_exemplars": Param("strs", "exemplar strategies compared (str or list)"),
    "snapshot_phases": Param("int", "N of the recorded runs; recorded: phase 1 (early) and phase N (late)"),
    "snapshot_seed": Param("int", "class-order and training seed of the recorded runs"),
    "memory_per_class": Param("int", "exemplars kept per seen class (the paper's 20)"),
    "train_per_class": Param("optint", "at most this many training images per class (a fixed seed-0 subset); None: all"),
    "results_dir": Param("str", "run ledger, relative to notebooks/"),
    "figures_dir": Param("str", "tables (.md, .csv) and figures (.png, .pdf), relative to notebooks/"),
    "missing": Param("str", "compute | skip | error: what to do with a run not in results/",
                     ("compute", "skip", "error")),
    "device": Param("str", "auto | cpu | cuda"),
}
#: Keys of a params file that only the CLI reads (``variants``: extra executions of some
#: notebooks with overrides). A notebook declares them empty and ignores them.
STUDY_KEYS = frozenset({"variants"})
_COMMON = ("dataset", "profile", "memory_per_class", "train_per_class", "results_dir", "figures_dir",
           "missing", "device")
_SNAPSHOT = ("snapshot_method", "snapshot_exemplars", "snapshot_phases", "snapshot_seed")
#: The parameters each notebook uses (the others it declares and ignores).
NOTEBOOK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "table1": ("dataset", "profile", "phases", "seeds", "methods") + _COMMON[2:],
    "figure4_curves": ("dataset", "profile", "phases", "seeds", "methods") + _COMMON[2:],
    "forgetting": ("dataset", "profile", "phases", "seeds", "forgetting_methods") + _COMMON[2:],
    "ablation_exemplars": ("dataset", "profile", "seeds", "ablation_phases", "ablation_methods",
                           "ablation_exemplars", "ablation_extras", "cbf_control_phases") + _COMMON[2:],
    "sweep_mnemonics": ("dataset", "profile", "sweep_inner_lr", "sweep_outer_lr", "sweep_inner_steps",
                        "sweep_phases", "sweep_seed", "sweep_last_phase") + _COMMON[2:],
    "figure1_tsne": ("dataset", "profile") + _SNAPSHOT + _COMMON[2:],
    "exemplar_images": ("dataset", "profile") + _SNAPSHOT + _COMMON[2:],
}
NOTEBOOKS = tuple(NOTEBOOK_PARAMETERS)
ALL_PARAMETERS = frozenset(PARAMETERS)


@functools.lru_cache(maxsize=None)
def _profile_file(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"no params file {p}: the notebook defaults live there (is this a checkout "
                             f"installed with `pip install -e .`?)")
    return yaml.safe_load(p.read_text()) or {}


def profile_defaults() -> dict[str, Any]:
    """``params/quick.yaml`` as a dict (read once): every parameter's default."""
    data = dict(_profile_file(str(DEFAULTS_FILE)))
    missing = sorted(ALL_PARAMETERS - set(data))
    if missing:
        raise ParameterError(f"{DEFAULTS_FILE} lacks the parameters {missing}: add them (it holds every default)")
    return data


def notebook_defaults(notebook: str | None = None) -> dict[str, Any] | dict[str, dict[str, Any]]:
    """The defaults of ``notebook``'s own parameters (None: of every notebook, by name)."""
    if notebook is None:
        return {nb: notebook_defaults(nb) for nb in NOTEBOOKS}
    if notebook not in NOTEBOOK_PARAMETERS:
        raise ParameterError(f"unknown notebook {notebook!r}; known: {list(NOTEBOOKS)}")
    data = profile_defaults()
    return {k: data[k] for k in NOTEBOOK_PARAMETERS[notebook]}


def _literal(value: Any) -> str:
    return repr(value).replace("'", '"')


def parameters_cell(notebook: str) -> str:
    """The source of ``notebook``'s parameters cell: its own parameters with quick.yaml's values and
    help comments, then every other study parameter (declared so one params file serves every
    notebook; ignored here)."""
    data = profile_defaults()
    own = NOTEBOOK_PARAMETERS[notebook]
    others = [k for k in PARAMETERS if k not in own]

    def line(name: str, value: Any, help_text: str) -> str:
        p = PARAMETERS.get(name)
        ann = _ANNOTATION[p.kind] if p else "dict"
        return f"{name}: {ann} = {_literal(value)}  # {help_text}"

    lines = [line(k, data[k], PARAMETERS[k].help) for k in sorted(own, key=list(PARAMETERS).index)]
    lines.append("# the other notebooks' parameters: declared so that one params file serves all seven; unused here")
    lines += [line(k, data[k], f"({_users(k)})") for k in others]
    lines += [line(k, {}, "make figures only: extra executions with overrides") for k in sorted(STUDY_KEYS)]
    return "\n".join(lines)


def _users(name: str) -> str:
    return ", ".join(nb for nb, names in NOTEBOOK_PARAMETERS.items() if name in names)


# ------------------------------------------------------------------ checking
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind_ok(kind: str, v: Any) -> bool:
    many = v if isinstance(v, (list, tuple)) else [v]
    if kind == "int":
        return _is_int(v)
    if kind == "optint":
        return v is None or _is_int(v)
    if kind == "ints":
        return all(_is_int(x) for x in many)
    if kind == "floats":
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in many)
    if kind == "str":
        return isinstance(v, str)
    if kind == "strs":
        return all(isinstance(x, str) for x in many)
    return True


_EXPECTED = {"int": "an integer", "optint": "an integer or None", "ints": "an integer or a list of integers",
             "floats": "a number or a list of numbers", "str": "a string", "strs": "a string or a list of strings"}
_EXAMPLE = {"int": "5", "optint": "1", "ints": "10", "floats": "0.1", "str": "name", "strs": "lucir"}
_LIST_EXAMPLE = {"ints": "[5, 10]", "floats": "[0.01, 0.1]", "strs": "[lucir, lwf]"}


def check_value(name: str, value: Any) -> None:
    """Raise :class:`ParameterError` (one line, with the papermill syntax that works) when ``value``
    is not of ``name``'s kind or not one of its choices."""
    p = PARAMETERS[name]
    if not _kind_ok(p.kind, value):
        fix = f"`-p {name} {_EXAMPLE[p.kind]}`"
        if p.kind in _LIST_EXAMPLE:
            fix += f", or a list: `-y \"{name}: {_LIST_EXAMPLE[p.kind]}\"`"
        raise ParameterError(f"{name}={value!r}: expected {_EXPECTED[p.kind]}, e.g. {fix}")
    if p.choices and value not in p.choices:
        raise ParameterError(f"{name}={value!r}: expected one of {list(p.choices)}, e.g. `-p {name} {p.choices[0]}`")


def injected_names(namespace: Mapping[str, Any]) -> set[str] | None:
    """Names assigned by papermill's injected cell, read from IPython's input history ``In``
    (every executed cell's source); None outside IPython. Exact: later cells of the notebook
    (or a re-run of the checking cell) cannot add names to it."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return None
    names: set[str] = set()
    for src in history:
        if isinstance(src, str) and src.lstrip().startswith(INJECTED_MARK):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                     for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(t, ast.Name)}
    return names


def _plain(value: Any) -> bool:
    """A value papermill can inject: scalars and lists/dicts of them (YAML/JSON data)."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def check_parameters(namespace: Mapping[str, Any] | Iterable[str], notebook: str) -> dict[str, Any]:
    """Fail on a parameter name the study does not know or a value of the wrong kind; return this
    notebook's parameters. Notebooks call ``study.check_parameters(globals(), "<name>")`` after the
    parameters cell and papermill's injected cell.

    The candidate names: in IPython, the names assigned by papermill's injected cell (found in the
    input history ``In``, see :func:`injected_names`); for any other mapping, its public names
    holding plain data; for an iterable, its names. A name of another notebook of the study is
    accepted (``-f params/quick.yaml`` passes all of them to every notebook, and every notebook
    declares them); a name no notebook knows (a typo) raises :class:`ParameterError` listing this
    notebook's parameters. In IPython it also makes the study's user errors print as one line.
    """
    if notebook not in NOTEBOOK_PARAMETERS:
        raise ParameterError(f"unknown notebook {notebook!r}; known: {list(NOTEBOOKS)}")
    short_user_errors()
    known = NOTEBOOK_PARAMETERS[notebook]
    if isinstance(namespace, Mapping):
        names = injected_names(namespace)
        if names is None:
            names = {k for k, v in namespace.items()
                     if not k.startswith("_") and k not in _IPYTHON_NAMES and _plain(v)}
    else:
        names = set(namespace)
    unknown = names - ALL_PARAMETERS - STUDY_KEYS
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {sorted(unknown)} for notebook {notebook!r}; known parameters: "
            f"{sorted(known)}")
    if not isinstance(namespace, Mapping):
        return {}
    absent = sorted(set(known) - set(namespace))
    if absent:
        raise ParameterError(f"{notebook}: parameters {absent} are not defined (parameters cell edited?)")
    for k in known:
        check_value(k, namespace[k])
    return {k: namespace[k] for k in known}


def notebook_parameters(notebook: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """This notebook's parameters from a params file: its defaults overridden by the file's keys."""
    return {k: params.get(k, v) for k, v in notebook_defaults(notebook).items()}


# ------------------------------------------------------------------ short errors
def user_errors() -> tuple[type, ...]:
    """Exception types whose message is the whole story (a wrong parameter, config, data location
    or a missing run): shown as ``Type: message``, without a traceback."""
    from mnemonics_lib.config import ConfigError
    from mnemonics_lib.datasets import DatasetError
    from .results import MissingRunError

    return (ParameterError, ConfigError, DatasetError, MissingRunError)


def _one_line(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
    # IPython leaves the display to a custom handler: _showtraceback is what ipykernel overrides
    # to send the error output (papermill and nbval read ename, evalue and this one-line traceback)
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


def short_user_errors() -> bool:
    """In an IPython kernel (a notebook, papermill), show :func:`user_errors` as one line; the
    cell still fails, so papermill and nbval still stop. False outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook extras
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc(user_errors(), _one_line)
    return True
