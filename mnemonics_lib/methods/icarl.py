"""iCaRL: Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR 2017.

Representation learning with sigmoid binary cross-entropy over all seen classes, where the
targets of the old classes are the old model's sigmoid outputs (Alg. 3: classification +
distillation in one BCE); exemplars by herding; prediction by nearest-mean-of-exemplars (the
trainer reports NME for every method; iCaRL's headline number is NME). The original used BCE,
not CE: this is one of the five things paper.md §4 says to pin.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, PhaseContext


class ICaRL(Method):
    name = "icarl"
    phase0_loss = "bce"

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = ctx.model(x)
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        if ctx.old_model is not None:
            with torch.no_grad():
                target[:, : ctx.n_old] = torch.sigmoid(ctx.old_model(x).float()).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(x)
