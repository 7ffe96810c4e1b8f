"""What every incremental method shares: the phase context and the hook interface.

A method is a small object with hooks called by :mod:`mnemonics_lib.trainer`:
``before_phase`` (grow/imprint the head, set weights, split data), ``loss`` (one batch),
``param_groups`` (what the optimiser trains), ``after_phase`` (e.g. BiC's bias correction) and
``logits`` (the CNN prediction used for evaluation) and ``phase_metrics`` (what the phase's
metrics row records of the method's own state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones import IncrementalNet
from ..config import RunConfig


@dataclass
class PhaseContext:
    """Everything a hook may read about the current phase (labels are order positions)."""

    config: RunConfig
    phase: int
    n_old: int  # classes seen before this phase
    n_seen: int  # classes seen after this phase
    model: IncrementalNet
    old_model: IncrementalNet | None
    # (N, 3, H, W) float normalised: new-class data + exemplars; a streaming.StreamedImages view
    # when the dataset stays on the host (index it for tensors; streaming.subset keeps it lazy)
    train_x: torch.Tensor
    train_y: torch.Tensor  # (N,)
    device: torch.device
    generator: torch.Generator
    state: dict[str, Any] = field(default_factory=dict)  # method-private, checkpointed

    @property
    def n_new(self) -> int:
        return self.n_seen - self.n_old


class Method:
    """Base class; the defaults are plain fine-tuning with cross-entropy on a linear head."""

    name = "base"
    cosine_head = False
    phase0_loss = "ce"  # phase-0 training is shared by methods with the same (head, phase0_loss)

    def before_phase(self, ctx: PhaseContext) -> None:
        if ctx.phase > 0:
            ctx.model.head.grow(ctx.n_new)

    def param_groups(self, ctx: PhaseContext) -> list[dict]:
        return [{"params": [p for p in ctx.model.parameters() if p.requires_grad]}]

    def loss(self, ctx: PhaseContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(ctx.model(x), y)

    def after_phase(self, ctx: PhaseContext) -> None:
        """Runs after model training, before the exemplar stage."""

    def logits(self, ctx_state: dict[str, Any], model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def phase_metrics(self, ctx: PhaseContext) -> dict[str, Any]:
        """Method-specific values stored in the phase's metrics row (JSON-serialisable)."""
        return {}


def distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Soft-target cross-entropy between temperature-scaled distributions (Hinton et al. 2015),
    averaged over the batch; the form LwF (Li & Hoiem 2016, Eq. 3) and BiC use."""
    return -(F.softmax(old_logits / T, 1) * F.log_softmax(new_logits / T, 1)).sum(1).mean()
