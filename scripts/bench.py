#!/usr/bin/env python3
"""Speed benchmark of the study's stages against the field's standard pipeline (make bench).

Writes results/bench/<UTC timestamp>-<device slug>.json (raw timings, ratios, sizes, device,
provenance) and prints a table of ratios. ``--paper-projection`` instead times a few epochs of a
CIFAR-100-shaped B50 LUCIR run with the paper's schedule and projects the full 160-epoch run.

    python scripts/bench.py                  # default sizes for the device found
    python scripts/bench.py --quick          # seconds: tiny network and data
    python scripts/bench.py --device cuda --out results/bench
    python scripts/bench.py --paper-projection [--small]
    python scripts/bench.py --step-profile [--quick]   # where a training step's time goes
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a checkout without `pip install -e .` (the GPU machine)

import torch  # noqa: E402

from tools import bench  # noqa: E402

STAGES = ("train", "eval", "herding", "class_means", "mnemonics", "flops")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a CI-like check in seconds)")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"),
                    help="folder for the timestamped JSON, or a .json path")
    ap.add_argument("--dataset", default="synthetic", help="synthetic (default) or a 32x32 set, e.g. caltech100")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--no-amp", action="store_true", help="fp32 for our side on CUDA too")
    ap.add_argument("--paper-projection", action="store_true",
                    help="time phase 0 / phase 1 epochs of a B50 run and project the full run")
    ap.add_argument("--small", action="store_true", help="with --paper-projection: a tiny dry run")
    ap.add_argument("--bf16-only", action="store_true",
                    help="with --paper-projection on CUDA: the bf16 run alone (e.g. beside MNEMONICS_CUDA_COMPILE=1)")
    ap.add_argument("--step-profile", action="store_true",
                    help="profile the training step's kernels by kind (tools.step_profile)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.paper_projection:
        return _projection(args, device)
    if args.step_profile:
        return _step_profile(args, device)
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    record = bench.run_benchmark(device, quick=args.quick, dataset=args.dataset, amp=not args.no_amp,
                                 stages=stages)
    path = bench.write_record(record, args.out, device)
    print(bench.format_table(record))
    print(json.dumps({"ratios": record["ratios"], "wall_s": round(record["wall_s"], 1)}, indent=1))
    print(f"wrote {path}")
    return 0


def _step_profile(args: argparse.Namespace, device: torch.device) -> int:
    from tools import step_profile

    sizes = bench.default_sizes(device, args.quick)
    sizes = bench.dataclasses.replace(sizes, train_steps=min(sizes.train_steps, 10))  # a profile, not a timing
    report = step_profile.profile_training_step(device, sizes, amp=not args.no_amp, dataset=args.dataset)
    print(step_profile.format_profile(report))
    record = {"schema": bench.SCHEMA + "/step-profile", "sizes": bench.dataclasses.asdict(sizes), **report}
    print(f"wrote {bench.write_record(record, args.out, device, kind='step-profile')}")
    return 0


def _projection(args: argparse.Namespace, device: torch.device) -> int:
    sizes = bench.SMALL_PROJECTION if args.small else bench.ProjectionSizes()
    amps = (True, False) if device.type == "cuda" and not args.no_amp else (False,)
    if args.bf16_only and device.type == "cuda":
        amps = (True,)
    runs, data = {}, bench.projection_data(sizes)
    for amp in amps:
        key = "bf16" if amp else "fp32"
        runs[key] = bench.paper_projection(device, sizes, amp=amp, data=data)
        p = runs[key]["projection"]
        print(f"[{key}] phase-0 epoch {p['t0_s']:.2f}s, incremental step {1e3 * p['t_step_incremental_s']:.1f}ms,"
              f" projected full B50 N={sizes.phases} run: {p['total_s']:.0f}s = {p['total_h']:.2f}h", flush=True)
    record = {"schema": bench.SCHEMA + "/paper-projection", "runs": runs}
    path = bench.write_record(record, args.out, device, kind="paper-projection")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
