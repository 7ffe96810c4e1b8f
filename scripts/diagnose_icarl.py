"""Why does iCaRL not train under the quick schedule? Its phase 0 alone, under schedule variants.

Each variant (``method[:lr=..,epochs=..]``, see ``mnemonics_lib/diagnostics.py``) is the phase 0
of the Table 1 run of that method and seed, stored as a run directory under
``results/diagnostics/icarl_phase0/`` (provenance as for every run; cached, so a rerun computes
only what is missing). ``python scripts/study.py readme`` puts the table into the README.

    python scripts/diagnose_icarl.py --threads 1      # the README's variants (~1 h on one CPU core)
    python scripts/diagnose_icarl.py --variant icarl:lr=2.0,epochs=70
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mnemonics_lib import diagnostics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append",
                    help=f"method[:lr=..,epochs=..], repeatable (default: {', '.join(diagnostics.DEFAULT_VARIANTS)})")
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick", help="the schedule the variants modify")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    args = ap.parse_args(argv)

    import torch

    from mnemonics_lib import results
    from mnemonics_lib.config import ConfigError
    from mnemonics_lib.trainer import default_device, run_incremental

    variants = args.variant or list(diagnostics.DEFAULT_VARIANTS)
    try:
        configs = diagnostics.phase0_configs(variants, args.dataset, args.profile, args.seed)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)

    def compute(c):
        # no phase checkpoints and no shared phase-0 cache: each variant is one short phase 0
        return run_incremental(c, device, checkpoints=False, share_phase0=False)

    records = []
    for c in configs:
        records.append(results.run_or_load(c, compute, args.results_dir, study=diagnostics.STUDY))
        print(f"{c.config_hash()}: {records[-1].path}", flush=True)
    print(diagnostics.phase0_table(variants, configs, records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
