#!/usr/bin/env python
"""The study's command line: compute the runs every notebook needs, or execute the notebooks.

    python scripts/study.py results --profile quick --jobs 2 --time-limit 36000
    python scripts/study.py results --profile paper --set dataset=cifar100 --only table1 \
        --executor slurm --partition gpu --gpus-per-run 1 --time-min 720 --array-parallelism 45
    python scripts/study.py results --profile quick --only table1,figure4_curves --dry-run
    python scripts/study.py figures --profile quick
    python scripts/study.py readme --profile quick
    python scripts/study.py results --profile paper --set dataset=cifar100   # a parameter overridden

``results`` reads ``params/<profile>.yaml``, enumerates every run of every notebook in priority
order (``mnemonics_study.study.all_configs``) and computes the missing ones (resumable: finished runs
are cached by config hash, a crashed run resumes from its last phase checkpoint) through
``mnemonics_study.dispatch``: ``--executor local`` (default; every run its own process, ``--jobs`` at
a time), ``slurm`` (one job array, requeued on preemption or timeout; docs/cluster.md) or ``debug``
(in this process); ``MNEMONICS_EXECUTOR`` sets the default. ``figures``
executes every notebook with Papermill into ``build/notebooks/`` (the notebooks write tables and
figures into the params file's ``figures_dir``) with the params file's ``missing`` (``skip`` in
quick.yaml and paper.yaml: render what ``results/`` holds, list what is missing, compute nothing;
``compute`` in smoke.yaml); ``--compute-missing`` computes the missing runs at the profile instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
BUILD_DIR = ROOT / "build" / "notebooks"


def parse_overrides(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as a dict; VALUE is read as YAML (``seeds=[1993]``, ``dataset=cifar100``),
    KEY must be a notebook parameter. So a user changes a profile without editing the committed file."""
    import yaml

    from mnemonics_study import study

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            sys.exit(f"--set {item!r}: expected KEY=VALUE, e.g. --set dataset=cifar100")
        if key not in study.ALL_PARAMETERS:
            sys.exit(f"--set {item!r}: unknown parameter {key!r}; known: {sorted(study.ALL_PARAMETERS)}")
        out[key] = yaml.safe_load(value)
    return out


def load_params(profile: str, overrides: list[str] | None = None) -> dict:
    import yaml

    path = ROOT / "params" / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))
        sys.exit(f"no params file {path}; known profiles: {known}")
    params = yaml.safe_load(path.read_text()) or {}
    from mnemonics_study import study

    bad = sorted(set(params) - study.ALL_PARAMETERS - study.STUDY_KEYS)
    if bad:
        sys.exit(f"{path}: unknown keys {bad}; known: {sorted(study.ALL_PARAMETERS | study.STUDY_KEYS)}")
    return {**params, **parse_overrides(overrides)}


def notebook_path(value: str) -> Path:
    """A params-file path: relative to notebooks/ (where the notebooks run); one rule, the library's."""
    from mnemonics_study.study import notebook_dir

    return notebook_dir(value)


def _only(arg: str | None) -> list[str] | None:
    return [a.strip() for a in arg.split(",") if a.strip()] if arg else None


def _selected(params: dict, args: argparse.Namespace) -> list:
    """The tasks of ``params`` that --only, --match and --first select, in priority order."""
    import re

    from mnemonics_study import study

    tasks = study.select_tasks(study.all_configs(params), _only(args.only))
    if args.match:
        pattern = re.compile(args.match)
        tasks = [t for t in tasks if pattern.search(t.describe())]
    return tasks[: args.first] if args.first else tasks


