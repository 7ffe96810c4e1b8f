"""The mnemonics step probe (``mnemonics_study/step_probe.py``): train the LUCIR herding network of
B50 N = 5 through phase 1, then optimise that phase's new exemplars (beta1 x K) and adjust its old
ones (beta2) at every setting of the grid, scoring each on held-out real images. Writes
``results/diagnostics/mnemonics_probe/<dataset>-<profile>-s<seed>-<hash>.json`` (rows, grid,
provenance), which ``python scripts/study.py readme`` turns into the README's probe table.

    python scripts/probe_mnemonics.py --threads 2
    python scripts/probe_mnemonics.py --dataset cifar10 --train-per-class 500 --phases 5
    python scripts/probe_mnemonics.py --dataset caltech101_jpeg --new-grid 1:2,10:2,100:2 --old-grid ''
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _grid(text: str) -> tuple[tuple[float, int], ...]:
    """``"1:2,10:2"`` -> ((1.0, 2), (10.0, 2)); ``""`` -> () (that program is not probed)."""
    try:
        return tuple((float(b), int(k)) for b, k in (item.split(":") for item in filter(None, text.split(","))))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write beta:K pairs separated by commas, e.g. 1:2,10:2") from None


def main(argv: list[str] | None = None) -> int:
    from mnemonics_study import probe_cli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    probe_cli.add_base_run_arguments(ap, ROOT / "results")
    ap.add_argument("--new-grid", type=_grid, default=None,
                    help="beta1:K,... for the new-class program (default: step_probe.NEW_GRID)")
    ap.add_argument("--old-grid", type=_grid, default=None,
                    help="beta2:K,... for the old-exemplar adjustment, '' for none (default: step_probe.OLD_GRID)")
    args = ap.parse_args(argv)
    device, fields = probe_cli.set_up(args)

    from mnemonics_study import step_probe

    config = step_probe.base_config(args.dataset, args.profile, args.seed, args.phases, **fields)
    grids = {k: v for k, v in (("new_grid", args.new_grid), ("old_grid", args.old_grid)) if v is not None}
    # a probe over another grid is another record: it never overwrites the default grid's
    tag = "-grid" + hashlib.sha256(repr(sorted(grids.items())).encode()).hexdigest()[:6] if grids else ""
    t0 = time.time()
    rows = step_probe.run_probe(config, device, say=lambda r: print(r, flush=True), **grids)
    print(step_probe.probe_table(rows))
    probe_cli.write_record(probe_cli.record_path(args, "mnemonics_probe", config.config_hash(), tag), {
        "base_config": config.to_dict(), "base_config_hash": config.config_hash(),
        "probe_phase": config.last_phase, "probe_settings": dataclasses.asdict(
            step_probe.probe_settings(config, 1.0, 1)) | {"beta": "beta1 (new) or beta2 (old)", "K": "per row"},
        "rows": rows, "wall_s": time.time() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
