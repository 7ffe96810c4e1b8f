"""How one SGD training step is executed: eagerly, or replayed from a captured CUDA graph.

Why graphs: on a GPU, a ResNet-32 step at batch 128 is bound by the host launching some 400
small kernels one by one, not by the GPU's work (the speed table in docs/study.md). A CUDA graph records the whole step (forward, loss, backward,
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

On a CPU there are no launches to save; the time goes into the kernels themselves, and the
many small memory-bound ones (batch norm, ReLU, residual adds, their gradients) between the
convolutions. There :class:`CompiledStep` runs every full batch through backbones compiled by
``torch.compile`` (inductor fuses those kernels; bench.py measures the gain), and the last, smaller batch of an epoch eagerly, so no second, dynamic-shape graph
is compiled for one batch per epoch. Only the backbones are compiled, and only inside
``trainer.train_epochs`` (:func:`compiled_backbones`): the growing heads stay eager, and the
bilevel exemplar program, which differentiates through a training step (double backward, which
compiled graphs do not support), never sees a compiled module.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

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


def cpu_compile_requested() -> bool:
    """``MNEMONICS_CPU_COMPILE`` is not ``0``: compile on CPU where the probe finds it sound."""
    return os.environ.get("MNEMONICS_CPU_COMPILE", "1") != "0"


def compile_enabled(device: torch.device) -> bool:
    """Whether the trainer compiles its backbones on ``device``. CPU: on by default where
    compiled training is sound on this host at the current thread count
    (:func:`compile_probe.cpu_compile_verdict`; it is not everywhere), ``MNEMONICS_CPU_COMPILE=0``
    turns it off (the test suite does, to keep its many tiny runs free of compilation). CUDA: off by default, ``MNEMONICS_CUDA_COMPILE=1`` compiles the backbones
    inside the captured graphs (fused kernels; not yet measured on a GPU, so not the default).
    Not part of the config hash: the same arithmetic, fused (float rounding may differ, as
    across devices); ``env.json`` records it."""
    if device.type == "cpu":
        if not cpu_compile_requested():
            return False
        from .compile_probe import cpu_compile_verdict

        return cpu_compile_verdict().sound
    if device.type == "cuda":
        return os.environ.get("MNEMONICS_CUDA_COMPILE", "0") == "1"
    return False


def run_eagerly(enabled: bool = True):
    """Run compiled modules eagerly inside the block when ``enabled`` (a batch of another size:
    one batch per epoch does not deserve a second, dynamic-shape graph); a no-op otherwise."""
    return torch.compiler.set_stance("force_eager") if enabled else nullcontext()


@contextmanager
def compiled_backbones(nets: Sequence[torch.nn.Module | None], enabled: bool,
                       backend: str | Callable = "inductor") -> Iterator[bool]:
    """Compile the ``backbone`` of each net in place for the duration of the block (parameters,
    buffers and state_dict keys unchanged), and make them eager again on exit, also on error:
    a compiled module that is deep-copied (the frozen old model) would keep calling the original.
    Compiled code is cached by torch per process and on disk, so later phases and runs reuse it."""
    nets = [n for n in nets if n is not None]
    if not enabled:
        yield False
        return
    for net in nets:
        net.backbone.compile(backend=backend)
    try:
        yield True
    finally:
        for net in nets:
            net.backbone._compiled_call_impl = None  # Module.compile() has no public inverse


def bf16_autocast(device_type: str, amp: bool, cache: bool = True):
    """bf16 autocast when ``amp`` (CPU or CUDA); ``cache=False`` inside a graph capture."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache)


def eager_step(opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str,
               x: torch.Tensor, y: torch.Tensor, set_to_none: bool = True) -> None:
    """forward + loss, backward, optimiser step: one Python-driven kernel launch at a time."""
    with bf16_autocast(device_type, amp):
        loss = loss_fn(x, y)
    opt.zero_grad(set_to_none=set_to_none)
    loss.backward()
    opt.step()


class EagerStep:
    """:func:`eager_step` with its optimiser, loss and precision bound."""

    graphed = False

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str):
        self.opt, self.loss_fn, self.amp, self.device_type = opt, loss_fn, amp, device_type

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        eager_step(self.opt, self.loss_fn, self.amp, self.device_type, x, y)


