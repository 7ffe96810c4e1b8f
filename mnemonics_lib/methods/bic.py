"""BiC: Wu et al., "Large Scale Incremental Learning", CVPR 2019.

Stage 1: loss = lambda * L_distill (T = 2) + (1 - lambda) * CE, lambda = n_old / n_seen (Eq. 5).
Stage 2: a two-parameter bias-correction layer (alpha, beta) on the logits of the classes added in
this phase (Eq. 6), trained with CE on a small *balanced* validation split carved from the
exemplars and the new data (9:1 in the paper), with the model frozen.

The model's output is always the bias-corrected one: the earlier phases' layers are frozen and
applied in stage 1 (to the logits both losses see), in the stage-2 fit and at evaluation, as in
the paper and its common implementations (the bias layers sit inside the network's forward). The
old model used for distillation is corrected by its own layers, i.e. the same earlier ones.
Training stage 1 on raw logits while evaluating corrected ones would correct the earlier classes
twice, a mismatch that grows with every phase.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..streaming import subset
from .base import Method, PhaseContext, distillation


def apply_bias(logits: torch.Tensor, layers: list[tuple[int, int, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Apply every stored (start, end, alpha, beta) correction to its class range."""
    if not layers:
        return logits
    out = logits.clone()
    for start, end, a, b in layers:
        end = min(end, out.shape[1])
        out[:, start:end] = a * logits[:, start:end] + b
    return out


class BiC(Method):
    name = "bic"
    temperature = 2.0
    val_fraction = 0.1

    def before_phase(self, ctx: PhaseContext) -> None:
        super().before_phase(ctx)
        if ctx.phase == 0:
            return
        # Balanced validation split: k per class from every seen class, k = 10% of an old class's
        # exemplars (at least 1), removed from stage-1 training.
        old_mask = ctx.train_y < ctx.n_old
        per_old = max(1, int(round(self.val_fraction * old_mask.sum().item() / max(ctx.n_old, 1))))
        perm = torch.randperm(len(ctx.train_y), generator=ctx.generator, device=ctx.generator.device)
        perm = perm.to(ctx.train_y.device)
        y = ctx.train_y[perm]
        # rank of each sample within its class, in permuted order
        order = torch.argsort(y * len(y) + torch.arange(len(y), device=y.device))
        rank = torch.empty_like(order)
        ys = y[order]
        first = torch.searchsorted(ys, ys, right=False)
        rank[order] = torch.arange(len(y), device=y.device) - first
        val = perm[rank < per_old]
        keep = torch.ones(len(ctx.train_y), dtype=torch.bool, device=ctx.train_y.device)
        keep[val] = False
        ctx.state["bic_val"] = (ctx.train_x[val], ctx.train_y[val])
        ctx.train_x, ctx.train_y = subset(ctx.train_x, keep), ctx.train_y[keep]

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        layers = ctx.state.get("bic_layers", [])  # the earlier phases' layers, frozen
        logits = apply_bias(ctx.model(x), layers)
        ce = F.cross_entropy(logits, y)
        if ctx.old_model is None:
            return ce
        with torch.no_grad():
            old = apply_bias(ctx.old_model(x), layers)
        lam = ctx.n_old / ctx.n_seen
        return lam * distillation(logits[:, : ctx.n_old], old, self.temperature) + (1 - lam) * ce

    def after_phase(self, ctx: PhaseContext) -> None:
        if ctx.phase == 0:
            return
        vx, vy = ctx.state.pop("bic_val")
        layers = list(ctx.state.get("bic_layers", []))
        ctx.model.eval()
        with torch.no_grad():
            base = torch.cat([ctx.model(vx[i:i + 512]) for i in range(0, len(vx), 512)])
            base = apply_bias(base, layers)
        alpha = torch.ones(1, device=base.device, requires_grad=True)
        beta = torch.zeros(1, device=base.device, requires_grad=True)
        opt = torch.optim.SGD([alpha, beta], lr=0.01, momentum=0.9)
        s, e = ctx.n_old, ctx.n_seen
        for _ in range(ctx.config.schedule.bic_epochs * 10):  # full-batch steps on the small split
            corrected = torch.cat([base[:, :s], alpha * base[:, s:e] + beta], 1)
            loss = F.cross_entropy(corrected, vy)
            opt.zero_grad()
            loss.backward()
            opt.step()
        layers.append((s, e, alpha.detach(), beta.detach()))
        ctx.state["bic_layers"] = layers

    def logits(self, ctx_state: dict[str, Any], model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return apply_bias(model(x), ctx_state.get("bic_layers", []))

    def phase_metrics(self, ctx: PhaseContext) -> dict[str, Any]:
        """This phase's fitted (alpha, beta), so the correction can be inspected run by run."""
        layers = ctx.state.get("bic_layers", [])
        if ctx.phase == 0 or not layers:
            return {}
        start, end, a, b = layers[-1]
        return {"bic_alpha": float(a.reshape(-1)[0]), "bic_beta": float(b.reshape(-1)[0]),
                "bic_classes": [int(start), int(end)]}
