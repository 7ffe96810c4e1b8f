"""LUCIR: Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing", CVPR 2019.

* cosine normalised classifier with learnable scale sigma (§3.2), ResNet without its last ReLU;
* new-class weights imprinted from the normalised mean feature of each new class, scaled by the
  mean norm of the old weights; old-class weights frozen in later phases (as the LUCIR code does);
* less-forget constraint: lambda * (1 - cos(f_new(x), f_old(x))), lambda = lambda_base *
  sqrt(n_old / n_new), lambda_base = 5 on CIFAR, 10 on ImageNet and the folder datasets (Eq. 6-7);
* inter-class separation: margin ranking loss between the ground-truth cosine of each old-class
  sample and its top-K = 2 new-class cosines, margin m = 0.5, weight 1 (Eq. 8);
* class-balanced fine-tuning is the trainer's switch (``balanced_finetune``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import distributed
from ..streaming import subset
from .base import Method, PhaseContext


class LUCIR(Method):
    name = "lucir"
    cosine_head = True
    lambda_base = 5.0
    lambda_base_imagenet = 10.0
    K = 2
    margin = 0.5
    lambda_mr = 1.0

    @torch.no_grad()
    def before_phase(self, ctx: PhaseContext) -> None:
        if ctx.phase == 0:
            return
        head, model = ctx.model.head, ctx.model
        model.eval()
        new_x = subset(ctx.train_x, ctx.train_y >= ctx.n_old)
        new_y = ctx.train_y[ctx.train_y >= ctx.n_old]
        feats = torch.cat([F.normalize(model.features(new_x[i:i + 512]).float(), dim=1)
                           for i in range(0, len(new_x), 512)])
        means = torch.stack([feats[new_y == c].mean(0) for c in range(ctx.n_old, ctx.n_seen)])
        old_norm = head.weight().norm(dim=1).mean()
        head.grow(ctx.n_new, F.normalize(means, dim=1) * old_norm)
        for w in list(head.weights)[:-1]:
            w.requires_grad_(False)  # LUCIR fixes the old class embeddings
        ctx.state["lucir_lambda"] = self.less_forget_weight(ctx.config.is_folder, ctx.n_old, ctx.n_new)

    def less_forget_weight(self, folder: bool, n_old: int, n_new: int) -> float:
        """lambda = lambda_base * sqrt(n_old / n_new) (Eq. 7), lambda_base 10 on ImageNet-like data."""
        return (self.lambda_base_imagenet if folder else self.lambda_base) * math.sqrt(n_old / n_new)

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = ctx.model
        feats = model.features(x)
        cos = model.head.cosine(feats)
        loss = F.cross_entropy(model.head.sigma * cos, y)
        if ctx.old_model is None:
            return loss
        with torch.no_grad():
            old_feats = ctx.old_model.features(x)
        lf = (1 - F.cosine_similarity(feats.float(), old_feats.float(), dim=1)).mean()
        loss = loss + ctx.state["lucir_lambda"] * lf
        # Margin ranking over the old-class samples of the batch, written with a mask rather than
        # by selecting them (cos[old]): same value, but static shapes and no host synchronisation
        # (``if old.any()``), so the step can be captured in a CUDA graph. A batch without
        # old-class samples adds exactly 0, as skipping the term did.
        k = min(self.K, ctx.n_new)
        gt = cos.gather(1, y[:, None]).float()  # (B, 1)
        hard = cos[:, ctx.n_old:ctx.n_seen].topk(k, dim=1).values.float()  # (B, K)
        old = (y < ctx.n_old).float()[:, None]  # (B, 1)
        per_pair = F.relu(self.margin - gt + hard) * old  # MarginRankingLoss(gt, hard, target=1)
        # the batch's mean over its old-class pairs; under DDP the global batch's (distributed)
        mr = distributed.batch_ratio(ctx.state, per_pair.sum(), old.sum() * k)
        return loss + self.lambda_mr * mr