class CompiledStep(EagerStep):
    """The eager step, run inside :func:`compiled_backbones`: full batches go through the compiled
    code, a smaller batch runs eagerly (:func:`run_eagerly`). If the
    compilation fails (no C++ compiler, an unsupported op), the step is retried eagerly and every
    later step stays eager: slower, never wrong. ``stats`` counts ``compiled`` and ``eager`` steps
    (and :data:`TOTALS` as ``cpu_compiled``, ``cpu_eager``)."""

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str,
                 batch_size: int):
        super().__init__(opt, loss_fn, amp, device_type)
        self.batch_size = batch_size
        self._failed = False
        self.stats = {"compiled": 0, "eager": 0}

    def _count(self, what: str) -> None:
        self.stats[what] += 1
        TOTALS["cpu_" + what] += 1

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with run_eagerly():
            super().__call__(x, y)
        self._count("eager")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._failed or x.shape[0] != self.batch_size:
            self._eager(x, y)
            return
        try:
            super().__call__(x, y)
        except Exception as e:  # noqa: BLE001 - compilation errors come in many types; a real
            # error in the loss is raised again by the eager retry below
            if self.stats["compiled"]:
                raise  # compiled steps already ran: this is not a compilation failure
            log.warning("compiling the training step failed (%s: %s); eager from here",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self._failed = True
            TOTALS["cpu_compile_failed"] += 1
            self._eager(x, y)
            return
        self._count("compiled")


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


class GraphReplay:
    """What every captured-and-replayed computation shares: the backend, ``stats`` (``eager``,
    ``replayed``, ``captures``, also added to :data:`TOTALS` under ``prefix``), and a capture that
    falls back to eager execution for the rest of the object's life when it fails (an op a graph
    cannot hold): slower, never wrong."""

    def __init__(self, backend, prefix: str = ""):
        self.backend = backend or CudaGraphBackend()
        self._prefix = prefix
        self._graph = None
        self._failed = False
        self.stats = {"eager": 0, "replayed": 0, "captures": 0}

    def _count(self, what: str) -> None:
        self.stats[what] += 1
        TOTALS[self._prefix + what] += 1

    def _capture(self, fn: Callable[[], None], what: str) -> bool:
        """Capture ``fn`` as the graph to replay; False (and eager from now on) if that fails."""
        try:
            self._graph = self.backend.capture(fn)
        except RuntimeError as e:  # e.g. an op that synchronises with the host
            log.warning("CUDA graph capture of %s failed (%s); eager from here", what, e)
            self._failed, self._graph = True, None
            TOTALS[self._prefix + "failed"] += 1
            return False
        self._count("captures")
        return True


class GraphStep(GraphReplay):
    """A training step captured once per learning rate and replayed for every full batch.

    ``stats`` shows tests and benchmarks that the graph was used.
    """

    graphed = True

    def __init__(self, opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device_type: str,
                 batch_size: int, warmup: int = 3, backend=None, compiled: bool = False):
        super().__init__(backend)
        self.opt, self.loss_fn, self.amp, self.device_type = opt, loss_fn, amp, device_type
        self.batch_size, self.warmup = batch_size, warmup
        # inside compiled_backbones: the warm-up compiles, the capture records the compiled
        # kernels, and the smaller last batch runs eagerly (no dynamic-shape graph)
        self.compiled = compiled
        self._lrs: tuple[float, ...] | None = None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def _current_lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.opt.param_groups)

    def _eager(self, x: torch.Tensor, y: torch.Tensor, keep_grads: bool) -> None:
        # keep_grads: after a capture the gradients live in the graph's memory pool; zeroing them
        # in place (instead of dropping them) keeps every tensor the graph recorded where it is
        eager_step(self.opt, self.loss_fn, self.amp, self.device_type, x, y, set_to_none=not keep_grads)
        self._count("eager")

    def _recorded_step(self) -> None:
        with bf16_autocast(self.device_type, self.amp, cache=False):
            loss = self.loss_fn(self._x, self._y)
        loss.backward()
        self.opt.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._failed or x.shape[0] != self.batch_size:
            with run_eagerly(self.compiled and x.shape[0] != self.batch_size):
                self._eager(x, y, keep_grads=self._graph is not None)
            return
        if self._graph is None or self._lrs != self._current_lrs():
            if self.stats["eager"] < self.warmup and self._graph is None:
                self.backend.warm(lambda: self._eager(x, y, keep_grads=False))
                return
            if self._x is None:
                self._x, self._y = torch.empty_like(x), torch.empty_like(y)
            self._graph = None  # the previous learning rate's graph and its memory pool go
            self.opt.zero_grad(set_to_none=True)  # the graph allocates (and then owns) the gradients
            if not self._capture(self._recorded_step, "the training step"):
                self._eager(x, y, keep_grads=False)
                return
            self._lrs = self._current_lrs()
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph.replay()
        self._count("replayed")


def make_step(opt: torch.optim.Optimizer, loss_fn: LossFn, amp: bool, device: torch.device,
              batch_size: int, compiled: bool = False, graphs: bool = True) -> EagerStep | GraphStep:
    """The step executor the trainer uses on ``device``: graphed on CUDA unless switched off;
    ``compiled`` (inside :func:`compiled_backbones`) on CPU; eager otherwise. On CUDA ``compiled``
    puts the compiled backbones inside the graph. ``graphs=False``: never graphed (data-parallel
    steps: DDP's gradient hooks and NCCL collectives inside a captured graph need a capture
    recipe of their own, not written or measured here; :mod:`mnemonics_lib.distributed`)."""
    if graphs and cuda_graphs_enabled(device):
        return GraphStep(opt, loss_fn, amp, device.type, batch_size, compiled=compiled)
    if compiled:
        return CompiledStep(opt, loss_fn, amp, device.type, batch_size)
    return EagerStep(opt, loss_fn, amp, device.type)
