"""The exemplar-effect probe (``mnemonics_study/exemplar_effect.py``): train the LUCIR herding
network of B50 N = 5 through the last probed phase, then, at the end of each probed phase, build
that phase's exemplars by herding and by the production mnemonics stage at each step, and score
each set where a run uses it: the NME class means, and CBF from the same network. Writes
``results/diagnostics/exemplar_effect/<dataset>-<profile>-s<seed>-<hash>.json`` (rows,
provenance), which ``python scripts/study.py readme`` turns into the exemplar-effect table.

    python scripts/probe_exemplar_effect.py --threads 2
    python scripts/probe_exemplar_effect.py --probe-phases 1,2 --steps 0.1,1
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _numbers(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in filter(None, text.split(",")))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: write {kind.__name__} values separated by commas") from None
    return parse


def main(argv: list[str] | None = None) -> int:
    from mnemonics_study import probe_cli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    probe_cli.add_base_run_arguments(ap, ROOT / "results")
    ap.add_argument("--probe-phases", type=_numbers(int), default=(1,), help="incremental phases to probe, e.g. 1,2")
    ap.add_argument("--steps", type=_numbers(float), default=None,
                    help="mnemonics steps beta1 = beta2 besides herding (default: exemplar_effect.STEPS)")
    args = ap.parse_args(argv)
    if not args.probe_phases or min(args.probe_phases) < 1:
        raise SystemExit("--probe-phases: incremental phases only (1 or later), e.g. 1,2")
    device, fields = probe_cli.set_up(args)

    from mnemonics_study import cbf_probe, exemplar_effect
    from mnemonics_lib.config import ConfigError

    steps = exemplar_effect.STEPS if args.steps is None else (None, *args.steps)
    try:
        config = cbf_probe.base_config(args.dataset, args.profile, args.seed, args.phases,
                                       max(args.probe_phases), **fields)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    t0 = time.time()
    rows = exemplar_effect.run_probe(config, device, sorted(args.probe_phases), steps,
                                     say=lambda r: print(r, flush=True))
    print(exemplar_effect.probe_table(rows))
    probe_cli.write_record(probe_cli.record_path(args, "exemplar_effect", config.config_hash()), {
        "base_config": config.to_dict(), "base_config_hash": config.config_hash(),
        "mnemonics_settings": dataclasses.asdict(config.mnemonics) | {"outer_lr": "beta per row", "old_lr": "beta per row"},
        "cbf_schedule": dataclasses.asdict(config.finetune_schedule), "steps": list(steps),
        "rows": rows, "wall_s": time.time() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
