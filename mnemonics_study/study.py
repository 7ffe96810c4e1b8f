"""Which runs each artifact needs: the single source of truth shared by the notebooks, the
``scripts/study.py`` CLI (``make results`` / ``make figures``) and the tests.

Vocabulary of a *run spec* (a table row label and a notebook parameter value):
``method[_exemplars][+flag...]``, e.g. ``lucir`` (LUCIR with herding exemplars), ``lucir_mnemonics``,
``icarl_random``, ``lucir_mnemonics+no_adjust_old``. Exemplars default to ``herding``. Flags:
``no_adjust_old``, ``weight_transfer``, ``balanced_finetune``, ``no_balanced_finetune``,
``first_order``. A *seed* ``s`` means ``class_order_seed = s`` and ``seed = s``; 1993 is the paper's
class order.

A :class:`Task` is one cached computation: a run (study ``runs``, or ``sweeps/mnemonics`` for the
sensitivity sweep) or a snapshot run (study ``snapshots``: the same training, recording features
and exemplars for the t-SNE and image figures).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import paper_numbers, snapshots
from mnemonics_lib.config import EXEMPLARS, METHODS, ConfigError, RunConfig, make_config

log = logging.getLogger(__name__)

SEEDS = (1993, 1994, 1995)
TABLE1_METHODS = paper_numbers.TABLE1_METHODS
ABLATION_METHODS = ("lucir", "icarl", "lwf", "bic")
# Deconfounding runs (paper.md §3-4): mnemonics without the old-exemplar adjustment, mnemonics with
# the weight-transfer backbone the authors' "ours" runs switch to, and herding with the class-balanced
# fine-tuning that is on by default only for mnemonics.
ABLATION_EXTRAS = ("lucir_mnemonics+no_adjust_old", "lucir_mnemonics+weight_transfer",
                   "lucir_herding+balanced_finetune")
# The like-for-like control at the Table-1 N outside the ablation: LUCIR with herding, with mnemonics
# (both Table 1 runs) and with herding + class-balanced fine-tuning (the one run each N adds).
CBF_CONTROL_SPECS = ("lucir", "lucir_mnemonics", "lucir_herding+balanced_finetune")
# The forgetting table's runs: LUCIR's, and the method the authors' README rows measured (their
# baseline trainer, methods/cosinekd.py) in that trainer's memory, a fixed total of 2000 exemplars.
# Its README 'w/ mnemonics' rows came from the code's own exemplar step (authors_code, no balanced
# fine-tuning) in a weight-transferred network from phase 1 on (its mnemonics trainer builds the
# frozen-conv, learnable-scale ResNet there; its baseline trainer does not). cosinekd_mnemonics runs
# the paper's bilevel program in the same trainer.
FORGETTING_METHODS = ("lucir", "lucir_authors_code", "lucir_mnemonics",
                      "cosinekd", "cosinekd_authors_code+weight_transfer", "cosinekd_mnemonics")
README_METHOD = "cosinekd"
# the run specs that reproduce the code behind the README rows -> is it a 'w/ mnemonics' row?
README_SPECS = {"cosinekd": False, "cosinekd_authors_code+weight_transfer": True}
README_MEMORY = {"memory_mode": "fixed_total", "memory_total": 2000}
SNAPSHOT_EXEMPLARS = ("random", "herding", "mnemonics")

STUDY_RUNS = "runs"
STUDY_SWEEPS = "sweeps/mnemonics"
STUDY_SNAPSHOTS = "snapshots"
# Every study folder whose runs are plain incremental runs (a snapshot run adds recordings only):
# a run missing in one is copied from another holding the same config hash.
RUN_STUDIES = (STUDY_RUNS, STUDY_SNAPSHOTS, STUDY_SWEEPS)

_FLAGS = {
    "no_adjust_old": ("mnemonics", "adjust_old", False),
    "first_order": ("mnemonics", "first_order", True),
    "weight_transfer": (None, "weight_transfer", True),
    "balanced_finetune": (None, "balanced_finetune", True),
    "no_balanced_finetune": (None, "balanced_finetune", False),
}


# The notebooks' parameters (names, kinds, help, defaults from params/quick.yaml, the check).
from .notebook_params import (ALL_PARAMETERS, INJECTED_MARK, NOTEBOOK_PARAMETERS, NOTEBOOKS,  # noqa: E402,F401
                              STUDY_KEYS, ParameterError, check_parameters, injected_names,
                              notebook_defaults, notebook_parameters)

#: What to do with a run that is not in the ledger: ``compute`` it (minutes at smoke size, hours
#: at quick, GPU days at paper), ``skip`` it (render what exists; tables show "n/a (not run)" and
#: the notebook lists the missing runs with the command that computes them), or raise (``error``).
MISSING_MODES = ("compute", "skip", "error")


def missing_mode(missing: str | None = None, compute_missing: bool | None = None) -> str:
    """The missing-run behaviour: ``missing`` when given, else the older ``compute_missing``
    (True -> ``compute``, False -> ``error``), else ``compute``."""
    legacy = None if compute_missing is None else ("compute" if compute_missing else "error")
    if missing is None:
        return legacy or "compute"
    if missing not in MISSING_MODES:
        raise ParameterError(f"missing={missing!r}: expected one of {list(MISSING_MODES)}")
    if legacy is not None and legacy != missing:
        raise ParameterError(f"missing={missing!r} contradicts compute_missing={compute_missing!r}")
    return missing


# ------------------------------------------------------------------ small helpers
def as_list(value: Any) -> list:
    """A notebook parameter as a list: a scalar ``5`` or ``"lucir"`` becomes ``[5]``; None ``[]``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def seed_fields(seed: int) -> dict[str, int]:
    """A study seed fixes both the class order and the training seed."""
    return {"class_order_seed": int(seed), "seed": int(seed)}


