"""The exemplar stage of a phase: choose exemplars for the new classes (random | herding |
mnemonics | authors_code), adjust old mnemonics, and keep the memory within its budget.

``mnemonics`` is the paper's method (§3, local bilevel program, :mod:`bilevel`);
``authors_code`` is what the authors' public code does instead (paper.md §4): herding, then one
epoch of SGD (lr 1e-5) on the pixels of the new-class exemplars with the model *frozen*,
minimising a cosine nearest-prototype cross-entropy on the phase's data, then rounding to uint8.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from . import bilevel
from .config import RunConfig
from .evaluation import normalised_features
from .memory import ExemplarMemory, herding_selection, random_selection
from .pipeline import Normaliser, augment, batch_indices
from .streaming import subset

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
        per_exemplar_step=m.step == "per_exemplar", momentum=m.momentum, inner_params=m.inner_params,
    )


def heldout_split(y: torch.Tensor, chosen: torch.Tensor, fraction: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Boolean mask (n,) of the samples held out of the outer objective: per class, round(fraction
    x class size) of its images that are not exemplars (``chosen``, a mask (n,)), at least one
    where the class has any non-exemplar image, drawn at random with ``generator`` (CPU).

    Drawn after the initial selection, from the images it left, so the exemplars start exactly
    where a herding run's do, and none of the held-out images is an exemplar's original."""
    held = torch.zeros(len(y), dtype=torch.bool)
    if fraction <= 0:
        return held.to(y.device)
    y_cpu, chosen_cpu = y.cpu(), chosen.cpu()
    for c in torch.unique(y_cpu).tolist():
        free = torch.nonzero((y_cpu == c) & ~chosen_cpu).flatten()
        if not len(free):
            continue
        k = min(len(free), max(1, round(fraction * int((y_cpu == c).sum()))))
        held[free[torch.randperm(len(free), generator=generator)[:k]]] = True
    return held.to(y.device)


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
                   phase: int) -> dict[str, Any]:
    """Fill ``memory`` for ``new_classes`` and shrink every class to ``per_class``.

    Returns the fields this stage adds to the phase's metrics row ({} for random and herding):
    ``exemplar_change`` (how far the pixel optimisation moved the exemplars, :func:`pixel_change`:
    ``new``, and ``old`` when old exemplars are adjusted) and, for mnemonics,
    ``mnemonics_pixel_delta`` (mean absolute change of the new exemplars' pixels from their
    initialisation, grey levels) and, with a held-out share, ``mnemonics_heldout_before`` /
    ``mnemonics_heldout_after``: the loss of the temporary model trained on the initial vs the
    optimised exemplars, on new-class images the outer objective never saw, beside
    ``mnemonics_heldout_model``, the loss of the model itself on them (no inner step): where the
    temporary model starts far above it, the optimisation mostly undoes the inner step's damage."""
    model.eval()
    strategy = config.exemplars
    init = config.mnemonics.init if strategy == "mnemonics" else (
        "herding" if strategy == "authors_code" else strategy)
    picked = []
    chosen = torch.zeros(len(new_y), dtype=torch.bool, device=new_y.device)
    for c in new_classes:
        where = torch.nonzero(new_y == c).flatten()
        idx = where[initial_selection(init, model, new_x[where], per_class, cpu_generator)]
        chosen[idx] = True
        picked.append((c, new_x[idx]))
    row: dict[str, Any] = {}
    if strategy in ("mnemonics", "authors_code") and per_class > 0:
        ex_x = torch.cat([p[1] for p in picked])
        ex_y = torch.cat([torch.full((len(p[1]),), p[0], dtype=torch.long, device=ex_x.device) for p in picked])
        start = ex_x
        change: dict[str, dict[str, float]] = {}
        if strategy == "mnemonics":
            ex_x = _mnemonics(config, model, memory, ex_x, ex_y, new_x, new_y, chosen, norm, generator,
                              cpu_generator, phase, change, row)
        else:
            ex_x = authors_code_adjust(model, ex_x, ex_y, new_x, new_y, norm, generator)
        change["new"] = pixel_change(start, ex_x, norm)
        row["exemplar_change"] = change
        if strategy == "mnemonics":
            row["mnemonics_pixel_delta"] = change["new"]["mean"]
        picked = [(c, ex_x[ex_y == c]) for c, _ in picked]
    for c, xc in picked:
        memory.set_class(c, xc)
    memory.reduce_to(per_class)
    return row


def _mnemonics(config, model, memory, ex_x, ex_y, new_x, new_y, chosen, norm, generator, cpu_generator,
               phase, change, row) -> torch.Tensor:
    """The paper's exemplar program: new exemplars optimised on the phase's data (less a held-out
    share, scored before and after), then the old exemplars adjusted by the half-split program."""
    settings = bilevel_settings(config)
    aug = None
    if settings.augment:
        pad = norm.pixel_range[0]
        aug = lambda b: augment(b, generator, pad)  # noqa: E731
    held = heldout_split(new_y, chosen, config.mnemonics.heldout_fraction, cpu_generator)
    real_x, real_y = subset(new_x, ~held), new_y[~held]
    held_x, held_y = subset(new_x, held), new_y[held]  # one copy (a lazy view if streamed), scored three times
    if held.any():
        row["mnemonics_heldout_model"] = bilevel.heldout_loss(model, ex_x, ex_y, held_x, held_y, settings, inner=False)
        row["mnemonics_heldout_before"] = bilevel.heldout_loss(model, ex_x, ex_y, held_x, held_y, settings)
    out = bilevel.optimise_exemplars(model, ex_x, ex_y, real_x, real_y, settings, generator=generator,
                                     augment=aug, pixel_range=norm.pixel_range)
    if held.any():
        row["mnemonics_heldout_after"] = bilevel.heldout_loss(model, out, ex_y, held_x, held_y, settings)
        row["mnemonics_heldout_n"] = int(held.sum())
    if config.mnemonics.adjust_old and phase > 0 and len(memory):
        old_x, old_y = memory.tensors()
        adjusted = bilevel.adjust_old_exemplars(model, old_x, old_y, settings, generator=generator,
                                                augment=aug, pixel_range=norm.pixel_range)
        change["old"] = pixel_change(old_x, adjusted, norm)
        memory.replace_all(adjusted, old_y)
    return out