def cmd_results(args: argparse.Namespace) -> int:
    from mnemonics_study import dispatch, study

    settings = dispatch_settings(args)  # bad executor flags fail before anything is enumerated
    params = load_params(args.profile, args.set)
    if args.results_dir:
        params["results_dir"] = str(Path(args.results_dir).resolve())
    tasks = _selected(params, args)
    root = notebook_path(params.get("results_dir", "../results"))
    print(f"{len(tasks)} tasks for profile {args.profile} in {root}")
    for art, n in Counter(t.artifacts[0] for t in tasks).items():
        print(f"  {art}: {n}")
    if args.dry_run:
        outs = study.run_tasks(tasks, root, compute_missing=False)
        for o in outs:
            print(f"  {o.status:8s} {o.task.describe()}")
        print(dict(Counter(o.status for o in outs)))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    outs = study.run_tasks(tasks, root, device=args.device, time_limit=args.time_limit, progress=print,
                           settings=settings, bar=True)
    counts = Counter(o.status for o in outs)
    for o in outs:
        if o.status == "failed":
            print(dispatch.failure_report(o))
    print(f"{dict(counts)} in {time.perf_counter() - t0:.0f} s")
    if counts.get("failed"):
        print(f"{counts['failed']} run(s) failed; the same command sends only them (and anything else "
              f"missing) again: the runs that finished are loaded from {root}")
    if counts.get("submitted"):
        print(f"{counts['submitted']} run(s) queued on Slurm; the same command (without --no-wait) waits for "
              f"them, loads what finished and sends only what failed")
    return 1 if counts.get("failed") else 0


def dispatch_settings(args: argparse.Namespace):
    """The dispatch settings of ``results``' flags; bad ones exit with one line naming the fix."""
    from mnemonics_study import dispatch

    try:
        executor = dispatch.resolve_executor(args.executor)
        if executor == "slurm":
            dispatch.require_sbatch()
    except dispatch.DispatchError as e:
        raise SystemExit(str(e)) from None
    slurm = dispatch.SlurmOptions(
        partition=args.partition, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
        mem_gb=args.mem_gb, time_min=args.time_min, array_parallelism=args.array_parallelism,
        account=args.account, qos=args.qos, setup=tuple(args.slurm_setup or ()))
    return dispatch.DispatchSettings(executor=executor, jobs=args.jobs, threads=args.threads, slurm=slurm,
                                     folder=Path(args.log_dir) if args.log_dir else None,
                                     wait=not args.no_wait)


