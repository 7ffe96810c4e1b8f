"""The exemplar memory: per-class exemplar tensors and their selection (random, herding).

Exemplars are stored as float tensors in normalised input space, (m, 3, H, W) per class, so that
*mnemonics* (optimised pixels, :mod:`mnemonics_lib.bilevel`) and real images live in one place.
Each class keeps its exemplars in selection priority order, so a fixed-total budget shrinks a
class by keeping a prefix (iCaRL's ReduceExemplarSet).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def herding_selection(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding (Rebuffi et al. 2017, Alg. 4) on L2-normalised features, vectorised.

    features: (n, D). Returns (min(m, n),) indices in selection order: step k picks the sample
    that brings the mean of the chosen set closest to the class mean; a sample is chosen once.
    One (n,) distance evaluation per step instead of a Python loop over samples.
    """
    f = F.normalize(features.double(), dim=1)
    mu = f.mean(0)
    n = f.shape[0]
    m = min(m, n)
    chosen = torch.empty(m, dtype=torch.long, device=f.device)
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    running = torch.zeros_like(mu)
    for k in range(m):
        # candidate means (running + f_i) / (k + 1), distance to mu for every i at once
        cand = (running.unsqueeze(0) + f) / (k + 1)
        d = (cand - mu).pow(2).sum(1)
        d[taken] = float("inf")
        i = int(torch.argmin(d))
        chosen[k] = i
        taken[i] = True
        running += f[i]
    return chosen


def random_selection(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """(min(m, n),) random indices without replacement, reproducible by ``generator`` (CPU)."""
    return torch.randperm(n, generator=generator)[: min(m, n)]


@dataclass
class ExemplarMemory:
    """Exemplars per class (remapped label -> (m, 3, H, W) float tensor, priority order)."""

    store: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.store.values())

    @property
    def classes(self) -> list[int]:
        return sorted(self.store)

    def counts(self) -> dict[int, int]:
        return {c: len(v) for c, v in sorted(self.store.items())}

    def set_class(self, c: int, exemplars: torch.Tensor) -> None:
        self.store[c] = exemplars.detach().clone()

    def reduce_to(self, per_class: int) -> None:
        """Keep the first ``per_class`` exemplars of every class (the highest-priority ones)."""
        for c in self.store:
            self.store[c] = self.store[c][:per_class]

    def tensors(self, classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All exemplars (M, 3, H, W) and labels (M,) for ``classes`` (default all)."""
        cs = self.classes if classes is None else classes
        cs = [c for c in cs if len(self.store[c])]
        if not cs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        x = torch.cat([self.store[c] for c in cs])
        y = torch.cat([torch.full((len(self.store[c]),), c, dtype=torch.long) for c in cs])
        return x, y.to(x.device)

    def replace_all(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write back tensors produced by :meth:`tensors` (same class grouping and order)."""
        for c in self.classes:
            mask = y == c
            if mask.any():
                self.store[c] = x[mask].detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(c): v.cpu() for c, v in self.store.items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device: torch.device | str) -> "ExemplarMemory":
        return cls({int(c): v.to(device) for c, v in state.items()})
