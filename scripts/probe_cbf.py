"""The class-balanced fine-tuning probe (``mnemonics_study/cbf_probe.py``): train the LUCIR herding
network of B50 N = 5 through ``--last-phase``, then, at the end of each incremental phase, apply
CBF from that same state with each loss variant and score old- and new-class accuracy. Writes
``results/diagnostics/cbf_probe/<dataset>-<profile>-s<seed>-<hash>.json`` (rows, provenance),
which ``python scripts/study.py readme`` turns into the CBF probe table.

    python scripts/probe_cbf.py --threads 2
    python scripts/probe_cbf.py --dataset caltech101_jpeg --last-phase 2
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mnemonics_study import probe_cli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    probe_cli.add_base_run_arguments(ap, ROOT / "results")
    ap.add_argument("--last-phase", type=int, default=2, help="probe phases 1..LAST_PHASE")
    args = ap.parse_args(argv)
    device, fields = probe_cli.set_up(args)

    from mnemonics_study import cbf_probe
    from mnemonics_lib.config import ConfigError

    try:
        config = cbf_probe.base_config(args.dataset, args.profile, args.seed, args.phases, args.last_phase, **fields)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    t0 = time.time()
    rows = cbf_probe.run_probe(config, device, say=lambda r: print(r, flush=True))
    print(cbf_probe.probe_table(rows))
    probe_cli.write_record(probe_cli.record_path(args, "cbf_probe", config.config_hash()), {
        "base_config": config.to_dict(), "base_config_hash": config.config_hash(),
        "cbf_schedule": dataclasses.asdict(config.finetune_schedule), "variants": cbf_probe.VARIANTS,
        "rows": rows, "wall_s": time.time() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
