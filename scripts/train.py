#!/usr/bin/env python
"""Run ONE study run (or a few, one after the other) data-parallel over this node's GPUs.

    torchrun --standalone --nproc_per_node 8 scripts/train.py --profile paper \\
        --set dataset=imagenet_subset --only table1 --match 'lucir-N5-s1993'
    torchrun --standalone --nproc_per_node 8 scripts/train.py --profile paper \\
        --set dataset=imagenet_subset --hash 3f1c0a9e2b7d4c55
    python scripts/train.py --profile smoke --only table1 --first 1 --dry-run   # what would run

The run is chosen as ``scripts/study.py results`` chooses its tasks (``--profile``, ``--set``,
``--only``, ``--match``, ``--first``) or by ``--hash`` (its config hash, as ``--dry-run`` and
``results/.../config.json`` show it); every selected run is computed unless the ledger holds it.
Each runs under ``torch.distributed`` (mnemonics_lib.distributed: one process per GPU, each
training on its slice of every global batch, the same computation as one process) and is written
by rank 0 exactly as a single-process run is (``results.run_or_load``: the same run directory,
atomic publication, phase checkpoints and resume). Without torchrun it is an ordinary
single-process run. docs/distributed.md: launching on one node and under Slurm, the design.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _study_cli():
    """scripts/study.py (its parameter loading and task selection, so both pick runs alike)."""
    spec = importlib.util.spec_from_file_location("study_cli", HERE / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def select(args: argparse.Namespace) -> tuple[list, Path]:
    cli = _study_cli()
    params = cli.load_params(args.profile, args.set)
    if args.results_dir:
        params["results_dir"] = str(Path(args.results_dir).resolve())
    tasks = cli._selected(params, args)
    if args.hash:
        tasks = [t for t in tasks if t.config.config_hash() == args.hash]
    tasks = [t for t in tasks if t.kind == "run"]  # snapshot tasks record per phase: one process
    return tasks, cli.notebook_path(params.get("results_dir", "../results"))


def run(task, root: Path, device) -> str:
    """Compute ``task`` through the ledger: rank 0 publishes; every rank trains. Returns the status."""
    from mnemonics_lib import distributed
    from mnemonics_study import results
    from mnemonics_lib.trainer import run_incremental

    if not distributed.is_main():
        # rank 0 says whether it computes (inside run_or_load's lock) or found the run in the ledger
        if distributed.broadcast_object(None):
            run_incremental(task.config, device)
            return "computed"
        return "cached"
    started = []

    def compute(config):
        started.append(True)
        distributed.broadcast_object(True)
        return run_incremental(config, device)

    try:
        results.run_or_load(task.config, compute, root, study=task.study)
    finally:
        if not started:
            distributed.broadcast_object(False)
    return "computed" if started else "cached"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", help="params/<profile>.yaml (smoke | quick | paper)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    ap.add_argument("--only", help="comma-separated artifacts, e.g. table1")
    ap.add_argument("--match", help="regular expression on the task description (as --dry-run prints it)")
    ap.add_argument("--first", type=int, default=None, help="only the first K selected tasks")
    ap.add_argument("--hash", default=None, help="the run with this config hash")
    ap.add_argument("--results-dir", default=None, help="read and write runs here instead of the profile's")
    ap.add_argument("--all", action="store_true", help="run every selected task, not just exactly one")
    ap.add_argument("--dry-run", action="store_true", help="list the selected runs and stop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from mnemonics_lib import distributed

    tasks, root = select(args)
    if args.dry_run:
        for t in tasks:
            print(t.describe())
        return 0
    if not tasks or (len(tasks) > 1 and not args.all):
        listed = "\n  ".join(t.describe() for t in tasks[:20])
        sys.exit(f"{len(tasks)} runs selected; narrow the selection to one (--match, --hash) or pass --all"
                 + (f":\n  {listed}" if tasks else ""))
    device = distributed.init_from_env()
    try:
        for t in tasks:
            status = run(t, root, device)
            if distributed.is_main():
                print(f"{status}: {t.describe()} (world size {distributed.world()})")
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
