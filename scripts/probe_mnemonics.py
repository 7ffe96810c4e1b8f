"""The mnemonics step probe (``mnemonics_study/step_probe.py``): train the LUCIR herding network of
B50 N = 5 through phase 1, then optimise that phase's new exemplars (beta1 x K) and adjust its old
ones (beta2) at every setting of the grid, scoring each on held-out real images. Writes
``results/diagnostics/mnemonics_probe/<dataset>-<profile>-s<seed>-<hash>.json`` (rows, grid,
provenance), which ``python scripts/study.py readme`` turns into the README's probe table.

    python scripts/probe_mnemonics.py --threads 2
    python scripts/probe_mnemonics.py --dataset cifar10 --train-per-class 500 --phases 5
    python scripts/probe_mnemonics.py --dataset caltech101_jpeg --new-grid 1:2,10:2,100:2 --old-grid ''
    python scripts/probe_mnemonics.py --new-grid 1:2:0.01:all,10:1:0.1:head --old-grid ''
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


def _grid(text: str) -> tuple[tuple, ...]:
    """``"1:2,10:2"`` -> ((1.0, 2), (10.0, 2)); ``"10:1:0.01:head"`` -> ((10.0, 1, 0.01, "head"),)
    (beta:K[:alpha:inner_params]); ``""`` -> () (that program is not probed)."""
    out = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        try:
            if len(parts) == 2:
                out.append((float(parts[0]), int(parts[1])))
            elif len(parts) == 4 and parts[3] in ("all", "head"):
                out.append((float(parts[0]), int(parts[1]), float(parts[2]), parts[3]))
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r}: write beta:K or beta:K:alpha:inner_params (inner_params all or head) items "
                "separated by commas, e.g. 1:2,10:1:0.01:head") from None
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    from mnemonics_study import probe_cli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    probe_cli.add_base_run_arguments(ap, ROOT / "results")
    ap.add_argument("--new-grid", type=_grid, default=None,
                    help="beta1:K,... for the new-class program (default: step_probe.NEW_GRID)")
    ap.add_argument("--probe-phase", type=int, default=1,
                    help="the phase whose network and exemplars are probed (0 has no old exemplars: pass --old-grid '')")
    ap.add_argument("--old-grid", type=_grid, default=None,
                    help="beta2:K,... for the old-exemplar adjustment, '' for none (default: step_probe.OLD_GRID)")
    args = ap.parse_args(argv)
    device, fields = probe_cli.set_up(args)

    from mnemonics_study import step_probe

    if args.probe_phase == 0 and args.old_grid != ():
        ap.error("phase 0 has no old exemplars to adjust: pass --old-grid ''")
    config = step_probe.base_config(args.dataset, args.profile, args.seed, args.phases, args.probe_phase, **fields)
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
