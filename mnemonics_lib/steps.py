"""How one SGD training step is executed: eagerly, or replayed from a captured CUDA graph.

Why graphs: on a GPU, a ResNet-32 step at batch 128 is bound by the host launching some 400
small kernels one by one (16 ms per step on an H200, 2026-11-26 benchmark, against a few ms
of GPU work), not by the GPU. A CUDA graph records the whole step (forward, loss, backward,
optimiser update) once and replays it with a single launch. The kernels, their inputs and their
order are the same as in eager execution; only the launching changes.

What a captured step needs, and how :class:`GraphStep` provides it:

* static shapes and addresses: every full batch is copied into the same input buffers; the last,
  smaller batch of an epoch runs eagerly (no sample is dropped, the batches stay those of the
  eager trainer);
* no host synchronisation inside the step: the methods' losses use masks, never
  data-dependent indexing or ``if tensor.any()`` (see ``methods/lucir.py``);
* optimiser state that exists before capture: the first ``warmup`` steps run eagerly (on a side
  stream on CUDA, as the PyTorch whole-network capture recipe asks), creating the momentum
  buffers and letting cuDNN choose its kernels;
* learning rates are baked into the recorded update: when the scheduler changes them (the step
  decay), the step is captured again;
* autocast's weight-cast cache cannot live across graph replays, so it is disabled inside capture.

The graph backend is injectable so that the capture/replay bookkeeping is tested on a CPU
(tests/test_steps.py) with a recorder that replays the recorded step function. The same backend
and switch serve the mnemonics hypergradients (``bilevel.HypergradientReplay``).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Callable

import torch

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Process-wide counts of what every GraphStep did (eager, replayed, captures, failed): the
# benchmark and the gpu tests read them to show that the graphs were actually used.
TOTALS: Counter = Counter()


def cuda_graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs are the trainer's default on CUDA; ``MNEMONICS_CUDA_GRAPHS=0`` turns them off
    (e.g. to time or debug the eager path). Not part of the config hash: same numerics."""
    return device.type == "cuda" and os.environ.get("MNEMONICS_CUDA_GRAPHS", "1") != "0"


def _autocast(device_type: str, amp: bool, cache: bool = True):
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache)


class EagerStep:
    """forward + loss, backward, optimiser step: one Python-driven kernel launch at a time."""

    graphed = False

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str):
        self.opt, self.loss_fn, self.amp, self.device_type = opt, loss_fn, amp, device_type

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(self.device_type, self.amp):
            loss = self.loss_fn(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class CudaGraphBackend:
    """The real thing: ``torch.cuda.CUDAGraph`` capture and replay."""

    def warm(self, fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph


class GraphStep:
    """A training step captured once per learning rate and replayed for every full batch.

    ``stats`` counts what happened (``eager``, ``replayed``, ``captures``) so that tests and
    benchmarks can see that the graph was used. A capture that fails (an op a graph cannot hold)
    is logged and the step falls back to eager execution for the rest of its life: slower, never
    wrong.
    """

    graphed = True

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str,
                 batch_size: int, warmup: int = 3, backend=None):
        self.opt, self.loss_fn, self.amp, self.device_type = opt, loss_fn, amp, device_type
        self.batch_size, self.warmup = batch_size, warmup
        self.backend = backend or CudaGraphBackend()
        self._graph = None
        self._lrs: tuple[float, ...] | None = None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._failed = False
        self.stats = {"eager": 0, "replayed": 0, "captures": 0}

    def _count(self, what: str) -> None:
        self.stats[what] += 1
        TOTALS[what] += 1

    def _current_lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.opt.param_groups)

    def _eager(self, x: torch.Tensor, y: torch.Tensor, keep_grads: bool) -> None:
        # keep_grads: after a capture the gradients live in the graph's memory pool; zeroing them
        # in place (instead of dropping them) keeps every tensor the graph recorded where it is
        with _autocast(self.device_type, self.amp):
            loss = self.loss_fn(x, y)
        self.opt.zero_grad(set_to_none=not keep_grads)
        loss.backward()
        self.opt.step()
        self._count("eager")

    def _recorded_step(self) -> None:
        with _autocast(self.device_type, self.amp, cache=False):
            loss = self.loss_fn(self._x, self._y)
        loss.backward()
        self.opt.step()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._x is None:
            self._x, self._y = torch.empty_like(x), torch.empty_like(y)
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph = None  # the previous learning rate's graph and its memory pool go
        self.opt.zero_grad(set_to_none=True)  # the graph allocates (and then owns) the gradients
        self._graph = self.backend.capture(self._recorded_step)
        self._lrs = self._current_lrs()
        self._count("captures")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._failed or x.shape[0] != self.batch_size:
            self._eager(x, y, keep_grads=self._graph is not None)
            return
        if self._graph is None or self._lrs != self._current_lrs():
            if self.stats["eager"] < self.warmup and self._graph is None:
                self.backend.warm(lambda: self._eager(x, y, keep_grads=False))
                return
            try:
                self._capture(x, y)
            except RuntimeError as e:  # e.g. an op that synchronises with the host
                log.warning("CUDA graph capture failed (%s); training this phase eagerly", e)
                self._failed, self._graph = True, None
                TOTALS["failed"] += 1
                self._eager(x, y, keep_grads=False)
                return
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph.replay()
        self._count("replayed")


def make_step(opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device: torch.device,
              batch_size: int) -> EagerStep | GraphStep:
    """The step executor the trainer uses on ``device``: graphed on CUDA unless switched off."""
    if cuda_graphs_enabled(device):
        return GraphStep(opt, loss_fn, amp, device.type, batch_size)
    return EagerStep(opt, loss_fn, amp, device.type)
