"""GPU-hours of a run grid, from the per-run costs the ledger has measured.

Every run directory records, per phase, the seconds of training, the exemplar stage and the
evaluation (``metrics.json``: ``per_phase[*].wall_s``) and the device (``env.json``). A grid's
cost is the sum over its runs, each estimated from the closest measured basis, in this order:

1. ``measured``     the run itself is in the ledger (measured on a GPU);
2. ``other seeds``  the same dataset, profile, spec and N measured with other seeds (their mean);
3. ``device x``     the same dataset, profile, spec and N measured on a CPU only, times the median
                    GPU/CPU cost ratio of the (dataset, profile, spec, N) measured on both;
4. ``profile x``    the same dataset, spec and N measured at another profile, times the ratio of the
                    two profiles' costs on the runs measured at both (the schedule's epochs);
5. ``images x``     any of the above on another dataset, times the ratio of training images per
                    class (an epoch's cost is proportional to the images it trains on);

otherwise the run has no basis and is listed. Phase 0 is counted once per distinct phase 0 of the
grid (the trainer shares it between runs: ``trainer.phase0_key``); a run whose phase 0 came from
that cache measured ~0 s there, so a basis's phase 0 is the largest one measured for it. The costs
exclude process start and dataset loading (seconds to a minute per run).
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Mean training images per class (the readers' full training sets). caltech100: 5494 images over
#: 100 classes (Caltech-101 at 32x32 without Faces_easy, as ``datasets.load_dataset`` reads it).
TRAIN_IMAGES_PER_CLASS = {"cifar100": 500.0, "cifar10": 5000.0, "caltech100": 54.94,
                          "imagenet_subset": 1300.0, "imagenet": 1281.2}


def is_gpu(device: str | None) -> bool:
    """A device name from ``env.json`` that is a GPU (the CPU runs' names are the CPU model's)."""
    return bool(device) and any(k in device for k in ("NVIDIA", "Tesla", "Radeon", "Instinct"))


@dataclass(frozen=True)
class Measured:
    """One run's measured cost: phase 0 and the incremental phases, in seconds."""

    key: tuple  # (dataset, profile, spec, phases)
    seed: int
    config_hash: str
    device: str
    phase0_s: float
    incremental_s: float


def _phase_s(row: dict) -> float:
    return float(sum((row.get("wall_s") or {}).values()))


def measured_runs(root: str | Path, studies: Iterable[str] = ("runs", "snapshots", "sweeps/mnemonics"),
                  gpu_only: bool = True) -> list[Measured]:
    """Every complete run under ``root/<study>`` with per-phase timings (GPU runs only by default).
    A copied run (``copied_from``) is the original's measurement and is counted once."""
    from .study import spec_of

    out, seen = [], set()
    for study in studies:
        for env_path in sorted((Path(root) / study).glob("*/env.json")):
            d = env_path.parent
            try:
                env = json.loads(env_path.read_text())
                cfg = json.loads((d / "config.json").read_text())
                metrics = json.loads((d / "metrics.json").read_text())
            except (OSError, ValueError):
                continue
            rows = metrics.get("per_phase") or []
            h = cfg.get("config_hash")
            if (gpu_only and not is_gpu(env.get("device"))) or not rows or h in seen or "copied_from" in env:
                continue
            if cfg.get("last_phase") is not None or len(rows) != cfg["phases"] + 1:
                continue  # a cut run (sweeps' last_phase) is not a whole run's cost
            seen.add(h)
            out.append(Measured((cfg["dataset"], cfg["profile"], spec_of(cfg), int(cfg["phases"])), int(cfg["seed"]),
                                h, env.get("device", "?"), _phase_s(rows[0]), sum(_phase_s(r) for r in rows[1:])))
    return out


@dataclass
class Estimate:
    phase0_s: float
    incremental_s: float
    basis: str  # the whole story, e.g. "caltech100 other seeds (3 run(s)), images x 9.10"
    kind: str = "measured"  # measured | other seeds | profile x | images x


def _mean_estimate(runs: Sequence[Measured], basis: str, kind: str = "other seeds") -> Estimate:
    return Estimate(max(r.phase0_s for r in runs), statistics.fmean(r.incremental_s for r in runs), basis, kind)


def _total(runs: Sequence[Measured]) -> float:
    e = _mean_estimate(runs, "")
    return e.phase0_s + e.incremental_s


