"""Diagnostics: short runs that explain a result (``mnemonics_study/diagnostics.py``), each stored as a
run directory under ``results/diagnostics/`` (provenance as for every run; cached, so a rerun
computes only what is missing). ``python scripts/study.py readme`` puts their tables into the README.

    python scripts/diagnose.py icarl --threads 1           # iCaRL's phase 0 beside LwF's
    python scripts/diagnose.py icarl --variant icarl:lr=2.0,epochs=70
    python scripts/diagnose.py schedule --seed 1994         # LUCIR's phase 0 at 40/80/160 epochs
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mnemonics_study import diagnostics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=sorted(diagnostics.DIAGNOSTICS))
    ap.add_argument("--variant", action="append",
                    help="method[:lr=..,epochs=..], repeatable (default: " + "; ".join(
                        f"{k}: {', '.join(v)}" for k, (_, v) in diagnostics.DIAGNOSTICS.items()) + ")")
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick", help="the schedule the runs start from")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # phase progress

    import torch

    from mnemonics_study import results
    from mnemonics_lib.config import ConfigError
    from mnemonics_lib.trainer import default_device, run_incremental

    try:
        study, defaults = diagnostics.DIAGNOSTICS[args.which]
        variants = args.variant or list(defaults)
        configs = diagnostics.phase0_configs(variants, args.dataset, args.profile, args.seed)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    checkpoints = False  # one phase each
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)

    def compute(c):
        return run_incremental(c, device, checkpoints=checkpoints, share_phase0=checkpoints)

    records = []
    for c in configs:
        records.append(results.run_or_load(c, compute, args.results_dir, study=study))
        print(f"{c.config_hash()}: {records[-1].path}", flush=True)
    print(diagnostics.phase0_table(variants, configs, records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
