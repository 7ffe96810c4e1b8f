"""iCaRL: Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR 2017.

Representation learning with sigmoid binary cross-entropy over all seen classes, where the
targets of the old classes are the old model's sigmoid outputs (Alg. 3: classification +
distillation in one BCE); exemplars by herding; prediction by nearest-mean-of-exemplars (the
trainer reports NME for every method; iCaRL's headline number is NME). The original used BCE,
not CE: this is one of the five things paper.md §4 says to pin.

Units as in the original implementation: the BCE is averaged over the batch *and* the classes
(the original's mean of the element-wise sigmoid cross-entropy), trained at lr 2.0 with weight
decay 1e-5 and lr / 5 at 7/10 and 9/10 of the epochs (``config.METHOD_SCHEDULES``). Summed over
classes at the shared lr 0.1 instead, the step is ~C times larger (lr 5-10 at C = 50-100) with 50x
the weight decay, and phase 0 collapses to a few classes.
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
        return F.binary_cross_entropy_with_logits(logits, target)  # mean over (batch, classes)