def cmd_cost(args: argparse.Namespace) -> int:
    """GPU-hours of the selected runs, from the costs measured in results/ (mnemonics_study.grid_cost)."""
    from mnemonics_study import grid_cost

    params = load_params(args.profile, args.set)
    root = notebook_path(params.get("results_dir", "../results"))
    tasks = _selected(params, args)
    model = grid_cost.CostModel.from_ledger(root)
    cost = grid_cost.grid_cost([t.config for t in tasks], model)
    print(f"{args.profile} {','.join(sorted({t.config.dataset for t in tasks}))}: {cost.line()}")
    if args.verbose:
        for t in tasks:
            est = model.estimate(t.config)
            print(f"  {t.describe()}: " + (f"{(est.phase0_s + est.incremental_s) / 3600:.2f} h ({est.basis})"
                                           if est else "no measured basis"))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    import papermill as pm

    from mnemonics_study import study

    params = load_params(args.profile, args.set)
    if args.device:
        params["device"] = args.device
    params["missing"] = "compute" if args.compute_missing else (args.missing or params.get("missing", "skip"))
    root = notebook_path(params.get("results_dir", "../results"))
    print(f"missing runs: {params['missing']} (results in {root})")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the notebook kernels
    runs = [(nb, nb, study.notebook_parameters(nb, params)) for nb in study.NOTEBOOKS]
    for name, notebooks, vparams in study.variant_params(params):
        runs += [(nb, f"{nb}-{name}", study.notebook_parameters(nb, vparams)) for nb in notebooks]
    only = _only(args.only)
    if only:
        runs = [r for r in runs if r[0] in only or r[1] in only]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    t_all, failed, not_run = time.perf_counter(), [], {}
    for nb, out_name, nb_params in runs:
        out = BUILD_DIR / f"{out_name}.ipynb"
        fig_dir = notebook_path(nb_params["figures_dir"])
        t0 = time.time()
        before = {q: q.stat().st_mtime_ns for q in fig_dir.glob("*") if q.is_file()}
        tasks = study.notebook_tasks(nb, nb_params)
        nb_root = notebook_path(nb_params["results_dir"])
        absent = [o.task for o in study.run_tasks(tasks, nb_root, compute_missing=False)
                  if o.status == "missing"]
        not_run.update({t.key: t for t in absent})
        action = {"skip": "not run: shown as n/a", "compute": "to compute now",
                  "error": "missing: the notebook will fail"}[nb_params["missing"]]
        print(f"== {nb}.ipynb -> {out.relative_to(ROOT)}: {len(tasks) - len(absent)} of {len(tasks)} runs "
              f"cached" + (f", {len(absent)} {action}" if absent else ""), flush=True)
        try:
            pm.execute_notebook(str(NOTEBOOK_DIR / f"{nb}.ipynb"), str(out), parameters=nb_params,
                                kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
        except pm.PapermillExecutionError as e:
            failed.append(out_name)
            print(f"   FAILED ({e.ename}: {e.evalue}); see {out}")
            continue
        made = sorted(q for q in fig_dir.glob("*") if q.is_file() and before.get(q) != q.stat().st_mtime_ns)
        for p in made:
            print(f"   {p}")
        print(f"   {time.time() - t0:.0f} s")
    print(f"{len(runs) - len(failed)}/{len(runs)} notebooks in {time.perf_counter() - t_all:.0f} s"
          + (f"; failed: {failed}" if failed else ""))
    if not_run and params["missing"] == "skip":
        print(f"{len(not_run)} distinct runs are not in {root}: their cells read 'n/a (not run)' (each "
              f"notebook lists them). Compute them with `make results PROFILE={args.profile}` "
              f"(or `scripts/study.py figures --profile {args.profile} --compute-missing`).")
    return 1 if failed else 0


def cmd_readme(args: argparse.Namespace) -> int:
    """Rewrite the generated blocks (:func:`tools.readme.study_blocks`) of README.md and
    docs/study.md from results/."""
    from tools import readme
    from mnemonics_lib.atomic import write_text_atomic

    params = load_params(args.profile, args.set)
    root = notebook_path(params.get("results_dir", "../results"))
    blocks = readme.study_blocks(params, root)
    paths = [Path(p) for p in (args.readme or [ROOT / "README.md", ROOT / "docs" / "study.md",
                                              ROOT / "docs" / "imagenet.md"])]
    texts = {str(p): p.read_text() for p in paths}
    new, absent = readme.update_files(texts, blocks)
    for name in absent:
        print(f"no block {name!r} in {', '.join(map(str, paths))} (add {readme.BEGIN.format(name)!r} and "
              f"{readme.END.format(name)!r} to show it)")
    for p in paths:
        n = sum(readme.BEGIN.format(k) in texts[str(p)] for k in blocks)
        changed = new[str(p)] != texts[str(p)]
        if changed:
            write_text_atomic(p, new[str(p)])
        print(f"{p}: {n} generated block(s), {'rewritten' if changed else 'unchanged'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("results", help="compute the missing runs of every notebook (priority order)")
    r.add_argument("--profile", default="quick", help="params/<profile>.yaml (smoke | quick | paper)")
    r.add_argument("--jobs", type=int, default=1, help="local executor: runs at a time, each its own process "
                                                       "(and its own GPU when runs go to CUDA)")
    r.add_argument("--executor", default=None, help="local | slurm | debug (default: $MNEMONICS_EXECUTOR, "
                                                    "else local); see docs/cluster.md")
    r.add_argument("--log-dir", default=None, help="submitit's job files and logs (default: "
                                                   "checkpoints/submitit, ignored by git; on Slurm a shared disk)")
    from mnemonics_study.dispatch import SlurmOptions

    slurm = SlurmOptions()  # the flags' defaults are the options' own
    s_ = r.add_argument_group("slurm (with --executor slurm)")
    s_.add_argument("--partition", default=slurm.partition)
    s_.add_argument("--account", default=slurm.account)
    s_.add_argument("--qos", default=slurm.qos)
    s_.add_argument("--gpus-per-run", type=int, default=slurm.gpus_per_run)
    s_.add_argument("--cpus-per-run", type=int, default=slurm.cpus_per_run, help="also the torch threads of each run")
    s_.add_argument("--mem-gb", type=int, default=slurm.mem_gb)
    s_.add_argument("--time-min", type=int, default=slurm.time_min,
                    help="each array task's time limit (minutes); at it the run is requeued and resumes "
                         f"from its last phase checkpoint (at most {slurm.max_requeue} times)")
    s_.add_argument("--array-parallelism", type=int, default=slurm.array_parallelism,
                    help="array tasks running at once")
    s_.add_argument("--slurm-setup", action="append", metavar="LINE",
                    help="shell line run before each task, e.g. 'module load cuda' (repeatable)")
    s_.add_argument("--no-wait", action="store_true",
                    help="return once the array is queued (the same command later loads what finished)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument("--only", help="comma-separated artifacts, e.g. table1,figure1_tsne")
    r.add_argument("--time-limit", type=float, default=None, help="seconds; no new run starts after it")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: cores / jobs for a pool)")
    r.add_argument("--match", help="only tasks whose description (as --dry-run prints it) matches this "
                                    "regular expression, e.g. 'runs/.*-lucir(_random)?-N5-'")
    r.add_argument("--first", type=int, default=None,
                   help="only the first K tasks of the priority list (after --only)")
    r.add_argument("--dry-run", action="store_true", help="list the tasks and whether each is cached")
    r.add_argument("--results-dir", default=None,
                   help="read and write runs here instead of the profile's results_dir (e.g. an ignored "
                        "folder on a GPU machine: a second call on the same machine still finds its runs)")
    r.set_defaults(func=cmd_results)
    c = sub.add_parser("cost", help="GPU-hours of the selected runs from the costs measured in results/")
    c.add_argument("--profile", default="quick")
    c.add_argument("--only", help="comma-separated artifacts, e.g. table1")
    c.add_argument("--match", default=None)
    c.add_argument("--first", type=int, default=None)
    c.add_argument("--verbose", action="store_true", help="each run's estimate and its basis")
    c.set_defaults(func=cmd_cost)
    f = sub.add_parser("figures", help="execute every notebook with params/<profile>.yaml")
    f.add_argument("--profile", default="quick")
    f.add_argument("--only", help="comma-separated notebook names (or name-variant)")
    f.add_argument("--device", default=None, help="override the params file's device")
    f.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the notebook kernels")
    f.add_argument("--missing", choices=["compute", "skip", "error"], default=None,
                   help="a run not in results/: compute | skip (list it, show n/a) | error; default: "
                        "the params file's `missing` (skip for quick and paper)")
    f.add_argument("--compute-missing", action="store_true",
                   help="compute every missing run at the profile (= --missing compute; hours at quick)")
    f.set_defaults(func=cmd_figures)
    m = sub.add_parser("readme", help="rewrite the generated blocks of README.md and docs/study.md from results/")
    m.add_argument("--profile", default="quick")
    m.add_argument("--readme", action="append", default=None,
                   help="a file to rewrite (repeatable; default: README.md, docs/study.md, docs/imagenet.md)")
    m.set_defaults(func=cmd_readme)
    for p in (r, c, f, m):
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a parameter of the params file (repeatable; VALUE is YAML), "
                            "e.g. --set dataset=cifar100 --set 'seeds=[1993]'")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mnemonics_lib.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        # an impossible protocol from the params file and --set (e.g. a dataset whose classes the
        # profile's N do not divide): one line naming the problem and the parameters to override
        raise SystemExit(f"study.py {args.command}: {e}{_phases_hint(args)}") from None


PHASE_KEYS = ("phases", "ablation_phases", "cbf_control_phases", "sweep_phases", "snapshot_phases")


def _phases_hint(args: argparse.Namespace) -> str:
    """The parameters whose N the dataset's incremental classes do not divide, as --set flags to
    change ("" when every N fits: the error is about something else)."""
    from mnemonics_lib.config import make_config
    from mnemonics_lib.protocol import base_classes, num_classes

    from mnemonics_study.study import as_list

    try:
        params = load_params(args.profile, args.set)
        probe = make_config(dataset=params["dataset"], phases=1)
    except Exception:  # noqa: BLE001 - only a hint: the error itself is printed either way
        return ""
    incremental = num_classes(probe) - base_classes(probe)
    bad = {k: as_list(params[k]) for k in PHASE_KEYS if k in params and params[k] is not None}
    bad = {k: v for k, v in bad.items() if any(incremental % int(n) for n in v)}
    if not bad:
        return ""
    flags = " ".join(f"--set '{k}=[...]'" for k in bad)
    return (f" ({params['dataset']} has {incremental} incremental classes; "
            + ", ".join(f"{k}={v}" for k, v in bad.items()) + f" do not all divide them: {flags})")


if __name__ == "__main__":
    sys.exit(main())
