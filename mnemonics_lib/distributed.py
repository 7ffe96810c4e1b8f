"""Data-parallel training over several processes (``torch.distributed``, launched by torchrun):
the same computation as one process, its global batches split across the ranks.

Launch (one process per GPU; docs/distributed.md)::

    torchrun --standalone --nproc_per_node 8 scripts/train.py --profile paper \
        --set dataset=imagenet_subset --only table1 --match lucir

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``): ``nccl`` on CUDA (device ``cuda:LOCAL_RANK``), ``gloo`` on a CPU.
Without it (or with one process) nothing here does anything and the trainer runs exactly as before.

What is sharded, and how (so that a W-process run computes what one process computes):

* **Batches.** Every rank draws the epoch's permutation and the augmentation parameters of every
  global batch from the same seeded generator, so its random stream is the single-process one;
  it then augments only its own contiguous slice of each global batch (:func:`shard_bounds`:
  sizes differ by at most one, rank order, concatenated they are the global batch). An uneven
  last batch is split the same way, none is dropped or padded; a rank may get an empty slice
  when the batch has fewer samples than there are ranks.
* **Losses.** A method's loss is a mean over the batch it is given. The trainer weights a rank's
  loss by ``W * n_rank / n_global`` (:class:`DataParallel`), so DDP's average of the ranks'
  gradients is the gradient of the global batch's mean, also for an uneven last batch (weight 1
  for an even split: the shard loss itself). A term normalised by a data-dependent count (LUCIR's
  margin ranking, by the batch's old-class samples) reads the global count (:func:`batch_ratio`).
* **BatchNorm** runs synchronised while the model trains (``torch.nn.SyncBatchNorm`` on CUDA;
  :class:`GlobalBatchNorm2d`, the same arithmetic over gloo, on a CPU): its statistics and running
  averages are the global batch's, as in one process. Outside training the model's own
  BatchNorm layers (the same parameters and buffers) are back in place: no collective there.
* **DDP** wraps a module whose forward is the method's loss (:class:`DataParallel`), so every
  method's extra passes through the model (LUCIR's features and cosine head, the frozen old
  model's distillation targets on the rank's slice) are inside DDP's forward. The old model is
  a frozen copy, never wrapped. The DDP constructor broadcasts rank 0's parameters and buffers,
  so every training call starts from identical weights. CUDA graphs are off under DDP (the
  step runs eagerly; see :func:`mnemonics_lib.steps.make_step`).

What every rank computes in full, identically (same inputs, same seeds): the method's hooks
outside the training loop (BiC's validation split and bias stage, LUCIR's imprinting), the
exemplar stage (random, herding, mnemonics' bilevel program, authors_code) and the evaluation.
After the exemplar stage rank 0's model state, exemplar memory, method state and generator
state are broadcast (:func:`sync_from_main`), so the ranks stay bit-identical even where GPU
kernels are not deterministic across devices. Rank 0 alone writes phase checkpoints, the shared
phase-0 cache and the results; it decides (and broadcasts) whether to resume and from which
checkpoint, so every rank restores the same phase (a shared filesystem is assumed, as for
``results/``).
"""
from __future__ import annotations

import datetime
import inspect
import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the process group
def active() -> bool:
    """True inside an initialised process group of two or more ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or Slurm's equivalent environment) started this process as one of many."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(timeout_min: float = 120.0, cpu: bool = False) -> torch.device:
    """Join torchrun's process group and return this rank's device: ``cuda:LOCAL_RANK`` (backend
    nccl) when CUDA is available, else the CPU (gloo). One process (no torchrun): no group, the
    default device. ``timeout_min``: how long a rank waits at a collective (the exemplar stage
    and evaluation run on every rank, so waits are short; keep it above one phase's longest
    stage anyway). ``cpu``: gloo on the CPU even where CUDA is available (tests)."""
    cuda = torch.cuda.is_available() and not cpu
    if not launched():
        return torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min), **kw)
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, backend)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


# ------------------------------------------------------------------ the shard rule
def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """This rank's contiguous slice ``[lo, hi)`` of a global batch of ``n`` samples: sizes
    ``n // world`` plus one for the first ``n % world`` ranks (``torch.tensor_split``'s rule),
    so the slices are disjoint, cover the batch and, in rank order, concatenate to it."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def global_batch_sizes(n: int, batch_size: int) -> list[int]:
    """The sizes of one epoch's global batches over ``n`` samples (the last may be smaller)."""
    return [min(batch_size, n - s) for s in range(0, n, batch_size)]


