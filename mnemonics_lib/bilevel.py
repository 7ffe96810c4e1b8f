"""Exemplar-level bilevel optimisation of mnemonics exemplars.

Liu, Su, Liu, Schiele, Sun. *Mnemonics Training: Multi-Class Incremental Learning without
Forgetting.* CVPR 2020 (arXiv 2002.10211), Sec. 3 ("local bilevel program"):

    repeat M times:
        Θ' ← Θ                                               # temporary model
        repeat K times: Θ' ← Θ' − α ∇_Θ' L_CE(Θ'; E)          # trained only on the exemplars E
        E ← E − β1 ∇_E L_CE(Θ'; D)                          # validated on real data D

The exemplars ``E`` are pixel tensors in the model's (normalised) input space and are the
optimisation variables; the gradient w.r.t. ``E`` flows back through the K unrolled inner steps.
Old exemplars, whose real data is gone, are adjusted with the same program by splitting them
into halves that validate each other (lr β2, :func:`adjust_old_exemplars`).

Everything here is a pure function of tensors: the model passed in is only *read* (its
parameters and buffers are never written, its train/eval flags are restored on exit).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .steps import GraphReplay, cuda_graphs_enabled

log = logging.getLogger(__name__)

__all__ = [
    "BilevelSettings",
    "model_state",
    "unrolled_outer_loss",
    "heldout_loss",
    "hypergradient",
    "optimise_exemplars",
    "adjust_old_exemplars",
    "HypergradientReplay",
]

# Batch augmentation (B, C, H, W) -> (B, C, H, W); the caller closes over its own seeded
# generator (e.g. pipeline.augment), keeping one seed path.
Augment = Callable[[Tensor], Tensor]
PixelRange = tuple[float | Tensor, float | Tensor]

_BN_MODES = ("eval", "train")
_INNER_PARAMS = ("all", "head")


@dataclass(frozen=True)
class BilevelSettings:
    """Meta-hyperparameters of the local bilevel program (paper Sec. 3; values not recovered).

    inner_steps: K, inner SGD steps of the temporary model on the exemplars.
    inner_lr: α, inner learning rate.
    outer_iters: M, outer (exemplar) iterations.
    outer_lr: β1, learning rate of the new-class exemplars.
    old_lr: β2, learning rate when adjusting old exemplars.
    real_batch: real samples (validation data) drawn per outer iteration.
    first_order: truncate the hypergradient to the last inner step (see
        :func:`unrolled_outer_loss`).
    bn_mode: "eval" — BatchNorm normalises with its running statistics; "train" — with batch
        statistics (running statistics are updated on throw-away clones only).
    augment: apply the caller's augmentation to each real batch.
    clip: None — no pixel clamping; a float c >= 0 — after every outer step clamp pixels to
        [lo − c, hi + c] per channel, (lo, hi) being the valid normalised range passed in as
        ``pixel_range`` (c = 0 is exactly the valid range; c > 0 allows a slack in normalised units).
    per_exemplar_step: multiply the hypergradient by E, the number of exemplars optimised
        together. The inner loss is a mean over the E exemplars, so d outer / d e_j carries a
        factor 1/E; scaled by E, beta is the step of an exemplar as if it were trained on alone,
        independent of how many are optimised at once.
    momentum: heavy-ball momentum of the outer step, v ← μ v + g, E ← E − β v (the convention
        of torch.optim.SGD, which the authors' code uses for its exemplars with μ = 0.9).
    inner_params: which parameters the temporary model Θ' adapts. "all" — every trainable
        parameter (the paper's Θ); "head" — only those of the model's ``head`` (the classifier),
        the backbone a constant, as in an earlier release of the authors' code. The gradient
        reaches the pixels either way: through the exemplars' features in the head's inner step.
    """

    inner_steps: int
    inner_lr: float
    outer_iters: int
    outer_lr: float
    old_lr: float
    real_batch: int
    first_order: bool = False
    bn_mode: str = "eval"
    augment: bool = False
    clip: float | None = None
    per_exemplar_step: bool = False
    momentum: float = 0.0
    inner_params: str = "all"

    def __post_init__(self) -> None:
        for name in ("inner_steps", "outer_iters", "real_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("inner_lr", "outer_lr", "old_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        if self.inner_params not in _INNER_PARAMS:
            raise ValueError(f"inner_params must be one of {_INNER_PARAMS}, got {self.inner_params!r}")
        if self.bn_mode not in _BN_MODES:
            raise ValueError(f"bn_mode must be one of {_BN_MODES}, got {self.bn_mode!r}")
        if not isinstance(self.first_order, bool) or not isinstance(self.augment, bool):
            raise ValueError("first_order and augment must be bool")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.clip is not None and (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, (int, float))
            or not math.isfinite(self.clip)
            or self.clip < 0
        ):
            raise ValueError(f"clip must be None or a finite float >= 0, got {self.clip!r}")


# --------------------------------------------------------------------------- model state
def model_state(model: nn.Module, inner_params: str = "all") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Detached views of the parameters the temporary model Θ' adapts, and of the constants.

    ``inner_params`` "all": every parameter with ``requires_grad``; frozen ones (e.g. conv weights
    after weight transfer) are left to the module, so :func:`torch.func.functional_call` uses them
    as constants. "head": only the trainable parameters under ``model.head``; the others are
    returned with the buffers, as detached constants.
    """
    if inner_params not in _INNER_PARAMS:
        raise ValueError(f"inner_params must be one of {_INNER_PARAMS}, got {inner_params!r}")
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    params = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if inner_params == "all" or n.startswith("head."):
            params[n] = p.detach()
        else:
            buffers[n] = p.detach()
    if not params:
        raise ValueError(f"the model has no trainable parameters for inner_params={inner_params!r}"
                         + (" (no trainable parameter under model.head)" if inner_params == "head" else ""))
    return params, buffers


@contextmanager
def _bn_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Put the model in eval mode except BatchNorm in ``bn_mode``; restore all flags on exit.

    The whole model goes to eval so stochastic layers (dropout) do not make the hypergradient
    noisy; only BatchNorm's behaviour is a setting.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


# --------------------------------------------------------------------------- hypergradient
def unrolled_outer_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    ex_x: Tensor,
    ex_y: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    settings: BilevelSettings,
) -> Tensor:
    """Outer loss L_CE(Θ'_K; real) after K inner SGD steps of Θ' on the exemplars.

    Shapes: ex_x (E, C, H, W), ex_y (E,) int64, real_x (B, C, H, W), real_y (B,) int64.
    ``params``/``buffers`` as returned by :func:`model_state`; they are not modified (in
    bn_mode "train" the running statistics are updated on clones).

    Second order (default): Θ'_{k+1} = Θ'_k − α ∇L_CE(Θ'_k; ex) with ``create_graph=True`` at
    every step, so d loss / d ex_x is the exact hypergradient through all K steps.

    First order (``settings.first_order``): truncated backpropagation through the last inner
    step only (1-step truncated BPTT, Shaban et al., AISTATS 2019). Steps 1..K−1 are run
    without a graph and Θ'_{K−1} is treated as a constant; only the last step keeps
    ``create_graph=True``, so the returned gradient is −α (∂²L_CE(Θ'_{K−1}; ex)/∂ex∂Θ)ᵀ ∇_Θ
    L_CE(Θ'_K; real). Dropping *all* second-order terms, as first-order MAML does, would make the
    exemplar gradient identically zero because Θ' is the only path from ex to the outer loss.
    Consequences: for K = 1 first and second order are identical; for K ≥ 2 they differ, and the
    graph (memory) no longer grows with K.
    """
    k = settings.inner_steps
    trainable = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    if settings.bn_mode == "train":
        buffers = {n: b.clone() for n, b in buffers.items()}  # BN writes running stats in place
    else:
        buffers = dict(buffers)
    with _bn_mode(model, settings.bn_mode):
        # Truncation: all but the last step are cut from the graph in first-order mode.
        trainable = _inner_steps(model, trainable, buffers, ex_x, ex_y, settings,
                                 lambda step: not settings.first_order or step == k - 1)
        logits = functional_call(model, (trainable, buffers), (real_x,))
        return F.cross_entropy(logits, real_y)


def _inner_steps(model, trainable, buffers, ex_x, ex_y, settings, keep_graph_at) -> dict[str, Tensor]:
    """Θ'_K: K SGD steps of Θ' on L_CE(Θ'; ex); step k keeps its graph iff ``keep_graph_at(k)``."""
    names = list(trainable)
    for step in range(settings.inner_steps):
        keep_graph = keep_graph_at(step)
        if not keep_graph:
            trainable = {n: p.detach().requires_grad_(True) for n, p in trainable.items()}
        logits = functional_call(model, (trainable, buffers), (ex_x,))
        inner = F.cross_entropy(logits, ex_y)
        grads = torch.autograd.grad(
            inner, [trainable[n] for n in names], create_graph=keep_graph, allow_unused=True
        )
        trainable = {
            n: p if g is None else p - settings.inner_lr * g
            for (n, p), g in zip(trainable.items(), grads)
        }
    return trainable


def heldout_loss(model: nn.Module, ex_x: Tensor, ex_y: Tensor, real_x: Tensor, real_y: Tensor,
                 settings: BilevelSettings, batch: int = 512, *, inner: bool = True) -> float:
    """L_CE of the temporary model Θ'_K (K inner steps on the exemplars, as in the outer loss) on
    real samples kept out of the outer objective: the number the optimisation should lower if it
    improves the exemplars rather than fitting its own validation batches. Mean over all of
    ``real_x`` (N, C, H, W), scored in chunks of ``batch``; the model is not modified.

    ``inner=False`` scores the model itself (no inner step, the exemplars unused): the reference
    that says whether the K inner steps improve the model on real data or damage it — when Θ'_K
    is far worse than Θ, lowering its loss repairs the inner step rather than distilling the data."""
    params, buffers = model_state(model, settings.inner_params)
    if settings.bn_mode == "train":
        buffers = {n: b.clone() for n, b in buffers.items()}
    with _bn_mode(model, settings.bn_mode):
        trainable = {n: p.detach() for n, p in params.items()}
        if inner:
            with torch.enable_grad():
                trainable = _inner_steps(model, {n: p.requires_grad_(True) for n, p in trainable.items()},
                                         buffers, ex_x.detach(), ex_y, settings, lambda step: False)
            trainable = {n: p.detach() for n, p in trainable.items()}
        total = 0.0
        with torch.no_grad():
            for i in range(0, real_x.shape[0], batch):
                logits = functional_call(model, (trainable, buffers), (real_x[i:i + batch],))
                total += float(F.cross_entropy(logits, real_y[i:i + batch], reduction="sum"))
    return total / real_x.shape[0]


def hypergradient(
    model: nn.Module,
    ex_x: Tensor,
    ex_y: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    settings: BilevelSettings,
    *,
    params: Mapping[str, Tensor] | None = None,
    buffers: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, float]:
    """(d outer loss / d ex_x, outer loss value); the gradient has ex_x's shape (E, C, H, W).

    ``params``/``buffers`` default to :func:`model_state` of ``model``.
    """
    if params is None or buffers is None:
        own_params, own_buffers = model_state(model, settings.inner_params)
        params = own_params if params is None else params
        buffers = own_buffers if buffers is None else buffers
    grad, loss = _hypergradient_tensors(model, params, buffers, ex_x, ex_y, real_x, real_y, settings)
    return grad, float(loss)


def _hypergradient_tensors(model, params, buffers, ex_x, ex_y, real_x, real_y, settings
                           ) -> tuple[Tensor, Tensor]:
    """(d outer loss / d ex_x, detached outer loss) as tensors: no host synchronisation."""
    ex = ex_x.detach().requires_grad_(True)
    loss = unrolled_outer_loss(model, params, buffers, ex, ex_y, real_x, real_y, settings)
    (grad,) = torch.autograd.grad(loss, ex)
    return grad, loss.detach()


class HypergradientReplay(GraphReplay):
    """:func:`hypergradient` for one outer loop, whose shapes never change: on CUDA the whole
    computation (K unrolled inner steps, the outer loss, the double backward) is captured once
    as a CUDA graph and replayed for every later outer iteration.

    Why: a hypergradient of a ResNet-32 is ~1,000 small kernels issued from Python through
    ``functional_call``; eagerly on a GPU its launching costs far more than its arithmetic (the
    speed table in docs/study.md gives one outer iteration in training steps). Same ops on the same inputs: only the launching changes.

    The first call runs eagerly (a warm-up on a side stream, as the capture recipe asks); the
    second captures; the rest replay. ``backend`` is :class:`~mnemonics_lib.steps.CudaGraphBackend`
    by default and injectable for tests; the counting and the fallback to eager calls when a
    capture fails come from :class:`~mnemonics_lib.steps.GraphReplay`. Returns ``(grad, loss)`` as device tensors;
    ``grad`` is overwritten by the next call, so use it before calling again.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 ex_y: Tensor, settings: BilevelSettings, backend=None):
        super().__init__(backend, prefix="hypergradient_")
        self.model, self.params, self.buffers = model, params, buffers
        self.ex_y, self.settings = ex_y, settings
        self._ex = self._bx = self._by = None
        self._out: tuple[Tensor, Tensor] | None = None

    def _compute(self, ex_x: Tensor, real_x: Tensor, real_y: Tensor) -> tuple[Tensor, Tensor]:
        return _hypergradient_tensors(self.model, self.params, self.buffers, ex_x, self.ex_y, real_x, real_y,
                                      self.settings)

    def _recorded(self) -> None:
        self._out = self._compute(self._ex, self._bx, self._by)

    def _eager(self, ex: Tensor, real_x: Tensor, real_y: Tensor) -> tuple[Tensor, Tensor]:
        self._count("eager")
        return self._compute(ex, real_x, real_y)

    def __call__(self, ex: Tensor, real_x: Tensor, real_y: Tensor) -> tuple[Tensor, Tensor]:
        if self._failed:
            return self._eager(ex, real_x, real_y)
        if self._graph is None:
            if self.stats["eager"] == 0:
                out: list[tuple[Tensor, Tensor]] = []
                self.backend.warm(lambda: out.append(self._eager(ex, real_x, real_y)))
                return out[0]
            self._ex, self._bx, self._by = ex.clone(), real_x.clone(), real_y.clone()
            if not self._capture(self._recorded, "the hypergradient"):
                return self._eager(ex, real_x, real_y)
        self._ex.copy_(ex)
        self._bx.copy_(real_x)
        self._by.copy_(real_y)
        self._graph.replay()
        self._count("replayed")
        return self._out


# --------------------------------------------------------------------------- outer loop
def _clamp_bounds(
    pixel_range: PixelRange | None, clip: float | None, like: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Per-channel (lo − clip, hi + clip) shaped (1, C, 1, ..., 1) to broadcast over ``like``."""
    if clip is None:
        return None
    if pixel_range is None:
        raise ValueError("settings.clip is set but no pixel_range=(lo, hi) was given")
    shape = (1, -1) + (1,) * (like.dim() - 2)
    lo, hi = (
        torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(shape)
        for v in pixel_range
    )
    return lo - clip, hi + clip


def _check_inputs(ex_x: Tensor, ex_y: Tensor, real_x: Tensor, real_y: Tensor) -> None:
    if ex_x.shape[0] != ex_y.shape[0] or real_x.shape[0] != real_y.shape[0]:
        raise ValueError("x and y must have the same number of rows")
    if ex_x.shape[1:] != real_x.shape[1:]:
        raise ValueError(f"exemplar shape {tuple(ex_x.shape[1:])} != real {tuple(real_x.shape[1:])}")
    if ex_x.shape[0] == 0 or real_x.shape[0] == 0:
        raise ValueError("need at least one exemplar and one real sample")
    if not ex_x.is_floating_point():
        raise ValueError("exemplars must be a float tensor in the normalised input space")


def _replay_for(model, params, buffers, ex_y, settings, device, backend) -> "HypergradientReplay | None":
    """The graphed executor where it applies (CUDA with graphs on, or a test's backend)."""
    if backend is None and not cuda_graphs_enabled(device):
        return None
    return HypergradientReplay(model, params, buffers, ex_y, settings, backend)


def optimise_exemplars(
    model: nn.Module,
    ex_x: Tensor,
    ex_y: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    settings: BilevelSettings,
    *,
    generator: torch.Generator,
    lr: float | None = None,
    augment: Augment | None = None,
    pixel_range: PixelRange | None = None,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    graph_backend=None,
) -> Tensor:
    """Run M outer iterations of the local bilevel program; return new exemplars (E, C, H, W).

    Each iteration draws ``settings.real_batch`` real samples without replacement (all of them
    if fewer) with ``generator`` (CPU or on the data's device), optionally augments them with
    ``augment(x)`` (required when ``settings.augment``), computes the hypergradient and steps
    the exemplars. ``pixel_range`` = (lo, hi), floats or per-channel tensors, used iff
    ``settings.clip`` is set.
    ``lr`` defaults to β1 = ``settings.outer_lr``. ``callback(iteration, outer_loss)`` is called
    after every hypergradient (the loss is the one *before* that iteration's step).
    The input tensor and the model are not modified. On CUDA the hypergradients are replayed
    from a CUDA graph (:class:`HypergradientReplay`; ``MNEMONICS_CUDA_GRAPHS=0`` turns it off);
    ``graph_backend`` forces that path with another backend (tests).
    """
    _check_inputs(ex_x, ex_y, real_x, real_y)
    if settings.augment and augment is None:
        raise ValueError("settings.augment is True but no augment callable was given")
    step_lr = settings.outer_lr if lr is None else lr
    if not math.isfinite(step_lr) or step_lr <= 0:
        raise ValueError(f"lr must be finite and > 0, got {step_lr!r}")
    bounds = _clamp_bounds(pixel_range, settings.clip, ex_x)
    params, buffers = model_state(model, settings.inner_params)
    ex = ex_x.detach().clone()
    replay = _replay_for(model, params, buffers, ex_y, settings, ex.device, graph_backend)
    n_real = real_x.shape[0]
    scale = float(ex.shape[0]) if settings.per_exemplar_step else 1.0
    velocity = torch.zeros_like(ex) if settings.momentum else None
    iters = range(settings.outer_iters)
    if progress:
        from tqdm.auto import tqdm  # imported lazily: only needed for the bar

        iters = tqdm(iters, desc="mnemonics", leave=False)
    for it in iters:
        idx = torch.randperm(n_real, generator=generator, device=generator.device)
        idx = idx[: settings.real_batch].to(real_x.device)
        batch_x, batch_y = real_x[idx], real_y[idx]
        if settings.augment:
            batch_x = augment(batch_x)
        if replay is None:
            grad, loss = hypergradient(
                model, ex, ex_y, batch_x, batch_y, settings, params=params, buffers=buffers
            )
        else:  # the loss is read back (a host sync) only when someone looks at it
            grad, loss_t = replay(ex, batch_x, batch_y)
            loss = float(loss_t) if (callback is not None or progress) else float("nan")
        # Gradient descent E ← E − β1 ∇_E L, the paper's update (Sec. 3), optionally with the
        # heavy-ball momentum of the authors' SGD. Not Adam: it would rescale every pixel's step by
        # its own gradient history, so β1 would no longer be a step size in pixel units. The
        # velocity is local, so this loop stays a pure function of its inputs.
        g = grad * scale if scale != 1.0 else grad
        if velocity is not None:
            velocity = settings.momentum * velocity + g
            g = velocity
        ex = ex - step_lr * g
        if bounds is not None:
            ex = torch.maximum(torch.minimum(ex, bounds[1]), bounds[0])
        if callback is not None:
            callback(it, loss)
        if progress:
            iters.set_postfix(loss=f"{loss:.4f}")
    log.debug("optimised %d exemplars for %d iterations", ex.shape[0], settings.outer_iters)
    return ex.detach()


def _split_halves(y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Indices (A, B, singletons): each class with >= 2 exemplars is split at random in halves."""
    a, b, single = [], [], []
    for c in torch.unique(y, sorted=True).tolist():
        idx = torch.nonzero(y.cpu() == c).flatten()
        if idx.numel() < 2:
            single.append(idx)
            continue
        idx = idx[torch.randperm(idx.numel(), generator=generator, device=generator.device).cpu()]
        half = idx.numel() // 2
        a.append(idx[:half])
        b.append(idx[half:])
    empty = torch.empty(0, dtype=torch.long)
    return tuple(torch.cat(p) if p else empty for p in (a, b, single))  # type: ignore[return-value]


def adjust_old_exemplars(
    model: nn.Module,
    old_x: Tensor,
    old_y: Tensor,
    settings: BilevelSettings,
    *,
    generator: torch.Generator,
    augment: Augment | None = None,
    pixel_range: PixelRange | None = None,
    progress: bool = False,
) -> Tensor:
    """Adjust old-class exemplars whose real data is gone (paper Sec. 3, lr β2 = settings.old_lr).

    Each class's exemplars are split at random (``generator``) into halves A and B. A is
    optimised with all classes' B halves as validation data, then B with the *updated* A halves.
    Returns a new tensor (N, C, H, W) in the input's order; ``pixel_range`` as in
    :func:`optimise_exemplars`. The validation halves are augmented only when ``augment`` is
    given and ``settings.augment`` is set; without a callable they are used as they are.

    A class with a single exemplar is left unchanged: there is no second exemplar of that class
    to validate it against, and validating it against itself would make the outer loss ask the
    inner loop to fit exactly the point it is trained on, which carries no information about the
    lost real distribution. It still serves as (fixed) validation data for the other classes.
    """
    if augment is None:
        settings = replace(settings, augment=False)
    a, b, single = _split_halves(old_y, generator)
    out = old_x.detach().clone()
    if a.numel() == 0:
        return out
    dev = old_x.device
    a, b, single = a.to(dev), b.to(dev), single.to(dev)
    kwargs = dict(
        generator=generator,
        lr=settings.old_lr,
        augment=augment,
        pixel_range=pixel_range,
        progress=progress,
    )
    # Half A validated on B (plus singletons), then B validated on the updated A.
    val_b = torch.cat([b, single])
    out[a] = optimise_exemplars(
        model, out[a], old_y[a], out[val_b], old_y[val_b], settings, **kwargs
    )
    val_a = torch.cat([a, single])
    out[b] = optimise_exemplars(
        model, out[b], old_y[b], out[val_a], old_y[val_a], settings, **kwargs
    )
    return out
