"""Why does iCaRL not train under the quick schedule? Phase 0 alone, under schedule variants.

iCaRL's loss is sigmoid BCE (as in Rebuffi et al.); the study trains every method with the
paper's shared schedule (lr 0.1), and at quick (20 epochs in phase 0) iCaRL's phase-0 accuracy is a
fraction of the CE-trained heads'. This trains only phase 0 (``last_phase=0``) of the iCaRL run of
Table 1 under variants of the schedule (``lr_override``, ``epochs_override``) and, as the CE
control, LwF's phase 0 (the same linear head and data, CE loss), and stores each as a run
directory under ``results/diagnostics/icarl_phase0/`` (provenance as for every run; cached, so a
rerun only computes what is missing).

    python scripts/diagnose_icarl.py                   # the variants of the README
    python scripts/diagnose_icarl.py --variant icarl:lr=2.0,epochs=70 --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDY = "diagnostics/icarl_phase0"
# iCaRL at the quick schedule (the reference), at iCaRL's own lr (2.0, from its paper) and at
# three times quick's phase-0 epochs; LwF (CE) at quick as the control
DEFAULT_VARIANTS = ("icarl", "icarl:lr=2.0", "icarl:epochs=60", "lwf")
KNOBS = {"lr": ("lr_override", float), "epochs": ("epochs_override", int)}


def parse_variant(text: str) -> tuple[str, dict]:
    """``method[:knob=value,...]`` -> (method, RunConfig overrides); knobs: lr, epochs."""
    method, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        if not eq or name not in KNOBS:
            raise SystemExit(f"bad variant {text!r}: write method[:knob=value,...] with knobs {sorted(KNOBS)}, "
                             f"e.g. icarl:lr=2.0,epochs=60")
        field, cast = KNOBS[name]
        fields[field] = cast(value)
    return method, fields


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", help=f"method[:lr=..,epochs=..] (default: {DEFAULT_VARIANTS})")
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick", help="the schedule the variants modify")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=str(ROOT / "results"))
    args = ap.parse_args(argv)

    import torch

    from mnemonics_lib import results, study
    from mnemonics_lib.config import make_config
    from mnemonics_lib.trainer import default_device, run_incremental

    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    configs = [make_config(dataset=args.dataset, phases=5, method=m, profile=args.profile, last_phase=0,
                           **study.seed_fields(args.seed), **fields) for m, fields in variants]

    def compute(c):
        # no phase checkpoints and no shared phase-0 cache: each variant is one short phase 0
        return run_incremental(c, device, checkpoints=False, share_phase0=False)

    print("| variant | lr | phase-0 epochs | CNN % | NME % | wall s | config hash |")
    print("|---|---|---|---|---|---|---|")
    for text, c in zip(args.variant or DEFAULT_VARIANTS, configs):
        rec = results.run_or_load(c, compute, args.results_dir, study=STUDY)
        p0 = rec.metrics["per_phase"][0]
        print(f"| {text} | {c.schedule.lr} | {c.schedule.base_epochs} | {p0['acc_cnn']:.2f} | {p0['acc_nme']:.2f} | "
              f"{rec.metrics.get('wall_s_total', float('nan')):.0f} | {c.config_hash()} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
