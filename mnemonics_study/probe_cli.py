"""What the probe scripts (``scripts/probe_mnemonics.py``, ``scripts/probe_cbf.py``) share: the
arguments that name the base run, the torch set-up, and the record written under
``results/diagnostics/<kind>/`` with its provenance."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def add_base_run_arguments(ap: argparse.ArgumentParser, results_dir: Path) -> None:
    """The base LUCIR herding run (dataset, profile, seed, N, per-class cap) and where it runs."""
    ap.add_argument("--dataset", default="caltech100")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=1993, help="class-order and training seed")
    ap.add_argument("--phases", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=str(results_dir))


def set_up(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Logging, torch threads; returns (device, the config fields the arguments add)."""
    import torch

    from mnemonics_lib.trainer import default_device

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # phase progress
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    fields = {} if args.train_per_class is None else {"train_per_class": args.train_per_class}
    return device, fields


def record_path(args: argparse.Namespace, kind: str, config_hash: str, tag: str = "") -> Path:
    """``results/diagnostics/<kind>/<dataset>-<profile>-s<seed>-<hash><tag>.json``."""
    return (Path(args.results_dir) / "diagnostics" / kind /
            f"{args.dataset}-{args.profile}-s{args.seed}-{config_hash}{tag}.json")


def write_record(path: Path, record: dict[str, Any]) -> None:
    """The record with this checkout's provenance, written atomically."""
    from mnemonics_study import results

    path.parent.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(path, record | {"env": results.provenance(), "written_utc": results.utc_now()})
    print(f"written {path}")
