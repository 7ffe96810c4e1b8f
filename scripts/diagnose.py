"""Diagnostics: short runs that explain a result (``mnemonics_lib/diagnostics.py``), each stored as a
run directory under ``results/diagnostics/`` (provenance as for every run; cached, so a rerun
computes only what is missing). ``python scripts/study.py readme`` puts their tables into the README.

    python scripts/diagnose.py icarl --threads 1           # iCaRL's phase 0 under schedule variants
    python scripts/diagnose.py icarl --variant icarl:lr=2.0,epochs=70
    python scripts/diagnose.py mnemonics-step --threads 1  # the sweep's run at beta1 100 and 1000,
                                                           # and at beta2 100 and 1000
    python scripts/diagnose.py mnemonics-step --old-lr 100  # one (beta1 100, beta2 100) run
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mnemonics_lib import diagnostics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["icarl", "mnemonics-step"])
    ap.add_argument("--variant", action="append",
                    help=f"icarl: method[:lr=..,epochs=..], repeatable (default: "
                         f"{', '.join(diagnostics.DEFAULT_VARIANTS)})")
    ap.add_argument("--outer-lr", type=float, action="append",
                    help="mnemonics-step: beta1, repeatable (default: the grid below)")
    ap.add_argument("--old-lr", type=float, action="append",
                    help=f"mnemonics-step: beta2, repeatable; with --outer-lr every pair, alone at beta1 "
                         f"{diagnostics.STEP_OUTER_LRS[0]:g} (default (beta1, beta2) grid: {diagnostics.STEP_GRID})")
    ap.add_argument("--last-phase", type=int, default=1,
                    help="mnemonics-step with --outer-lr / --old-lr: the phase each run ends after (default 1)")
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick", help="the schedule the runs start from")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # phase progress

    import torch

    from mnemonics_lib import results
    from mnemonics_lib.config import ConfigError
    from mnemonics_lib.trainer import default_device, run_incremental

    try:
        if args.which == "icarl":
            variants = args.variant or list(diagnostics.DEFAULT_VARIANTS)
            configs = diagnostics.phase0_configs(variants, args.dataset, args.profile, args.seed)
            study, checkpoints = diagnostics.STUDY, False  # one short phase each
            table = lambda recs: diagnostics.phase0_table(variants, configs, recs)  # noqa: E731
        else:
            if args.old_lr or args.outer_lr:
                grid = [(b1, b2, args.last_phase) for b1 in args.outer_lr or diagnostics.STEP_OUTER_LRS[:1]
                        for b2 in args.old_lr or [diagnostics.STEP_OLD_LR]]
            else:
                grid = diagnostics.STEP_GRID
            configs = diagnostics.step_configs(grid, dataset=args.dataset, profile=args.profile, seed=args.seed)
            study, checkpoints = diagnostics.STEP_STUDY, True  # two phases with exemplar stages: resumable
            table = lambda recs: diagnostics.step_table(configs, recs)  # noqa: E731
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)

    def compute(c):
        return run_incremental(c, device, checkpoints=checkpoints, share_phase0=checkpoints)

    records = []
    for c in configs:
        records.append(results.run_or_load(c, compute, args.results_dir, study=study))
        print(f"{c.config_hash()}: {records[-1].path}", flush=True)
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