class CostModel:
    """Estimates of a config's GPU seconds from the measured runs (see the module docstring):
    ``runs`` measured on GPUs, ``cpu_runs`` on CPUs (used through the measured GPU/CPU ratio)."""

    def __init__(self, runs: Sequence[Measured], cpu_runs: Sequence[Measured] = ()):
        self.by_key: dict[tuple, list[Measured]] = defaultdict(list)
        self.cpu_by_key: dict[tuple, list[Measured]] = defaultdict(list)
        self.by_hash = {r.config_hash: r for r in runs}
        for r in runs:
            self.by_key[r.key].append(r)
        for r in cpu_runs:
            self.cpu_by_key[r.key].append(r)
        both = [_total(self.by_key[k]) / _total(v) for k, v in self.cpu_by_key.items()
                if k in self.by_key and _total(v) > 0]
        self.gpu_per_cpu = statistics.median(both) if both else None

    @classmethod
    def from_ledger(cls, root: str | Path) -> "CostModel":
        runs = measured_runs(root, gpu_only=False)
        return cls([r for r in runs if is_gpu(r.device)], [r for r in runs if not is_gpu(r.device)])

    def _profile_ratio(self, dataset: str, src: str, dst: str) -> float | None:
        """Median cost ratio dst/src over (spec, N) measured at both profiles (on ``dataset``)."""
        ratios = []
        for (ds, prof, spec, n), runs in self.by_key.items():
            other = self.by_key.get((ds, dst, spec, n)) if ds == dataset and prof == src else None
            if other:
                a = _mean_estimate(runs, "")
                b = _mean_estimate(other, "")
                if a.phase0_s + a.incremental_s > 0:
                    ratios.append((b.phase0_s + b.incremental_s) / (a.phase0_s + a.incremental_s))
        return statistics.median(ratios) if ratios else None

    def _at(self, key: tuple) -> Estimate | None:
        """GPU runs of ``key`` (their mean), else its CPU runs times the GPU/CPU ratio."""
        if self.by_key.get(key):
            runs = self.by_key[key]
            return _mean_estimate(runs, f"other seeds ({len(runs)} run(s))")
        cpu = self.cpu_by_key.get(key)
        if cpu and self.gpu_per_cpu is not None:
            e, x = _mean_estimate(cpu, ""), self.gpu_per_cpu
            return Estimate(e.phase0_s * x, e.incremental_s * x, f"{len(cpu)} CPU run(s) x {x:.3f}", "device x")
        return None

    def _same_dataset(self, config: Any, dataset: str) -> Estimate | None:
        from .study import spec_of

        spec, n, prof = spec_of(config), int(config.phases), config.profile
        if dataset == config.dataset and config.config_hash() in self.by_hash:
            r = self.by_hash[config.config_hash()]
            return Estimate(r.phase0_s, r.incremental_s, f"measured ({r.device})")
        est = self._at((dataset, prof, spec, n))
        if est is not None:
            return est
        profiles = sorted({k[1] for k in [*self.by_key, *self.cpu_by_key] if k[0] == dataset} - {prof})
        for other in profiles:
            ratio = self._profile_ratio(dataset, other, prof)
            e = self._at((dataset, other, spec, n))
            if ratio is not None and e is not None:
                return Estimate(e.phase0_s * ratio, e.incremental_s * ratio,
                                f"{other} {e.basis} x {ratio:.2f}", "profile x")
        return None

    def estimate(self, config: Any) -> Estimate | None:
        """The closest basis for ``config``'s cost; None when nothing measured applies."""
        est = self._same_dataset(config, config.dataset)
        if est is not None:
            return est
        want = TRAIN_IMAGES_PER_CLASS.get(config.dataset)
        for ds in sorted({k[0] for k in self.by_key}):
            have = TRAIN_IMAGES_PER_CLASS.get(ds)
            if ds == config.dataset or not want or not have:
                continue
            est = self._same_dataset(config, ds)
            if est is not None:
                x = want / have
                return Estimate(est.phase0_s * x, est.incremental_s * x, f"{ds} {est.basis}, images x {x:.2f}",
                                "images x")
        return None


@dataclass
class GridCost:
    """A grid's GPU-hours (``gpu_hours``: over the runs with a basis) and how each was estimated."""

    gpu_hours: float
    runs: int
    bases: dict[str, int] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # config hashes with no basis

    def line(self) -> str:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(self.bases.items()))
        out = f"{self.gpu_hours:.1f} GPU-hours for {self.runs} runs ({kinds})"
        if self.unresolved:
            out += f"; {len(self.unresolved)} run(s) with no measured basis are not counted"
        return out


def grid_cost(configs: Sequence[Any], model: CostModel) -> GridCost:
    """GPU-hours of ``configs``: incremental phases per run, phase 0 once per distinct phase 0."""
    from mnemonics_lib.methods import get_method
    from mnemonics_lib.trainer import phase0_key

    total, bases, unresolved, phase0 = 0.0, defaultdict(int), [], {}
    for c in configs:
        est = model.estimate(c)
        if est is None:
            unresolved.append(c.config_hash())
            continue
        bases[est.kind] += 1
        total += est.incremental_s
        k = phase0_key(c, get_method(c.method))
        phase0[k] = max(phase0.get(k, 0.0), est.phase0_s)
    total += sum(phase0.values())
    return GridCost(total / 3600.0, len(configs) - len(unresolved), dict(bases), unresolved)