def parse_spec(spec: str) -> dict[str, Any]:
    """Run spec -> config fields (``method``, ``exemplars``, flags; ``mnemonics`` as a dict)."""
    head, *flags = str(spec).split("+")
    method, _, exemplars = head.partition("_")
    exemplars = exemplars or "herding"
    if method not in METHODS or exemplars not in EXEMPLARS:
        raise ConfigError(
            f"unknown run spec {spec!r}: expected method[_exemplars][+flag...] with method in "
            f"{list(METHODS)}, exemplars in {list(EXEMPLARS)}, flags in {sorted(_FLAGS)}")
    out: dict[str, Any] = {"method": method, "exemplars": exemplars}
    for f in flags:
        if f not in _FLAGS:
            raise ConfigError(f"unknown flag {f!r} in run spec {spec!r}; known flags: {sorted(_FLAGS)}")
        group, name, value = _FLAGS[f]
        if group:
            out.setdefault(group, {})[name] = value
        else:
            out[name] = value
    return out


def spec_of(config: RunConfig | Mapping[str, Any]) -> str:
    """Canonical run spec of a config (or its ``to_dict()``); inverse of :func:`parse_spec` for
    the flags it knows (``lucir`` for LUCIR + herding)."""
    d = config.to_dict() if isinstance(config, RunConfig) else config
    mn = d.get("mnemonics") or {}
    spec = d["method"] + ("" if d["exemplars"] == "herding" else f"_{d['exemplars']}")
    if d["exemplars"] == "mnemonics" and mn.get("adjust_old") is False:
        spec += "+no_adjust_old"
    if d["exemplars"] == "mnemonics" and mn.get("first_order") is True:
        spec += "+first_order"
    if d.get("weight_transfer"):
        spec += "+weight_transfer"
    if d.get("balanced_finetune") is True and d["exemplars"] != "mnemonics":
        spec += "+balanced_finetune"
    if d.get("balanced_finetune") is False and d["exemplars"] == "mnemonics":
        spec += "+no_balanced_finetune"
    return spec


