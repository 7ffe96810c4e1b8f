"""The exemplar stage of a phase: choose exemplars for the new classes (random | herding |
mnemonics | authors_code), adjust old mnemonics, and keep the memory within its budget.

``mnemonics`` is the paper's method (§3, local bilevel program, :mod:`bilevel`);
``authors_code`` is what the authors' public code does instead (paper.md §4): herding, then one
epoch of SGD (lr 1e-5) on the pixels of the new-class exemplars with the model *frozen*,
minimising a cosine nearest-prototype cross-entropy on the phase's data, then rounding to uint8.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import bilevel
from .config import RunConfig
from .evaluation import normalised_features
from .memory import ExemplarMemory, herding_selection, random_selection
from .pipeline import Normaliser, augment, batch_indices

log = logging.getLogger(__name__)


def initial_selection(strategy: str, model: torch.nn.Module, x: torch.Tensor, m: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Indices (m,) of one class's images x (n, 3, H, W) chosen by ``random`` or ``herding``."""
    if strategy == "random":
        return random_selection(len(x), m, generator).to(x.device)
    return herding_selection(normalised_features(model, x), m)


def bilevel_settings(config: RunConfig) -> bilevel.BilevelSettings:
    m = config.mnemonics
    return bilevel.BilevelSettings(
        inner_steps=m.inner_steps, inner_lr=m.inner_lr, outer_iters=config.schedule.mnemonics_outer_iters,
        outer_lr=m.outer_lr, old_lr=m.old_lr, first_order=m.first_order, bn_mode=m.bn_mode,
        real_batch=m.real_batch, augment=m.augment,
        clip=0.0,  # keep mnemonics valid images: pixels stay inside [0, 1] before normalisation
    )


def authors_code_adjust(model: torch.nn.Module, ex_x: torch.Tensor, ex_y: torch.Tensor,
                        real_x: torch.Tensor, real_y: torch.Tensor, norm: Normaliser,
                        generator: torch.Generator, lr: float = 1e-5, batch: int = 128) -> torch.Tensor:
    """The authors' released procedure (frozen model, one epoch, prototype-cosine CE, uint8)."""
    model.eval()
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # the model is frozen: only the pixels move
    classes = torch.unique(ex_y)
    ex = ex_x.clone().requires_grad_(True)
    opt = torch.optim.SGD([ex], lr=lr, momentum=0.9)
    target = torch.searchsorted(classes, real_y)  # real labels -> prototype index
    scale = float(getattr(model.head, "sigma", torch.ones(1)).detach().reshape(-1)[0])
    for idx in batch_indices(len(real_x), batch, generator, real_x.device):
        f_ex = F.normalize(model.features(ex), dim=1)
        protos = torch.stack([f_ex[ex_y == c].mean(0) for c in classes])
        f_real = F.normalize(model.features(real_x[idx]), dim=1)
        loss = F.cross_entropy(scale * f_real @ F.normalize(protos, dim=1).T, target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, flag in flags:
        p.requires_grad_(flag)
    # back to the uint8 grid, as the released code stores exemplars as images
    pixels = norm.denormalise(ex.detach()).clamp(0, 1).mul(255).round().div(255)
    return (pixels - norm.mean) / norm.std


def pixel_change(before: torch.Tensor, after: torch.Tensor, norm: Normaliser) -> dict[str, float]:
    """How far an optimisation moved exemplars, in grey levels (0-255 per pixel value): the largest
    and the mean absolute change over every pixel value of every exemplar."""
    d = (norm.denormalise(after) - norm.denormalise(before)).abs().mul(255)
    return {"max": float(d.max()), "mean": float(d.mean())} if d.numel() else {"max": 0.0, "mean": 0.0}


def exemplar_stage(config: RunConfig, model: torch.nn.Module, memory: ExemplarMemory,
                   new_x: torch.Tensor, new_y: torch.Tensor, new_classes: range, per_class: int,
                   norm: Normaliser, generator: torch.Generator, cpu_generator: torch.Generator,
                   phase: int) -> dict[str, dict[str, float]]:
    """Fill ``memory`` for ``new_classes`` and shrink every class to ``per_class``.

    Returns how far the pixel optimisation moved the exemplars (:func:`pixel_change`): ``new``
    (the new classes' exemplars against their initial selection) and, when old exemplars are
    adjusted, ``old``; {} for strategies that do not optimise pixels. At a small step size the
    exemplars barely leave their herding start, and this is where a run says so."""
    model.eval()
    strategy = config.exemplars
    init = config.mnemonics.init if strategy == "mnemonics" else (
        "herding" if strategy == "authors_code" else strategy)
    picked = []
    change: dict[str, dict[str, float]] = {}
    for c in new_classes:
        xc = new_x[new_y == c]
        picked.append((c, xc[initial_selection(init, model, xc, per_class, cpu_generator)]))
    if strategy in ("mnemonics", "authors_code") and per_class > 0:
        ex_x = torch.cat([p[1] for p in picked])
        ex_y = torch.cat([torch.full((len(p[1]),), p[0], dtype=torch.long, device=ex_x.device) for p in picked])
        start = ex_x
        if strategy == "mnemonics":
            settings = bilevel_settings(config)
            aug = None
            if settings.augment:
                pad = norm.pixel_range[0]
                aug = lambda b: augment(b, generator, pad)  # noqa: E731
            ex_x = bilevel.optimise_exemplars(model, ex_x, ex_y, new_x, new_y, settings,
                                              generator=generator, augment=aug,
                                              pixel_range=norm.pixel_range)
            if config.mnemonics.adjust_old and phase > 0 and len(memory):
                old_x, old_y = memory.tensors()
                adjusted = bilevel.adjust_old_exemplars(model, old_x, old_y, settings, generator=generator,
                                                        augment=aug, pixel_range=norm.pixel_range)
                change["old"] = pixel_change(old_x, adjusted, norm)
                memory.replace_all(adjusted, old_y)
        else:
            ex_x = authors_code_adjust(model, ex_x, ex_y, new_x, new_y, norm, generator)
        change["new"] = pixel_change(start, ex_x, norm)
        picked = [(c, ex_x[ex_y == c]) for c, _ in picked]
    for c, xc in picked:
        memory.set_class(c, xc)
    memory.reduce_to(per_class)
    return change
