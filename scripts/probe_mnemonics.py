"""The mnemonics step probe (``mnemonics_study/step_probe.py``): train the LUCIR herding network of
B50 N = 5 through phase 1, then optimise that phase's new exemplars (beta1 x K) and adjust its old
ones (beta2) at every setting of the grid, scoring each on held-out real images. Writes
``results/diagnostics/mnemonics_probe/<dataset>-<profile>-s<seed>-<hash>.json`` (rows, grid,
provenance), which ``python scripts/study.py readme`` turns into the README's probe table.

    python scripts/probe_mnemonics.py --threads 2
    python scripts/probe_mnemonics.py --dataset cifar10 --train-per-class 500 --phases 5
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--phases", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from mnemonics_study import results, step_probe
    from mnemonics_lib.trainer import default_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    fields = {} if args.train_per_class is None else {"train_per_class": args.train_per_class}
    config = step_probe.base_config(args.dataset, args.profile, args.seed, args.phases, **fields)
    out = (Path(args.results_dir) / "diagnostics" / "mnemonics_probe" /
           f"{args.dataset}-{args.profile}-s{args.seed}-{config.config_hash()}.json")
    t0 = time.time()
    rows = step_probe.run_probe(config, device, say=lambda r: print(r, flush=True))
    record = {"base_config": config.to_dict(), "base_config_hash": config.config_hash(),
              "probe_phase": config.last_phase, "probe_settings": dataclasses.asdict(
                  step_probe.probe_settings(config, 1.0, 1)) | {"beta": "beta1 (new) or beta2 (old)", "K": "per row"},
              "rows": rows, "wall_s": time.time() - t0,
              "env": results.provenance()}
    out.parent.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(out, record)
    print(step_probe.probe_table(rows))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
