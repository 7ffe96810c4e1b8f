"""The class-incremental protocol: class order, phase splits and exemplar budgets (paper.md §2).

Labels are remapped to *order positions* once, in :func:`remap_labels`: after that, class ``k``
is the k-th class of the order, phase 0 owns classes ``0..base-1`` and so on. Every other module
works in that remapped space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import RunConfig

NUM_CLASSES = {
    "cifar100": 100,
    "cifar10": 10,
    "caltech100": 100,
    "caltech101_jpeg": 100,
    "imagenet_subset": 100,
    "imagenet": 1000,
}

# The *other* list that is also called "seed 1993" in the literature (PODNet / DER configs, the
# "iCaRL order" for CIFAR-100). It is NOT the NumPy shuffle below; kept under its own name so the
# two are never mixed (paper.md §2).
PODNET_ICARL_ORDER_CIFAR100 = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86, 84, 96, 18,
    24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83, 17, 81, 41, 12, 37, 59,
    25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75, 38, 63, 33, 74, 27, 22, 36, 3, 16, 21,
    60, 19, 70, 90, 89, 43, 5, 42, 65, 76, 40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7,
    34, 55, 54, 26, 35, 39,
)


def num_classes(config: "RunConfig") -> int:
    if config.dataset == "synthetic":
        return config.synthetic_classes
    return NUM_CLASSES[config.dataset]


def seeded_order(n_classes: int, seed: int = 1993) -> np.ndarray:
    """``np.random.seed(seed); np.random.shuffle(arange(n))`` with NumPy's legacy RNG, exactly as
    the LUCIR / Mnemonics codes do; isolated in a RandomState so global state is untouched."""
    order = np.arange(n_classes)
    np.random.RandomState(seed).shuffle(order)
    return order


def class_order(config: "RunConfig") -> np.ndarray:
    """Original class ids in the order they are learned; shape (C,)."""
    n = num_classes(config)
    if config.class_order == "seed":
        return seeded_order(n, config.class_order_seed)
    if config.class_order == "identity":
        return np.arange(n)
    # podnet_icarl: a fixed list for 100-class datasets only
    return np.asarray(PODNET_ICARL_ORDER_CIFAR100)


def remap_labels(y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Map original class ids to their position in ``order`` (the only remapping in the study)."""
    inverse = np.empty(order.max() + 1, dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return inverse[np.asarray(y)]


def base_classes(config: "RunConfig") -> int:
    n = num_classes(config)
    return n // 2 if config.base_classes is None else config.base_classes


@dataclass(frozen=True)
class PhasePlan:
    """Class ranges (in remapped label space) of every phase: phase p learns [start[p], end[p])."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def num_phases(self) -> int:
        """Number of training phases including phase 0 (N + 1)."""
        return len(self.starts)

    def new_classes(self, phase: int) -> range:
        return range(self.starts[phase], self.ends[phase])

    def seen_classes(self, phase: int) -> int:
        return self.ends[phase]

    def phase_of_class(self) -> np.ndarray:
        """Phase that introduced each class; shape (C,)."""
        out = np.empty(self.ends[-1], dtype=np.int64)
        for p, (s, e) in enumerate(zip(self.starts, self.ends)):
            out[s:e] = p
        return out


def phase_plan(config: "RunConfig") -> PhasePlan:
    n, b, N = num_classes(config), base_classes(config), config.phases
    step = (n - b) // N
    starts = (0,) + tuple(b + i * step for i in range(N))
    ends = (b,) + tuple(b + (i + 1) * step for i in range(N))
    return PhasePlan(starts, ends)


def exemplars_per_class(config: "RunConfig", seen_classes: int) -> int:
    """Exemplars kept for each seen class after a phase.

    ``per_class`` (the paper): ``memory_per_class`` each, so the total grows with the classes.
    ``fixed_total`` (LUCIR / iCaRL codes' 2000): ``memory_total // seen`` each, the remainder unused,
    so the total never exceeds the budget.
    """
    if config.memory_mode == "per_class":
        return config.memory_per_class
    return config.memory_total // seen_classes


def memory_budget_table(config: "RunConfig") -> list[dict[str, int]]:
    """Per-phase budget arithmetic: seen classes, exemplars per class, total kept."""
    plan = phase_plan(config)
    rows = []
    for p in range(plan.num_phases):
        seen = plan.seen_classes(p)
        m = exemplars_per_class(config, seen)
        rows.append({"phase": p, "seen_classes": seen, "per_class": m, "total": m * seen})
    return rows