def _merge_mnemonics(common: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    mn = {**dict(common.get("mnemonics") or {}), **fields.pop("mnemonics", {})}
    out = {**common, **fields}
    if mn:
        out["mnemonics"] = mn
    return out


def make_run(spec: str, *, dataset: str, phases: int, seed: int, profile: str, **common: Any) -> RunConfig:
    """One config from a run spec and the protocol (``common``: any other RunConfig field)."""
    return make_config(**_merge_mnemonics(dict(common), parse_spec(spec)), dataset=dataset,
                       phases=int(phases), profile=profile, **seed_fields(seed))


# ------------------------------------------------------------------ config builders
def grid_configs(specs: Iterable[str], dataset: str, phases: Any, seeds: Any, profile: str,
                 spec_fields: Callable[[str], Mapping[str, Any]] = lambda spec: {},
                 **common: Any) -> list[RunConfig]:
    """Every spec x N x seed, ordered N, then seed, then spec (a complete single-seed table first);
    ``spec_fields(spec)``: fields that spec's runs set on top of ``common``."""
    return [make_run(s, dataset=dataset, phases=n, seed=seed, profile=profile, **{**common, **spec_fields(s)})
            for n in as_list(phases) for seed in as_list(seeds) for s in as_list(specs)]


def table1_configs(dataset: str, phases: Any, seeds: Any, methods: Any = TABLE1_METHODS,
                   profile: str = "quick", **common: Any) -> list[RunConfig]:
    """Table 1 / Fig. 4: the five methods (``lucir_mnemonics`` = LUCIR + mnemonics exemplars,
    the others herding) for every N and seed."""
    return grid_configs(methods, dataset, phases, seeds, profile, **common)


def ablation_configs(dataset: str, phases: Any, seeds: Any, profile: str = "quick",
                     methods: Any = ABLATION_METHODS, exemplars: Any = EXEMPLARS,
                     extras: Any = ABLATION_EXTRAS, **common: Any) -> list[RunConfig]:
    """Exemplar type (random | herding | mnemonics | authors_code) under each method, plus the
    deconfounding extras (specs such as ``lucir_mnemonics+no_adjust_old``)."""
    specs = [m if e == "herding" else f"{m}_{e}" for m in as_list(methods) for e in as_list(exemplars)]
    return _dedup(grid_configs(specs + as_list(extras), dataset, phases, seeds, profile, **common))


def cbf_control_configs(dataset: str, phases: Any, seeds: Any, profile: str = "quick",
                        **common: Any) -> list[RunConfig]:
    """LUCIR with herding, with mnemonics and with herding + class-balanced fine-tuning (CBF) at
    every N of ``phases``: mnemonics runs include CBF by default, so herding + CBF is what isolates
    the exemplars' effect at each N, not only at the ablation's N."""
    return grid_configs(CBF_CONTROL_SPECS, dataset, phases, seeds, profile, **common)


def ablation_with_controls(dataset: str, phases: Any, seeds: Any, profile: str, methods: Any, exemplars: Any,
                           extras: Any, cbf_control_phases: Any, **common: Any) -> list[RunConfig]:
    """The ablation notebook's runs: :func:`ablation_configs` at ``phases``, then
    :func:`cbf_control_configs` at each N of ``cbf_control_phases`` not among them."""
    control_n = [n for n in as_list(cbf_control_phases) if n not in as_list(phases)]
    return _dedup(ablation_configs(dataset, phases, seeds, profile, methods, exemplars, extras, **common)
                  + cbf_control_configs(dataset, control_n, seeds, profile, **common))


def forgetting_configs(dataset: str, phases: Any, seeds: Any, methods: Any = FORGETTING_METHODS,
                       profile: str = "quick", **common: Any) -> list[RunConfig]:
    """The runs compared with the authors' README (AIA and forgetting, CNN and NME heads); runs of
    the README's own method (:data:`README_METHOD`) use its memory (:data:`README_MEMORY`)."""
    return grid_configs(methods, dataset, phases, seeds, profile, spec_fields=lambda s: (
        README_MEMORY if parse_spec(s)["method"] == README_METHOD else {}), **common)


def sweep_configs(dataset: str, inner_lr: Any, outer_lr: Any, inner_steps: Any, phases: int = 5,
                  seed: int = 1993, profile: str = "quick", spec: str = "lucir_mnemonics",
                  last_phase: int | None = None, **common: Any) -> list[RunConfig]:
    """Sensitivity of mnemonics to alpha (inner_lr) x beta1 (outer_lr) x K (inner_steps).

    ``last_phase``: end every sweep run after that phase (None: the whole run). Phase 1 is the
    first phase with both programs of the method (new exemplars at phase 0 and 1, the old-exemplar
    adjustment at 1), so ``last_phase=1`` ranks the settings at a fraction of a full run's cost."""
    out = []
    for k in as_list(inner_steps):
        for a in as_list(inner_lr):
            for b in as_list(outer_lr):
                mn = {**dict(common.get("mnemonics") or {}), "inner_lr": float(a), "outer_lr": float(b),
                      "inner_steps": int(k)}
                out.append(make_run(spec, dataset=dataset, phases=phases, seed=seed, profile=profile,
                                    **{**common, "mnemonics": mn, "last_phase": last_phase}))
    return out


def snapshot_configs(dataset: str, method: str = "lucir", exemplars: Any = SNAPSHOT_EXEMPLARS,
                     phases: int = 5, seed: int = 1993, profile: str = "quick",
                     **common: Any) -> list[RunConfig]:
    """One config per exemplar strategy for the t-SNE (Fig. 1) and exemplar-image notebooks."""
    specs = [method if e == "herding" else f"{method}_{e}" for e in as_list(exemplars)]
    return [make_run(s, dataset=dataset, phases=phases, seed=seed, profile=profile, **common) for s in specs]


def default_snapshot_phases(config: RunConfig) -> tuple[int, int]:
    """Early = the first incremental phase, late = the last one (phase 0 and 1 when N = 1)."""
    return (1, config.phases) if config.phases >= 2 else (0, 1)


def _dedup(configs: Sequence[RunConfig]) -> list[RunConfig]:
    seen, out = set(), []
    for c in configs:
        if c.config_hash() not in seen:
            seen.add(c.config_hash())
            out.append(c)
    return out


# ------------------------------------------------------------------ notebook parameters
def __getattr__(name: str) -> Any:
    """``NOTEBOOK_DEFAULTS``: every notebook's parameters and defaults, read from params/quick.yaml
    when first asked for (no I/O at import)."""
    if name == "NOTEBOOK_DEFAULTS":
        return notebook_defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def common_fields(p: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields every run of a notebook shares: the memory size and the training-set cap
    (``train_per_class``, when set). The notebooks and the CLI build their configs with it, so both
    ask for the same runs. The mnemonics settings are the library's defaults (the step probe's
    choice, on held-out training images); the sensitivity sweep reports around them and does not
    feed back into the runs, which would tune them on test accuracy."""
    common: dict[str, Any] = {"memory_per_class": int(p["memory_per_class"])}
    if p.get("train_per_class") is not None:
        common["train_per_class"] = int(p["train_per_class"])
    return common


def memory_tag(per_class: int, mode: str = "per_class") -> str:
    """``m<k>`` when runs keep k exemplars per class other than the paper's 20, else "": the mark
    that keeps the low-data control's task names, blocks and files apart from the paper's."""
    return f"m{per_class}" if mode == "per_class" and per_class != RunConfig.memory_per_class else ""


# ------------------------------------------------------------------ notebook paths
def notebook_dir(value: str | os.PathLike) -> Path:
    """A notebook's ``results_dir`` / ``figures_dir``: a relative path is relative to notebooks/,
    whatever the kernel's working directory (``papermill notebooks/x.ipynb out.ipynb`` run from the
    repository root must read ``results/``, not ``../results`` above the checkout)."""
    from mnemonics_lib.datasets import PROJECT_ROOT

    path = Path(value)
    return path if path.is_absolute() else (PROJECT_ROOT / "notebooks" / path).resolve()


def notebook_configs(notebook: str, params: Mapping[str, Any]) -> list[RunConfig]:
    """The configs a notebook builds from its parameters (the same calls its cell 4 makes)."""
    p = notebook_parameters(notebook, params)
    ds, prof = p["dataset"], p["profile"]
    if notebook in ("table1", "figure4_curves"):
        return table1_configs(ds, p["phases"], p["seeds"], p["methods"], prof, **common_fields(p))
    if notebook == "forgetting":
        return forgetting_configs(ds, p["phases"], p["seeds"], p["forgetting_methods"], prof, **common_fields(p))
    if notebook == "ablation_exemplars":
        return ablation_with_controls(ds, p["ablation_phases"], p["seeds"], prof, p["ablation_methods"],
                                      p["ablation_exemplars"], p["ablation_extras"], p["cbf_control_phases"],
                                      **common_fields(p))
    if notebook == "sweep_mnemonics":
        return sweep_configs(ds, p["sweep_inner_lr"], p["sweep_outer_lr"], p["sweep_inner_steps"],
                             p["sweep_phases"], p["sweep_seed"], prof,
                             last_phase=p["sweep_last_phase"], **common_fields(p))
    return snapshot_configs(ds, p["snapshot_method"], p["snapshot_exemplars"], p["snapshot_phases"],
                            p["snapshot_seed"], prof, **common_fields(p))


# ------------------------------------------------------------------ tasks and priority
@dataclass(frozen=True)
class Task:
    """One cached computation. ``artifacts``: every artifact that needs it (first = priority)."""

    config: RunConfig
    study: str = STUDY_RUNS
    kind: str = "run"  # run | snapshot
    artifacts: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.study, self.kind, self.config.config_hash())

    def describe(self) -> str:
        c = self.config
        tag = memory_tag(c.memory_per_class, c.memory_mode)
        memory = f"-{tag}" if tag else ""
        return (f"{self.study}/{c.dataset}-{spec_of(c)}-N{c.phases}-s{c.seed}{memory}-{c.profile} "
                f"[{c.config_hash()}] ({', '.join(self.artifacts)})")

    def compute(self, root: str | os.PathLike, device: str | None = "auto"):
        """Load this task from the ledger or compute and store it: :func:`compute_task`, looked up
        when called (the job a dispatch executor runs calls this, so dispatch needs no study import)."""
        return compute_task(self, root, device)


def notebook_tasks(notebook: str, params: Mapping[str, Any], artifact: str | None = None) -> list[Task]:
    artifact = artifact or notebook
    configs = notebook_configs(notebook, params)
    if notebook in ("figure1_tsne", "exemplar_images"):
        return [Task(c, STUDY_SNAPSHOTS, "snapshot", (artifact,)) for c in configs]
    where = STUDY_SWEEPS if notebook == "sweep_mnemonics" else STUDY_RUNS
    return [Task(c, where, "run", (artifact,)) for c in configs]


def variant_params(params: Mapping[str, Any]) -> list[tuple[str, list[str], dict[str, Any]]]:
    """``variants`` of a params file: (name, notebooks, parameters with the overrides applied)."""
    out = []
    for name, spec in dict(params.get("variants") or {}).items():
        spec = dict(spec)
        notebooks = as_list(spec.pop("notebooks", ["table1", "figure4_curves"]))
        bad = [n for n in notebooks if n not in NOTEBOOK_PARAMETERS]
        bad += [k for k in spec if k not in ALL_PARAMETERS]
        if bad:
            raise ParameterError(f"variant {name!r}: unknown notebooks/parameters {bad}; "
                                 f"notebooks: {list(NOTEBOOKS)}, parameters: {sorted(ALL_PARAMETERS)}")
        merged = {k: v for k, v in params.items() if k not in STUDY_KEYS}
        out.append((name, notebooks, {**merged, **spec}))
    return out


def all_configs(params: Mapping[str, Any]) -> list[Task]:
    """Every task every notebook needs for a params file, in PRIORITY order, deduplicated:
    Table 1 (all N), the LUCIR exemplar ablation (with the deconfounding extras), the mnemonics
    sensitivity sweep, the variants (CIFAR-10 five methods), the snapshots, the plug-in ablations
    (the other methods), then anything else (forgetting-only runs, the curves)."""
    p = dict(params)
    abl = notebook_parameters("ablation_exemplars", p)
    lucir_first = [m for m in as_list(abl["ablation_methods"]) if m == "lucir"]
    others = [m for m in as_list(abl["ablation_methods"]) if m != "lucir"]
    groups: list[list[Task]] = [
        notebook_tasks("table1", p),
        notebook_tasks("ablation_exemplars", {**p, "ablation_methods": lucir_first}),
        notebook_tasks("sweep_mnemonics", p),
    ]
    for name, notebooks, vp in variant_params(p):
        for nb in notebooks:
            groups.append(notebook_tasks(nb, vp, f"{nb}[{name}]"))
    groups += [
        notebook_tasks("figure1_tsne", p),
        notebook_tasks("exemplar_images", p),
        notebook_tasks("ablation_exemplars", {**p, "ablation_methods": others, "ablation_extras": []}),
        notebook_tasks("ablation_exemplars", p),  # attribution only: all already listed
        notebook_tasks("forgetting", p),
        notebook_tasks("figure4_curves", p),
    ]
    merged: dict[tuple, Task] = {}
    for group in groups:
        for t in group:
            if t.key in merged:
                old = merged[t.key]
                if t.artifacts[0] not in old.artifacts:
                    merged[t.key] = dataclasses.replace(old, artifacts=old.artifacts + t.artifacts)
            else:
                merged[t.key] = t
    return list(merged.values())


def artifact_name(artifact: str) -> str:
    """``table1[cifar10]`` -> ``table1`` (the notebook behind an artifact)."""
    return artifact.split("[", 1)[0]


def select_tasks(tasks: Sequence[Task], only: Iterable[str] | None) -> list[Task]:
    """Tasks needed by any of the ``only`` artifacts (notebook names or ``name[variant]``)."""
    only = [o for o in as_list(list(only) if only is not None else None) if o]
    if not only:
        return list(tasks)
    known = {a for t in tasks for a in t.artifacts} | {artifact_name(a) for t in tasks for a in t.artifacts}
    bad = [o for o in only if o not in known]
    if bad:
        raise ParameterError(f"unknown artifact(s) {bad}; known: {sorted(known)}")
    return [t for t in tasks if any(a in only or artifact_name(a) in only for a in t.artifacts)]


# ------------------------------------------------------------------ running
@dataclass
class Outcome:
    task: Task
    status: str  # cached | copied | computed | missing | busy | failed | skipped | submitted
    record: Any = None  # results.RunRecord
    error: str | None = None
    wall_s: float = 0.0
    log: str | None = None  # the job's log file (local and slurm executors)
    log_tail: str = ""
    job_id: str | None = None


def _resolve_device(device: str | None) -> str | None:
    return None if device in (None, "", "auto") else device


def compute_task(task: Task, root: str | os.PathLike, device: str | None = "auto"):
    """Load ``task`` from the ledger or compute and store it; returns the RunRecord."""
    from . import results

    dev = _resolve_device(device)
    if task.kind == "snapshot":
        return snapshot(task.config, None, root, device=dev)
    from mnemonics_lib.trainer import run_incremental

    return results.run_or_load(task.config, lambda c: run_incremental(c, dev), root, study=task.study)


def launch_order(tasks: Sequence[Task], jobs: int) -> list[Task]:
    """With several workers, start one task per distinct phase 0 first (configs sharing phase 0
    then load it from the trainer's shared cache instead of training it twice at once), then the
    rest, each group in priority order. One worker: priority order unchanged."""
    if jobs <= 1:
        return list(tasks)
    from mnemonics_lib.methods import get_method
    from mnemonics_lib.trainer import phase0_key

    first, rest, seen = [], [], set()
    for t in tasks:
        k = phase0_key(t.config, get_method(t.config.method))
        (rest if k in seen else first).append(t)
        seen.add(k)
    return first + rest


def run_tasks(tasks: Sequence[Task], root: str | os.PathLike, device: str | None = "auto",
              jobs: int | None = None,
              compute_missing: bool = True, time_limit: float | None = None, threads: int | None = None,
              progress: Any = None, executor: str | None = None,
              settings: "dispatch.DispatchSettings | None" = None, bar: bool = False) -> list[Outcome]:
    """Load every cached task; compute the missing ones through :mod:`mnemonics_study.dispatch`
    (``executor``: local | slurm | debug, default ``$MNEMONICS_EXECUTOR`` or local; ``jobs``
    concurrent local runs; ``settings`` for everything else, e.g. the Slurm options).

    Only what the ledger lacks is sent: a resubmitted grid computes its missing and failed runs
    and loads the rest. ``time_limit`` (seconds): no new computation starts after it; those tasks
    come back ``skipped``. Failures come back ``failed`` with the error text, the job's log and
    its tail (the others still run); a run another process is computing right now comes back
    ``busy``; a Slurm array not waited for, ``submitted``.
    Returns one :class:`Outcome` per task, in the order given.
    """
    from . import dispatch, results

    t_start = time.perf_counter()
    say = progress or (lambda msg: log.info("%s", msg))
    outcomes: dict[tuple, Outcome] = {}
    todo: list[Task] = []
    for t in tasks:
        try:
            rec = results.require_cached(t.config, root, study=t.study)
        except results.MissingRunError as e:
            copied = (results.copy_from_other_study(t.config, root, study=t.study, sources=RUN_STUDIES)
                      if compute_missing and t.kind == "run" else None)
            if copied is not None:
                outcomes[t.key] = Outcome(t, "copied", copied)
            elif compute_missing:
                todo.append(t)
            else:
                outcomes[t.key] = Outcome(t, "missing", error=str(e))
        else:
            outcomes[t.key] = Outcome(t, "cached", rec)
    settings = settings or dispatch.DispatchSettings()
    settings = dataclasses.replace(settings, executor=dispatch.resolve_executor(executor or settings.executor),
                                   jobs=settings.jobs if jobs is None else jobs,
                                   threads=threads or settings.threads)
    todo = launch_order(list({t.key: t for t in todo}.values()), settings.jobs)
    if todo:
        at_once = f", {settings.jobs} at a time" if settings.executor == "local" else ""
        say(f"{len(outcomes)} cached, {len(todo)} to compute ({settings.executor} executor{at_once})")

    def expired() -> bool:
        return time_limit is not None and time.perf_counter() - t_start > time_limit

    for r in dispatch.dispatch(todo, root, device, settings, say, expired, bar=bar):
        rec = None
        if r.status == "computed":  # the ledger is the join point: read back what the job published
            rec = results.require_cached(r.task.config, root, study=r.task.study)
        outcomes[r.task.key] = Outcome(r.task, r.status, rec, error=r.error, wall_s=r.wall_s, log=r.log,
                                       log_tail=r.log_tail, job_id=r.job_id)
    return [outcomes[t.key] for t in tasks]


#: The outcomes after which a task's record is in the ledger.
SUCCEEDED = ("cached", "copied", "computed")


def raise_failures(outs: Sequence[Outcome]) -> None:
    """Raise one RuntimeError naming every task that did not end in :data:`SUCCEEDED` (its
    status, error and job log)."""
    failed = [o for o in outs if o.status not in SUCCEEDED]
    if failed:
        raise RuntimeError("; ".join(f"{o.task.describe()}: {o.status}: {o.error}"
                                     + (f" (log: {o.log})" if o.log else "") for o in failed))


class Records(list):
    """The RunRecords found, in the order asked (it is a list of them), plus what was asked for
    and is not in the ledger: ``missing`` (configs, in the order asked; empty unless
    ``missing="skip"``). ``order`` holds every asked config hash in order (for the report's rows).
    """

    def __init__(self, found: Iterable = (), missing: Iterable[RunConfig] = (), *,
                 order: Iterable[str] = (), study: str = STUDY_RUNS, root: Any = None,
                 mode: str = "skip"):
        super().__init__(found)
        self.mode = mode
        self.missing = list(missing)
        self.order = list(order)
        self.study = study
        self.root = None if root is None else str(root)

    @property
    def wanted(self) -> int:
        """How many runs were asked for (found + missing)."""
        return len(self) + len(self.missing)

    def summary(self, artifact: str | None = None) -> str:
        """What was found and, for each missing run, its spec, N, seed and config hash, with the
        command that computes them (printed by the notebooks under the run-or-load cell)."""
        where = f"{self.root}/{self.study}" if self.root else self.study
        head = f"{artifact}: " if artifact else ""
        if not self.missing:
            return f"{head}all {len(self)} runs found in {where}."
        if not self:
            lines = [f"{head}NONE of the {self.wanted} runs is in {where} yet; nothing was computed "
                     f"(missing=\"{self.mode}\")."]
        else:
            lines = [f"{head}{len(self)} of {self.wanted} runs found in {where}; {len(self.missing)} "
                     f"not run and not computed (missing=\"{self.mode}\")."]
        if self.mode == "skip":
            lines[0] += (' Their table cells read "n/a (not run)"; figures show only what exists '
                         '(a figure with no run at all says "not run").')
        specs = [spec_of(c) for c in self.missing]
        w = max(len("spec"), *map(len, specs))
        lines.append(f"Not run ({len(self.missing)}):")
        lines.append(f"  {'spec':<{w}}  {'dataset':<10}  {'N':>3}  {'seed':>4}  config hash")
        lines += [f"  {s:<{w}}  {c.dataset:<10}  {c.phases:>3}  {c.seed:>4}  {c.config_hash()}"
                  for s, c in zip(specs, self.missing)]
        for prof in sorted({c.profile for c in self.missing}):
            lines.append(f"Compute them (resumable, priority order): make results PROFILE={prof}")
            if artifact:
                lines.append(f"  or only this notebook's runs: python scripts/study.py results "
                             f"--profile {prof} --only {artifact}")
        return "\n".join(lines)


def run_configs(configs: Sequence[RunConfig | Task], root: str | os.PathLike, device: str | None = "auto",
                jobs: int = 1, compute_missing: bool | None = None, study: str = STUDY_RUNS,
                missing: str | None = None) -> Records:
    """The notebooks' entry point: the RunRecords of ``configs`` as :class:`Records`.

    ``missing`` (see :data:`MISSING_MODES`): ``compute`` (default) computes what is not cached;
    ``error`` raises ``results.MissingRunError`` listing every missing run; ``skip`` returns only
    the cached records, with the others in ``Records.missing`` (logged as a warning).
    ``compute_missing`` is the older switch: True = ``compute``, False = ``error``.
    """
    from . import results

    root = notebook_dir(root)
    mode = missing_mode(missing, compute_missing)
    tasks = [c if isinstance(c, Task) else Task(c, study) for c in configs]
    order = [t.config.config_hash() for t in tasks]
    if mode == "compute":
        outs = run_tasks(tasks, root, device, jobs=jobs)
        raise_failures(outs)
        return Records([o.record for o in outs], order=order, study=study, root=root, mode=mode)
    found, absent = [], []
    for t in tasks:
        try:
            found.append(results.require_cached(t.config, root, study=t.study))
        except results.MissingRunError:
            absent.append(t.config)
    return _found(found, absent, mode, order=order, study=study, root=root)


def _found(found: list, absent: list, mode: str, **kw: Any) -> Records:
    recs = Records(found, absent, mode=mode, **kw)
    if absent and mode == "error":
        from . import results

        raise results.MissingRunError(recs.summary())
    if absent:
        log.warning("%d of %d runs not in %s/%s (skipped, not computed)", len(absent), recs.wanted,
                    recs.root, recs.study)
    return recs


# ------------------------------------------------------------------ snapshots (Fig. 1, images)
def snapshot(config: RunConfig, phases: Sequence[int] | None, root: str | os.PathLike,
             device: str | None = None, compute_missing: bool = True):
    """A cached run (study ``snapshots``) that records, at an early and a late phase, what the
    t-SNE and exemplar-image figures need (see :func:`record_snapshots`). ``phases``:
    None for :func:`default_snapshot_phases`. Returns the RunRecord; its metrics hold the trainer's
    metrics plus ``snapshots`` (one entry per recorded phase)."""
    from . import results

    want = tuple(phases) if phases is not None else default_snapshot_phases(config)
    if any(not 0 <= p <= config.phases for p in want):
        raise ValueError(f"snapshot phases {want} outside 0..{config.phases}")
    compute = functools.partial(snapshots.record_snapshots, phases=want, device=_resolve_device(device))
    rec = (results.run_or_load(config, compute, root, study=STUDY_SNAPSHOTS) if compute_missing
           else results.require_cached(config, root, study=STUDY_SNAPSHOTS))
    got = tuple(s["phase"] for s in rec.metrics.get("snapshots", []))
    if got != want:
        raise ValueError(f"cached snapshot {rec.path} recorded phases {got}, not {want}; ask for "
                         f"phases={got} or move that run directory aside to record others")
    return rec


def snapshot_records(configs: Sequence[RunConfig], root: str | os.PathLike, device: str | None = "auto",
                     compute_missing: bool | None = None, missing: str | None = None) -> Records:
    """:func:`snapshot` for each config with the default phases (the notebooks' entry point);
    ``missing`` / ``compute_missing`` as in :func:`run_configs`."""
    from . import results

    root = notebook_dir(root)
    mode = missing_mode(missing, compute_missing)
    order = [c.config_hash() for c in configs]
    kw = {"order": order, "study": STUDY_SNAPSHOTS, "root": root}
    if mode == "compute":  # computed through the dispatch layer, then read back and checked
        raise_failures(run_tasks([Task(c, STUDY_SNAPSHOTS, "snapshot") for c in configs], root, device))
        return Records([snapshot(c, None, root, compute_missing=False) for c in configs], mode=mode, **kw)
    found, absent = [], []
    for c in configs:
        try:
            found.append(snapshot(c, None, root, compute_missing=False))
        except results.MissingRunError:
            absent.append(c)
    return _found(found, absent, mode, **kw)