# ------------------------------------------------------------------ broadcasts from rank 0
def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; keep it small); ``obj`` itself in one process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_tensors_(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor in place with rank 0's (same shapes on every rank)."""
    if not active():
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def sync_from_main(model: nn.Module, memory, state: dict[str, Any], generator: torch.Generator,
                   device: torch.device) -> None:
    """Make every rank's model (parameters and buffers), exemplar memory, method state (the
    checkpointed keys) and generator rank 0's. They are computed identically on every rank;
    this makes them bit-identical also where kernels differ across devices."""
    if not active():
        return
    broadcast_tensors_(list(model.state_dict().values()))
    shapes = broadcast_object({c: tuple(v.shape) for c, v in memory.store.items()})
    if shapes != {c: tuple(v.shape) for c, v in memory.store.items()}:
        raise RuntimeError(f"rank {rank()}: exemplar memory {memory.counts()} differs in shape from rank 0's")
    broadcast_tensors_([memory.store[c] for c in sorted(memory.store)])
    keep = {k: v for k, v in state.items() if not k.startswith("_")}
    state.update(_to(broadcast_object(_to(keep, "cpu")), device))
    generator.set_state(broadcast_object(generator.get_state()))


def _to(obj: Any, device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


# ------------------------------------------------------------------ synchronised BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of the ranks' output
    gradients (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across the process
    group, for any device and backend (``torch.nn.SyncBatchNorm`` runs on GPUs only): two
    differentiable all-reduces (the sum, then the centred sum of squares, as a two-pass
    variance), the running averages updated with the global unbiased variance as BatchNorm
    does. Its backward all-reduces the gradients of the statistics (:class:`_AllReduceSum`),
    which with DDP's gradient averaging is the global batch's gradient. Eval mode: plain
    BatchNorm on the running statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.modules.batchnorm._BatchNorm.forward(self, x)
        # one process: the same arithmetic (tests compare a run under DDP with it)
        all_reduce = _AllReduceSum.apply if active() else (lambda t: t)
        c = x.shape[1]
        count = torch.tensor([float(x.numel() // c if c else 0)], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n
        out = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return out


def _synced_twin(bn: nn.modules.batchnorm._BatchNorm, device: torch.device) -> nn.Module:
    """A synchronised BatchNorm sharing ``bn``'s parameters and buffers (the same tensors)."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm2d
    twin = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
    for name, p in bn.named_parameters(recurse=False):
        twin._parameters[name] = p
    for name, b in bn.named_buffers(recurse=False):
        twin._buffers[name] = b
    twin.train(bn.training)
    return twin


@contextmanager
def synced_batchnorm(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Inside the block every BatchNorm of ``model`` is a synchronised twin over the same
    parameters and buffers; on exit the model's own layers are back, in the twins' train/eval
    mode. A no-op in one process."""
    if not active():
        yield
        return
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                twin = _synced_twin(child, device)
                parent._modules[name] = twin
                swaps.append((parent, name, child, twin))
    try:
        yield
    finally:
        for parent, name, child, twin in swaps:
            parent._modules[name] = child
            child.train(twin.training)


# ------------------------------------------------------------------ the data-parallel loss
class _LossModule(nn.Module):
    """A module whose forward is the weighted shard loss, so DDP sees every pass of the loss."""

    def __init__(self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weight: Callable[[], float]):
        super().__init__()
        self.model = model  # registered: DDP syncs and averages its trainable parameters
        self._loss, self._weight = loss, weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self._weight()
        loss = self._loss(x, y)
        # an empty shard (a last batch smaller than the world): its means are NaN; it still runs
        # the forward (SyncBatchNorm's and DDP's collectives) and contributes exactly zero
        return loss * w if x.shape[0] else torch.nan_to_num(loss, 0.0, 0.0, 0.0) * 0.0


class DataParallel:
    """One training call's DDP: the shard rule, the loss weight and the wrapped loss.

    ``shard``: ``(rank, world)`` for :func:`mnemonics_lib.pipeline.augmented_batches`.
    Call :meth:`next_batch` with the global batch's size before each step; :meth:`loss` is the
    step's loss function."""

    def __init__(self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 state: dict[str, Any], device: torch.device):
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.rank, self.world = rank(), world()
        self.shard = (self.rank, self.world)
        self.state = state
        self._n_global = 0
        # no buffer broadcast at each forward (synchronised BatchNorm keeps them identical); the
        # constructor still broadcasts rank 0's parameters and buffers once
        params = inspect.signature(DDP).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
        self.module = DDP(_LossModule(model, loss, self.weight), device_ids=ids, **no_sync)

    def next_batch(self, n_global: int) -> None:
        self._n_global = n_global
        lo, hi = shard_bounds(n_global, self.rank, self.world)
        self.state["_shard"] = (hi - lo, n_global)  # read by batch_ratio

    def weight(self) -> float:
        lo, hi = shard_bounds(self._n_global, self.rank, self.world)
        return self.world * (hi - lo) / self._n_global

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.module(x, y)

    def local_batch(self, batch_size: int) -> int:
        """This rank's share of a full batch (the compiled step's static shape)."""
        lo, hi = shard_bounds(batch_size, self.rank, self.world)
        return hi - lo

    def close(self) -> None:
        self.state.pop("_shard", None)


@contextmanager
def data_parallel(model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  state: dict[str, Any], device: torch.device) -> Iterator[DataParallel | None]:
    """DDP and synchronised BatchNorm for one training call; ``None`` in one process."""
    if not active():
        yield None
        return
    with synced_batchnorm(model, device):
        par = DataParallel(model, loss, state, device)
        try:
            yield par
        finally:
            par.close()


def batch_ratio(state: dict[str, Any], numer: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``numer / denom.clamp_min(1)`` for two sums over the batch (a masked mean). In one process
    exactly that; under DDP the global batch's ratio (``denom`` all-reduced) scaled into the
    trainer's convention (the shard loss is weighted by ``W n_rank / n_global`` and DDP averages
    over W, so this returns ``numer / denom_global * n_global / n_rank``)."""
    shard = state.get("_shard")
    if shard is None:
        return numer / denom.clamp_min(1.0)
    n_local, n_global = shard
    total = denom.detach().clone()
    dist.all_reduce(total)
    return numer / total.clamp_min(1.0) * (n_global / max(n_local, 1))
