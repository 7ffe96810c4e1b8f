"""LwF, multi-class form: Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017.

Loss = CE over all seen classes + lambda_o * distillation of the old model's outputs on the old
classes (T = 2, lambda_o = 1, the paper's defaults). As in the Mnemonics/LUCIR comparisons, it
replays the exemplar memory (set ``memory_per_class=0`` for the exemplar-free original).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, PhaseContext, distillation


class LwF(Method):
    name = "lwf"
    temperature = 2.0
    lambda_old = 1.0

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = ctx.model(x)
        loss = F.cross_entropy(logits, y)
        if ctx.old_model is not None:
            with torch.no_grad():
                old = ctx.old_model(x)
            loss = loss + self.lambda_old * distillation(logits[:, : ctx.n_old], old, self.temperature)
        return loss
