"""The Mnemonics authors' "baseline" trainer (mnemonics-training/1_train: trainer/baseline.py,
trainer/incremental.py, main.py defaults). Its run's CNN head is the 'LwF' row and its NME head
the 'iCaRL' row of their README table, so it is the method those rows measure; it is neither Li &
Hoiem's LwF (linear head, soft-target CE of weight 1) nor the original iCaRL (sigmoid BCE).

It keeps LUCIR's network set-up and drops LUCIR's losses:

* cosine head with learnable scale sigma; new-class weights imprinted from the normalised class
  means, old-class weights frozen (the code's ``fc1`` at lr 0): :meth:`LUCIR.before_phase`;
* loss = CE over all seen classes + beta * T^2 * KL(softmax(old / T) || softmax(new[:, :n_old] / T)),
  the KL summed over the old classes and averaged over the batch (the code's element-mean
  ``KLDivLoss`` times ``num_old_classes``), on the scaled cosine logits, T = 2, beta = 0.25;
* memory: the code's default is a fixed total of 2000 exemplars (``ceil(2000 / classes seen)``
  per class; ``--dynamic_budget`` off), i.e. ``memory_mode='fixed_total'``, ``memory_total=2000``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import PhaseContext
from .lucir import LUCIR


class CosineKD(LUCIR):
    name = "cosinekd"
    temperature = 2.0
    beta = 0.25

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = ctx.model(x)
        loss = F.cross_entropy(logits, y)
        if ctx.old_model is None:
            return loss
        with torch.no_grad():
            old = ctx.old_model(x)
        T = self.temperature
        kl = F.kl_div(F.log_softmax(logits[:, : ctx.n_old] / T, 1), F.softmax(old / T, 1),
                      reduction="batchmean")
        return loss + self.beta * T * T * kl
