"""Evaluation after every phase: CNN, nearest-mean-of-exemplars (NME), an all-data class-mean
upper bound, old/new accuracy and the accuracy-matrix row by phase group."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .memory import ExemplarMemory
from .pipeline import preferred_memory_format
from .protocol import PhasePlan
from .steps import run_eagerly


@torch.inference_mode()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int) -> torch.Tensor:
    """fn over batches of x (in the model's layout for x's device), concatenated in float32.

    Inside ``steps.compiled_backbones`` (the trainer's evaluation on CPU) the full batches run the
    compiled code and the last, smaller one runs eagerly: no dynamic-shape graph for one batch."""
    if not len(x):
        return x[:0]  # an empty tensor (also for an empty streamed view)
    layout = preferred_memory_format(x.device)
    out = []
    for i in range(0, len(x), batch):
        b = x[i:i + batch].contiguous(memory_format=layout)
        with run_eagerly(len(b) != batch):
            out.append(fn(b).float())
    return torch.cat(out)


@torch.no_grad()
def normalised_features(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """L2-normalised backbone features, (N, D)."""
    return F.normalize(batched(model.features, x, batch), dim=1)


@torch.no_grad()
def class_means(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                batch: int = 512) -> torch.Tensor:
    """iCaRL's class means: mean of the normalised features of each image *and its horizontal
    flip*, renormalised; (n_classes, D). A class without images gets a zero mean."""
    # sum of both views' normalised features; the class sum is renormalised below
    f = normalised_features(model, x, batch) + normalised_features(model, x.flip(3), batch)
    d = f.shape[1]
    sums = torch.zeros(n_classes, d, device=f.device).index_add_(0, y, f)
    return F.normalize(sums, dim=1)


def nme_predict(test_feats: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest mean among normalised vectors = largest dot product."""
    return (test_feats @ means.T).argmax(1)


@torch.no_grad()
def evaluate_phase(*, model: torch.nn.Module, logits_fn: Callable[[torch.Tensor], torch.Tensor],
                   test_x: torch.Tensor, test_y: torch.Tensor, memory: ExemplarMemory,
                   all_train: tuple[torch.Tensor, torch.Tensor] | None, plan: PhasePlan, phase: int,
                   batch: int = 512) -> dict[str, Any]:
    """Accuracies (%) after ``phase`` over all classes seen so far (one shared head).

    test_x/test_y: the test images of the seen classes (normalised) and labels.
    all_train: every training image of the seen classes, for the upper bound (None to skip).
    """
    model.eval()
    n_seen, n_old = plan.seen_classes(phase), plan.starts[phase]
    y = test_y.cpu().numpy()
    pred_cnn = batched(lambda b: logits_fn(b)[:, :n_seen], test_x, batch).argmax(1).cpu().numpy()
    feats = normalised_features(model, test_x, batch)
    ex_x, ex_y = memory.tensors(list(range(n_seen)))
    pred_nme = nme_predict(feats, class_means(model, ex_x, ex_y, n_seen, batch)).cpu().numpy()
    acc_upper = None
    if all_train is not None:
        means = class_means(model, all_train[0], all_train[1], n_seen, batch)
        acc_upper = float((nme_predict(feats, means).cpu().numpy() == y).mean() * 100)
    poc = plan.phase_of_class()
    old, new = metrics.old_new_accuracy(y, pred_cnn, n_old)
    return {
        "phase": phase,
        "n_classes": n_seen,
        "acc_cnn": float((pred_cnn == y).mean() * 100),
        "acc_nme": float((pred_nme == y).mean() * 100),
        "acc_upper": acc_upper,
        "acc_old": None if np.isnan(old) else float(old),
        "acc_new": float(new),
        "row_cnn": metrics.accuracy_matrix(y, pred_cnn, poc, phase).tolist(),
        "row_nme": metrics.accuracy_matrix(y, pred_nme, poc, phase).tolist(),
    }
