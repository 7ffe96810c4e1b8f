"""Speed benchmark: every stage of the study against the way the field's codes do it.

Each comparison runs in one process and is *interleaved*: ours and the reference alternate over
several repeats (the order rotates every repeat) and the median is reported, so drift from other
processes, clocks or caches hits both sides alike. Stages:

* training images/s, ResNet-32, batch 128: resident uint8 -> :class:`Normaliser` -> crop/flip
  prepared 32 batches at a time (:func:`pipeline.augmented_batches`, as the trainer) -> step (channels_last + bf16 autocast on CUDA), against a PIL
  ``Dataset`` + ``transforms.Compose`` + worker ``DataLoader`` feeding an fp32 step;
* evaluation images/s (inference_mode, bf16 on CUDA vs DataLoader + PIL, fp32);
* herding (vectorised vs the per-sample loop) and NME class means (batched vs per class);
* one mnemonics outer iteration (:mod:`bilevel`, K = 1 and 3) relative to one fp32 training step;
* achieved GFLOP/s of a training step (``FlopCounterMode``) against a measured matmul peak.

:func:`paper_projection` times epochs of phase 0 and of an incremental phase with the paper's
schedule through the real trainer code and projects a full 160-epoch run.
Nothing here asserts speed; the numbers go to a JSON record (``scripts/bench.py``).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from mnemonics_lib.backbones import build_net
from mnemonics_lib.datasets import ArrayData, load_dataset, make_synthetic
from mnemonics_lib.evaluation import batched, class_means
from mnemonics_lib.memory import herding_selection
from mnemonics_lib.pipeline import (DeviceImages, Normaliser, augment, augmented_batches, make_generator,
                       preferred_memory_format, tune_backends)
from mnemonics_lib.steps import TOTALS as GRAPH_TOTALS
from mnemonics_lib.steps import EagerStep, GraphStep, compile_enabled, cuda_graphs_enabled, eager_step, make_step

log = logging.getLogger(__name__)

SCHEMA = "mnemonics-bench/1"
# Speed targets of the design, recorded beside the measurements for the reader; never asserted.
TARGETS = {"train_ratio_cpu": 1.3, "herding_speedup": 20.0, "train_step_fraction_of_peak": 0.5}


@dataclass(frozen=True)
class BenchSizes:
    """Sizes of one benchmark run (all recorded in the JSON)."""

    n_classes: int = 100
    per_class_train: int = 100
    per_class_test: int = 10
    depth: int = 32
    width: int = 16
    batch: int = 128
    train_steps: int = 40  # timed steps per repeat and side
    warmup_steps: int = 10  # untimed steps first (worker start-up, allocator, cuDNN)
    repeats: int = 5
    eval_images: int = 10000
    eval_batch: int = 512
    herding_n: int = 500
    herding_d: int = 64
    herding_m: int = 20
    means_classes: int = 100  # NME class means over means_classes x means_per_class exemplars
    means_per_class: int = 20
    mn_classes: int = 10  # mnemonics: mn_classes x mn_per_class exemplars
    mn_per_class: int = 20
    mn_real_batch: int = 128
    mn_inner_steps: tuple[int, ...] = (1, 3)
    mn_outer_iters: int = 5  # outer iterations per timing
    mn_steps: int = 10  # training steps per timing (the unit the outer iteration is compared to)
    mn_repeats: int = 5
    matmul_n: int = 8192
    matmul_reps: int = 10
    workers: int = 8  # reference DataLoader workers


# 2 shared CPU cores: a ResNet-32 step of batch 128 takes seconds there, so one step per timing
# and one repeat of the (tens of seconds) mnemonics iterations keep the run within ~4 minutes.
CPU_SIZES = BenchSizes(train_steps=1, warmup_steps=1, repeats=4, eval_images=256, eval_batch=256,
                       means_classes=5, means_per_class=10, mn_outer_iters=1, mn_steps=1, mn_repeats=1,
                       matmul_n=2048, matmul_reps=2, workers=2)
QUICK_SIZES = BenchSizes(n_classes=10, per_class_train=40, per_class_test=4, depth=8, width=8, batch=32,
                         train_steps=2, warmup_steps=1, repeats=2, eval_images=128, eval_batch=64,
                         herding_n=200, herding_d=32, herding_m=10, means_classes=5, means_per_class=10,
                         mn_classes=5, mn_per_class=4, mn_real_batch=32, mn_outer_iters=1, mn_steps=1,
                         mn_repeats=2, matmul_n=512, matmul_reps=2, workers=2)


def default_sizes(device: torch.device, quick: bool = False) -> BenchSizes:
    """``quick``: seconds anywhere; otherwise sized for the device (2 shared CPU cores or one GPU)."""
    if quick:
        return QUICK_SIZES if device.type == "cpu" else dataclasses.replace(QUICK_SIZES, workers=8)
    return CPU_SIZES if device.type == "cpu" else BenchSizes()


# ------------------------------------------------------------------ timing helpers
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def interleave(runners: dict[str, Callable[[], Any]], repeats: int,
               device: torch.device) -> dict[str, list[tuple[float, Any]]]:
    """Run every runner once per repeat, rotating the order each repeat; (seconds, result) lists."""
    names = list(runners)
    out: dict[str, list[tuple[float, Any]]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(_timed(runners[n], device))
    return out


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _throughput(raw: list[tuple[float, Any]]) -> dict[str, Any]:
    secs = [s for s, _ in raw]
    imgs = [int(n) for _, n in raw]
    ips = [n / s for s, n in zip(secs, imgs)]
    return {"seconds": secs, "images": imgs, "images_per_s": ips, "median_images_per_s": _median(ips)}


def _per_unit(raw: list[tuple[float, Any]], units: int) -> list[float]:
    return [s / units for s, _ in raw]


# ------------------------------------------------------------------ models and data
def bench_data(sizes: BenchSizes, dataset: str = "synthetic") -> ArrayData:
    """The synthetic set at the benchmark's size, or a real 32x32 set (``caltech100``, ...)."""
    if dataset == "synthetic":
        return make_synthetic(sizes.n_classes, sizes.per_class_train, sizes.per_class_test)
    data = load_dataset(dataset)
    if not isinstance(data, ArrayData):
        raise ValueError(f"{dataset}: the benchmark needs a 32x32 in-memory dataset")
    return data


def bench_model(sizes: BenchSizes, n_classes: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The benchmark's ResNet at ``sizes``, seeded so that both sides start from the same weights."""
    torch.manual_seed(0)
    net = build_net("resnet", n_classes, depth=sizes.depth, width=sizes.width).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    # the paper's CIFAR optimiser (lr 0.1, momentum 0.9, wd 5e-4) for both sides
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _sgd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              amp: bool) -> None:
    """One eager cross-entropy step, as the field's codes take it (the reference's step)."""
    eager_step(opt, lambda a, b: F.cross_entropy(model(a), b), amp, x.device.type, x, y)


class OursTrain:
    """The library's training path (as in ``trainer.train_epochs``), per call ``steps`` steps:
    on-device batches and augmentation, and the trainer's step executor (a replayed CUDA graph
    on CUDA, the compiled backbone on CPU; ``graphs=False`` / ``compiled=False`` time the eager
    step instead).

    ``channels_last``/``compiled`` default to what the trainer does on the model's device
    (channels_last on CUDA, compiled on CPU unless ``MNEMONICS_CPU_COMPILE=0``).
    """

    def __init__(self, model: torch.nn.Module, images: DeviceImages, norm: Normaliser, batch: int,
                 amp: bool, seed: int = 0, channels_last: bool | None = None, graphs: bool = True,
                 compiled: bool | None = None):
        self.model, self.images, self.norm, self.amp = model, images, norm, amp
        self.device = images.x.device
        trainer_layout = preferred_memory_format(self.device) == torch.channels_last
        self.channels_last = trainer_layout if channels_last is None else channels_last
        self.compiled = compile_enabled(self.device) if compiled is None else compiled
        if self.compiled:
            # as steps.compiled_backbones does inside train_epochs (here for the object's life)
            model.backbone.compile()
        self.opt = _sgd(model)
        loss = lambda x, y: F.cross_entropy(model(x), y)  # noqa: E731
        self.step = (make_step(self.opt, loss, amp, self.device, batch, self.compiled) if graphs
                     else EagerStep(self.opt, loss, amp, self.device.type))
        self.gen = make_generator(seed, self.device)
        self.pad = norm.pixel_range[0]
        self.batch = batch
        self._it = self._batches()

    @property
    def step_kind(self) -> str:
        """How a full batch's step runs: ``cuda graph``, ``compiled backbone`` or ``eager``."""
        if isinstance(self.step, GraphStep):
            return "cuda graph"
        return "compiled backbone" if self.compiled else "eager"

    def _batches(self):
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        while True:  # reshuffled epochs, prepared as the trainer prepares them
            yield from augmented_batches(self.images.x, self.images.y, self.batch, self.gen, self.pad, layout,
                                         transform=self.norm)

    def __call__(self, steps: int) -> int:
        self.model.train()
        n = 0
        for _ in range(steps):
            x, y = next(self._it)
            self.step(x, y)
            n += len(y)  # a host-side shape: no device synchronisation
        return n


# ------------------------------------------------------------------ the field's reference path
class PILImages(torch.utils.data.Dataset):
    """The field's data path: one uint8 HWC image per item -> PIL -> torchvision transforms."""

    def __init__(self, x_nhwc: np.ndarray, y: np.ndarray, transform: Callable):
        self.x, self.y, self.transform = x_nhwc, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loader(x_nhwc: np.ndarray, y: np.ndarray, mean, std, train: bool, batch: int,
                     workers: int, device: torch.device, seed: int = 0) -> torch.utils.data.DataLoader:
    """DataLoader as in the LUCIR / Mnemonics / PyCIL codes. Workers persist across epochs, so
    their start-up is excluded from the timings (generous to the reference); on CPU their
    refilling of the prefetch queue overlaps the next runner's timing (charged to ours)."""
    from torchvision import transforms

    tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    tf = transforms.Compose(tf + [transforms.ToTensor(), transforms.Normalize(mean, std)])
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(PILImages(x_nhwc, y, tf), batch_size=batch, shuffle=train,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0, generator=g)


class ReferenceTrain:
    """DataLoader batches -> fp32 step on an NCHW model; per call ``steps`` steps."""

    def __init__(self, model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device):
        self.model, self.loader, self.device = model, loader, device
        self.opt = _sgd(model)
        self._it = self._batches()

    def _batches(self):
        while True:
            yield from self.loader

    def __call__(self, steps: int) -> int:
        self.model.train()
        n = 0
        for _ in range(steps):
            x, y = next(self._it)
            _sgd_step(self.model, self.opt, x.to(self.device, non_blocking=True),
                      y.to(self.device, non_blocking=True), amp=False)
            n += len(y)
        return n


# ------------------------------------------------------------------ stages
def bench_train(data: ArrayData, sizes: BenchSizes, device: torch.device, amp: bool,
                cpu_variants: bool = True) -> dict[str, Any]:
    """Training images/s: ours vs the reference, same data, model init, batch and step count.

    ``ours`` is the trainer's path on ``device``. Beside it, never instead of it:
    ``ours_eager`` (CUDA: without the graphs; CPU: without compilation) shows what the step
    executor buys; on CUDA ``ours_compiled`` adds compiled backbones inside the graph (what
    ``MNEMONICS_CUDA_COMPILE=1`` does), and ``ours_nchw`` / ``ours_compiled_nchw`` time both
    paths in NCHW instead of channels_last; on CPU ``cpu_variants`` adds ``ours_bf16``, the
    trainer's path with bf16 autocast (``amp: true`` in a config; fast where the CPU has AMX /
    AVX512-BF16; it changes the numerics, so it is a config field, off in every profile on CPU).
    Compilation happens in the warm-up, outside the timings, and is reported as ``compile_s``.
    """
    amp = amp and device.type == "cuda"
    norm = Normaliser.create(data.mean, data.std, device)
    images = DeviceImages(data.x_train, data.y_train, device)
    n_cls = int(data.y_train.max()) + 1
    cl = device.type == "cuda"
    runs: dict[str, Callable[[int], int]] = {
        "ours": OursTrain(bench_model(sizes, n_cls, device, cl), images, norm, sizes.batch, amp),
        "reference": ReferenceTrain(bench_model(sizes, n_cls, device, False), reference_loader(
            data.x_train, data.y_train, data.mean, data.std, True, sizes.batch, sizes.workers, device), device),
    }
    ours = runs["ours"]
    if isinstance(ours.step, GraphStep) or ours.compiled:
        # the same path with the eager step: what the graphs / the compilation alone buy
        runs["ours_eager"] = OursTrain(bench_model(sizes, n_cls, device, cl), images, norm, sizes.batch, amp,
                                       graphs=False, compiled=False)
    if cpu_variants and device.type == "cpu":
        runs["ours_bf16"] = OursTrain(bench_model(sizes, n_cls, device, False), images, norm, sizes.batch, True)
    if device.type == "cuda" and not ours.compiled:
        # the candidate lever for the GPU target: compiled backbones inside the captured graph
        # (MNEMONICS_CUDA_COMPILE=1 in the trainer); timed here until it is measured to pay
        runs["ours_compiled"] = OursTrain(bench_model(sizes, n_cls, device, cl), images, norm, sizes.batch, amp,
                                          compiled=True)
    if device.type == "cuda":
        # the trainer keeps CUDA models channels_last; with 16-64 channels cuDNN's NCHW kernels
        # may be the faster ones, so both layouts are measured, graphed and compiled
        runs["ours_nchw"] = OursTrain(bench_model(sizes, n_cls, device, False), images, norm, sizes.batch, amp,
                                      channels_last=False)
        if not ours.compiled:
            runs["ours_compiled_nchw"] = OursTrain(bench_model(sizes, n_cls, device, False), images, norm, sizes.batch,
                                                   amp, channels_last=False, compiled=True)
    warm = {}
    for name, run in runs.items():
        t = time.perf_counter()
        run(sizes.warmup_steps)
        sync(device)
        warm[name] = time.perf_counter() - t
    raw = interleave({k: (lambda r=r: r(sizes.train_steps)) for k, r in runs.items()}, sizes.repeats, device)
    res: dict[str, Any] = {k: _throughput(v) for k, v in raw.items()}
    res["warmup_s"] = warm
    compiled_run = "ours" if ours.compiled else "ours_compiled"
    if compiled_run in warm and "ours_eager" in warm:
        res["compile_s"] = warm[compiled_run] - warm["ours_eager"]  # warm-up beyond the eager one
    ref = res["reference"]["median_images_per_s"]
    res["ratio"] = res["ours"]["median_images_per_s"] / ref
    res["variant_ratios"] = {k: res[k]["median_images_per_s"] / ref for k in runs if k.startswith("ours_")}
    res["ours_precision"] = "bf16 autocast" if amp else "fp32"
    res["ours_step"] = ours.step_kind
    res["ours_step_stats"] = dict(getattr(ours.step, "stats", {}))
    if "ours_compiled" in runs:
        res["ours_compiled_step_stats"] = dict(runs["ours_compiled"].step.stats)
    return res


def bench_eval(data: ArrayData, sizes: BenchSizes, device: torch.device, amp: bool) -> dict[str, Any]:
    """Evaluation images/s over the first ``eval_images`` training images (no augmentation)."""
    amp = amp and device.type == "cuda"
    n = min(sizes.eval_images, len(data.y_train))
    x, y = data.x_train[:n], data.y_train[:n]
    norm = Normaliser.create(data.mean, data.std, device)
    images = DeviceImages(x, y, device)
    n_cls = int(data.y_train.max()) + 1
    ours_model = bench_model(sizes, n_cls, device, device.type == "cuda").eval()
    ref_model = bench_model(sizes, n_cls, device, False).eval()
    loader = reference_loader(x, y, data.mean, data.std, False, sizes.eval_batch, sizes.workers, device)
    compiled = compile_enabled(device)
    if compiled:  # as the trainer's evaluation (steps.compiled_backbones around evaluate_phase)
        ours_model.backbone.compile()

    def ours() -> int:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            preds = batched(ours_model, norm(images.x), sizes.eval_batch).argmax(1)
        return len(preds)

    @torch.no_grad()
    def reference() -> int:
        correct, seen = 0, 0
        for xb, yb in loader:  # the field's per-batch .item(): one host sync per batch
            correct += int((ref_model(xb.to(device)).argmax(1) == yb.to(device)).sum().item())
            seen += len(yb)
        return seen

    ours()
    reference()
    raw = interleave({"ours": ours, "reference": reference}, sizes.repeats, device)
    res = {k: _throughput(v) for k, v in raw.items()}
    res["ratio"] = res["ours"]["median_images_per_s"] / res["reference"]["median_images_per_s"]
    res["ours_forward"] = "compiled backbone" if compiled else "eager"
    return res


def herding_reference(features: torch.Tensor, m: int) -> list[int]:
    """Herding as the per-sample loop the field's codes use: the reference that
    ``memory.herding_selection`` is timed and checked against."""
    f = F.normalize(features.double(), dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    for k in range(min(m, f.shape[0])):
        best, best_d = -1, float("inf")
        for i in range(f.shape[0]):
            if i in chosen:
                continue
            d = float(((running + f[i]) / (k + 1) - mu).pow(2).sum())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
        running = running + f[best]
    return chosen


def bench_herding(sizes: BenchSizes, device: torch.device) -> dict[str, Any]:
    """Vectorised herding vs the per-sample loop (both on the CPU, like the field's NumPy code;
    ours is also timed on ``device`` when that is a GPU, where the trainer runs it)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(sizes.herding_n, sizes.herding_d, generator=g)
    cpu = torch.device("cpu")
    runners = {"ours": lambda: herding_selection(feats, sizes.herding_m),
               "reference": lambda: herding_reference(feats, sizes.herding_m)}
    raw = interleave(runners, sizes.repeats, cpu)
    same = herding_selection(feats, sizes.herding_m).tolist() == herding_reference(feats, sizes.herding_m)
    res = {"ours_s": [s for s, _ in raw["ours"]], "reference_s": [s for s, _ in raw["reference"]],
           "same_indices": bool(same)}
    res["speedup"] = _median(res["reference_s"]) / _median(res["ours_s"])
    if device.type == "cuda":
        fd = feats.to(device)
        herding_selection(fd, sizes.herding_m)
        res["ours_device_s"] = [s for s, _ in interleave(
            {"ours": lambda: herding_selection(fd, sizes.herding_m)}, sizes.repeats, device)["ours"]]
    return res


@torch.no_grad()
def class_means_reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          n_classes: int) -> torch.Tensor:
    """iCaRL's class means the way the field's codes compute them: one class at a time, the
    image and its flip through the network separately; (n_classes, D)."""
    out = []
    for c in range(n_classes):
        xc = x[y == c]
        if not len(xc):
            out.append(torch.zeros(model.backbone.out_dim, device=x.device))
            continue
        f = F.normalize(model.features(xc), dim=1).mean(0)
        f_flip = F.normalize(model.features(xc.flip(3)), dim=1).mean(0)
        out.append(F.normalize((f + f_flip) / 2, dim=0))
    return torch.stack(out)


def bench_class_means(data: ArrayData, sizes: BenchSizes, device: torch.device) -> dict[str, Any]:
    """NME class means over the exemplar set: :func:`evaluation.class_means` vs a per-class loop."""
    k = min(sizes.means_classes, int(data.y_train.max()) + 1)
    idx = np.concatenate([np.flatnonzero(data.y_train == c)[:sizes.means_per_class] for c in range(k)])
    norm = Normaliser.create(data.mean, data.std, device)
    images = DeviceImages(data.x_train[idx], data.y_train[idx], device)
    x, y = norm(images.x), images.y
    model = bench_model(sizes, k, device, device.type == "cuda").eval()
    ours = class_means(model, x, y, k)
    ref = class_means_reference(model, x, y, k)
    raw = interleave({"ours": lambda: class_means(model, x, y, k),
                      "reference": lambda: class_means_reference(model, x, y, k)}, sizes.repeats, device)
    res = {"ours_s": [s for s, _ in raw["ours"]], "reference_s": [s for s, _ in raw["reference"]],
           "images": len(y), "classes": k, "max_abs_diff": float((ours - ref).abs().max())}
    res["speedup"] = _median(res["reference_s"]) / _median(res["ours_s"])
    return res


def bench_mnemonics(data: ArrayData, sizes: BenchSizes, device: torch.device) -> dict[str, Any]:
    """One mnemonics outer iteration (K inner steps, second order) per fp32 training step."""
    try:
        from mnemonics_lib import bilevel
    except ImportError as e:  # bilevel is optional for the rest of the benchmark
        return {"skipped": f"mnemonics_lib.bilevel unavailable: {e}"}
    k = min(sizes.mn_classes, int(data.y_train.max()) + 1)
    norm = Normaliser.create(data.mean, data.std, device)
    real = DeviceImages(data.x_train[data.y_train < k], data.y_train[data.y_train < k], device)
    ex_idx = torch.cat([torch.nonzero(real.y == c).flatten()[:sizes.mn_per_class] for c in range(k)])
    real_x, real_y = norm(real.x), real.y
    ex_x, ex_y = real_x[ex_idx], real_y[ex_idx]
    cl = device.type == "cuda"  # as the trainer holds its model
    model = bench_model(sizes, k, device, cl).eval()
    step = OursTrain(bench_model(sizes, k, device, cl), real, norm, sizes.batch, amp=False)
    gen = make_generator(0, device)

    def outer(inner: int, iters: int) -> Callable[[], Any]:
        s = bilevel.BilevelSettings(inner_steps=inner, inner_lr=0.01, outer_iters=iters, outer_lr=0.01,
                                    old_lr=0.005, real_batch=sizes.mn_real_batch)
        return lambda: bilevel.optimise_exemplars(model, ex_x, ex_y, real_x, real_y, s, generator=gen)

    step(1)
    if device.type == "cuda":  # cuBLAS/cuDNN handles and double-backward kernels; on CPU the
        outer(1, 1)()  # first call costs little next to one iteration (tens of seconds there)
    runners = {"train_step": lambda: step(sizes.mn_steps)}
    runners.update({f"outer_k{i}": outer(i, sizes.mn_outer_iters) for i in sizes.mn_inner_steps})
    raw = interleave(runners, sizes.mn_repeats, device)
    res: dict[str, Any] = {"train_step_s": _per_unit(raw.pop("train_step"), sizes.mn_steps),
                           "exemplars": len(ex_y), "real_batch": sizes.mn_real_batch,
                           "precision": "fp32 (the bilevel program does not autocast)"}
    step_med = _median(res["train_step_s"])
    for name, v in raw.items():
        res[f"{name}_s"] = _per_unit(v, sizes.mn_outer_iters)
        res[f"{name}_over_step"] = _median(res[f"{name}_s"]) / step_med
    return res


def count_train_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> int:
    """FLOPs (2 per multiply-add, convolutions and matmuls) of one forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_flops(data: ArrayData, sizes: BenchSizes, device: torch.device, amp: bool) -> dict[str, Any]:
    """Achieved GFLOP/s of our training step (fixed batch) vs a large-matmul peak, interleaved.
    The peak is fp32 on CPU and bf16 on GPU: the precision our step runs in there."""
    amp = amp and device.type == "cuda"
    n_cls = int(data.y_train.max()) + 1
    cl = device.type == "cuda"
    model = bench_model(sizes, n_cls, device, cl).train()
    norm = Normaliser.create(data.mean, data.std, device)
    imgs = DeviceImages(data.x_train[:sizes.batch], data.y_train[:sizes.batch], device)
    x = augment(norm(imgs.x), make_generator(0, device), norm.pixel_range[0])
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    flops = count_train_flops(copy.deepcopy(model), x, imgs.y, amp)  # before compilation
    ours = OursTrain(model, imgs, norm, sizes.batch, amp)  # the trainer's step executor
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(sizes.matmul_n, sizes.matmul_n, device=device, dtype=dt, generator=g)
    b = torch.randn(sizes.matmul_n, sizes.matmul_n, device=device, dtype=dt, generator=g)
    steps = max(sizes.train_steps // 2, 1)

    def train() -> None:
        for _ in range(steps):
            ours.step(x, imgs.y)

    def matmul() -> None:
        for _ in range(sizes.matmul_reps):
            torch.mm(a, b)

    train()
    matmul()
    raw = interleave({"step": train, "matmul": matmul}, sizes.repeats, device)
    step_s = _per_unit(raw["step"], steps)
    mm_gflops = [2 * sizes.matmul_n ** 3 * sizes.matmul_reps / s / 1e9 for s, _ in raw["matmul"]]
    achieved = flops / _median(step_s) / 1e9
    peak = _median(mm_gflops)
    return {"flops_per_step": flops, "batch": sizes.batch, "step_s": step_s, "achieved_gflops": achieved,
            "matmul_dtype": str(dt).replace("torch.", ""), "matmul_gflops": mm_gflops,
            "peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "step_precision": "bf16 autocast" if amp else "fp32",
            "step": ours.step_kind}


# ------------------------------------------------------------------ the whole run
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = f"cpu x{torch.get_num_threads()} threads"
    return info


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_benchmark(device: torch.device | str | None = None, *, quick: bool = False,
                  sizes: BenchSizes | None = None, dataset: str = "synthetic", amp: bool = True,
                  cpu_variants: bool = True,
                  stages: tuple[str, ...] = ("train", "eval", "herding", "class_means", "mnemonics", "flops"),
                  ) -> dict[str, Any]:
    """Run the chosen stages and return the record (raw timings, ratios, sizes, device)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tune_backends(device)  # the trainer's backend settings (cuDNN autotuning), so the timings are the trainer's
    sizes = sizes or default_sizes(device, quick)
    data = bench_data(sizes, dataset)
    fns: dict[str, Callable[[], dict[str, Any]]] = {
        "train": lambda: bench_train(data, sizes, device, amp, cpu_variants),
        "eval": lambda: bench_eval(data, sizes, device, amp),
        "herding": lambda: bench_herding(sizes, device),
        "class_means": lambda: bench_class_means(data, sizes, device),
        "mnemonics": lambda: bench_mnemonics(data, sizes, device),
        "flops": lambda: bench_flops(data, sizes, device, amp),
    }
    t_all = time.perf_counter()
    out: dict[str, Any] = {}
    for name in stages:
        t = time.perf_counter()
        out[name] = fns[name]()
        out[name]["stage_wall_s"] = time.perf_counter() - t
        log.info("%-12s %6.1fs  %s", name, out[name]["stage_wall_s"], _headline(name, out[name]))
    return {"schema": SCHEMA, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_info(device), "dataset": dataset, "amp": amp,
            "compiled_backbones": compile_enabled(device),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "sizes": dataclasses.asdict(sizes), "stages": out, "ratios": ratios(out),
            "targets": TARGETS, "wall_s": time.perf_counter() - t_all}


def ratios(stages: dict[str, Any]) -> dict[str, float]:
    """The headline ratios (ours over reference; >1 means ours is faster, except *_over_step)."""
    keys = {"train": ("train_images_per_s_ratio", "ratio"), "eval": ("eval_images_per_s_ratio", "ratio"),
            "herding": ("herding_speedup", "speedup"), "class_means": ("class_means_speedup", "speedup"),
            "flops": ("train_step_fraction_of_peak", "fraction_of_peak")}
    out = {name: stages[s][k] for s, (name, k) in keys.items() if s in stages}
    for k, v in stages.get("train", {}).get("variant_ratios", {}).items():
        out[f"train_images_per_s_ratio_{k}"] = v
    for k, v in stages.get("mnemonics", {}).items():
        if k.endswith("_over_step"):
            out[f"mnemonics_{k}"] = v
    return out


def _headline(name: str, res: dict[str, Any]) -> str:
    r = ratios({name: res})
    return ", ".join(f"{k}={v:.3g}" for k, v in r.items()) or str(res.get("skipped", ""))


def format_table(record: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers of a :func:`run_benchmark` record."""
    st = record["stages"]
    rows = [("stage", "ours", "reference", "ratio")]
    for s, unit in (("train", "img/s"), ("eval", "img/s")):
        if s not in st:  # --stages may leave a stage out
            continue
        rows.append((f"{s} ({unit})", f"{st[s]['ours']['median_images_per_s']:.1f}",
                     f"{st[s]['reference']['median_images_per_s']:.1f}", f"{st[s]['ratio']:.2f}x"))
        for k, v in st[s].get("variant_ratios", {}).items():  # beside the trainer's path, not instead of it
            rows.append((f"  variant {k[5:]}", f"{st[s][k]['median_images_per_s']:.1f}", "", f"{v:.2f}x"))
    for s in ("herding", "class_means"):
        if s in st:
            rows.append((f"{s} (ms)", f"{1e3 * _median(st[s]['ours_s']):.2f}",
                         f"{1e3 * _median(st[s]['reference_s']):.2f}", f"{st[s]['speedup']:.1f}x"))
    mn = st.get("mnemonics", {})
    for k in (k for k in mn if k.endswith("_over_step")):
        rows.append((f"mnemonics {k[:-10]} (ms)", f"{1e3 * _median(mn[k[:-10] + '_s']):.1f}",
                     f"step {1e3 * _median(mn['train_step_s']):.1f}", f"{mn[k]:.2f} steps"))
    if "flops" in st:
        f = st["flops"]
        rows.append(("train step (GFLOP/s)", f"{f['achieved_gflops']:.1f}",
                     f"matmul {f['peak_gflops']:.1f}", f"{100 * f['fraction_of_peak']:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def default_out_path(root: str | os.PathLike[str], device: torch.device | str, kind: str = "") -> Path:
    """``<root>/<UTC timestamp>-<device slug>[-kind].json``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{kind}" if kind else ""
    return Path(root) / f"{stamp}-{device_slug(torch.device(device))}{suffix}.json"


def write_record(record: dict[str, Any], out: str | os.PathLike[str], device: torch.device | str,
                 kind: str = "") -> Path:
    """Add provenance and write atomically. ``out``: a ``.json`` path or a folder (timestamped name)."""
    from mnemonics_study.results import provenance, write_json_atomic

    out = Path(out)
    path = out if out.suffix == ".json" else default_out_path(out, device, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**record, "provenance": provenance()})
    return path


# ------------------------------------------------------------------ paper-schedule projection
@dataclass(frozen=True)
class ProjectionSizes:
    """A CIFAR-100-shaped B50 run (synthetic pixels, real shapes) timed for a few epochs."""

    n_classes: int = 100
    per_class_train: int = 500
    per_class_test: int = 100
    phases: int = 10  # N incremental phases after the base phase (B = n_classes / 2)
    memory_per_class: int = 20
    epochs_measured: int = 4  # per timed phase; the first (warm-up, graph capture) is not used
    paper_epochs: int = 160
    profile: str = "paper"  # the schedule (batch 128, ResNet-32); "smoke" for a dry run


SMALL_PROJECTION = ProjectionSizes(n_classes=10, per_class_train=30, per_class_test=5, phases=5,
                                   memory_per_class=4, epochs_measured=2, profile="smoke")


def projection_data(sizes: ProjectionSizes) -> ArrayData:
    """Synthetic pixels in the projection's shapes (labels already in learning order)."""
    return make_synthetic(sizes.n_classes, sizes.per_class_train, sizes.per_class_test)


def _epoch_times(ctx: Any, method: Any, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` epochs of one ``train_epochs`` call (one optimiser, so a
    CUDA graph is captured once and replayed, as in a real phase), synchronised at each epoch end."""
    from mnemonics_lib.trainer import train_epochs

    out: list[float] = []
    sync(ctx.device)
    last = [time.perf_counter()]

    def tick(e: int) -> None:
        sync(ctx.device)
        now = time.perf_counter()
        out.append(now - last[0])
        last[0] = now
        log.info("phase %d epoch %d: %.2fs (%d images)", ctx.phase, e, out[-1], len(ctx.train_y))

    train_epochs(ctx, method, epochs, ctx.config.schedule.lr, method.param_groups(ctx), on_epoch_end=tick)
    return out


def _steady(times: list[float]) -> float:
    """Median epoch time without the first (warm-up) epoch when there is more than one."""
    return _median(times[1:] if len(times) > 1 else times)


def project_full_run(plan: Any, sizes: ProjectionSizes, batch: int, epoch0_s: float, inc_epoch_s: float,
                     inc_images: int, eval_s: float, eval_seen: int, exemplar_s_per_class: float
                     ) -> dict[str, Any]:
    """Seconds of a full run from measured pieces. An incremental epoch costs its step count
    times the measured per-step time; evaluation scales with the seen classes (test images and
    class means grow with them); the exemplar stage with the new classes."""
    step_s = inc_epoch_s / math.ceil(inc_images / batch)
    n_inc = [len(plan.new_classes(p)) * sizes.per_class_train + sizes.memory_per_class * plan.starts[p]
             for p in range(1, plan.num_phases)]
    inc = [step_s * math.ceil(n / batch) for n in n_inc]
    evals = [eval_s * plan.seen_classes(p) / eval_seen for p in range(plan.num_phases)]
    train_s = sizes.paper_epochs * (epoch0_s + sum(inc))
    total = train_s + sum(evals) + exemplar_s_per_class * plan.ends[-1]
    return {
        "formula": "E*t0 + E*sum_p(t_step*ceil(n_p/batch)) + sum_p(t_eval*seen_p/seen_1) + t_ex*classes",
        "E": sizes.paper_epochs, "t0_s": epoch0_s, "t_step_incremental_s": step_s,
        "incremental_images": n_inc, "incremental_epoch_s": inc, "eval_s": evals,
        "exemplar_s_per_class": exemplar_s_per_class, "train_s": train_s,
        "total_s": total, "total_h": total / 3600,
    }


def paper_projection(device: torch.device | str | None = None, sizes: ProjectionSizes = ProjectionSizes(),
                     amp: bool = True, data: ArrayData | None = None) -> dict[str, Any]:
    """Time phase 0 and phase 1 of a LUCIR + herding B50 run through the trainer's own code
    (``train_epochs``, ``exemplar_stage``, ``evaluate_phase``) and project the full run.
    ``data``: a :func:`projection_data` set to reuse across calls (it takes seconds to build)."""
    from mnemonics_lib import protocol
    from mnemonics_lib.config import make_config
    from mnemonics_lib.evaluation import evaluate_phase
    from mnemonics_lib.exemplars import exemplar_stage
    from mnemonics_lib.memory import ExemplarMemory
    from mnemonics_lib.methods import PhaseContext, get_method

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tune_backends(device)  # as run_incremental does
    graph_before = dict(GRAPH_TOTALS)
    config = make_config(dataset="synthetic", synthetic_classes=sizes.n_classes, phases=sizes.phases,
                         profile=sizes.profile, amp=amp, method="lucir", exemplars="herding",
                         memory_per_class=sizes.memory_per_class)
    plan, method, s = protocol.phase_plan(config), get_method("lucir"), config.schedule
    data = data or projection_data(sizes)
    train, test = (DeviceImages(data.x_train, data.y_train, device),
                   DeviceImages(data.x_test, data.y_test, device))
    norm = Normaliser.create(data.mean, data.std, device)
    torch.manual_seed(config.seed)
    model = build_net("resnet", plan.ends[0], depth=s.depth, width=s.width, cosine=True).to(device)
    model = model.to(memory_format=preferred_memory_format(device))  # as the trainer builds it
    state: dict[str, Any] = {"_pad": norm.pixel_range[0]}
    gen, memory = make_generator(0, device), ExemplarMemory()

    def phase_data(p: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = train.select(list(plan.new_classes(p)))
        return norm(train.x[idx]), train.y[idx]

    x0, y0 = phase_data(0)
    ctx = PhaseContext(config, 0, 0, plan.ends[0], model, None, x0, y0, device, gen, state)
    method.before_phase(ctx)
    t0 = _epoch_times(ctx, method, sizes.epochs_measured)
    t_ex, _ = _timed(lambda: exemplar_stage(config, model, memory, x0, y0, plan.new_classes(0),
                                            sizes.memory_per_class, norm, gen, make_generator(1, "cpu"), 0),
                     device)
    old = copy.deepcopy(model).eval().requires_grad_(False)
    x1, y1 = phase_data(1)
    mem_x, mem_y = memory.tensors()
    ctx = PhaseContext(config, 1, plan.starts[1], plan.ends[1], model, old, torch.cat([x1, mem_x]),
                       torch.cat([y1, mem_y]), device, gen, state)
    method.before_phase(ctx)
    t1 = _epoch_times(ctx, method, sizes.epochs_measured)
    t_ex1, _ = _timed(lambda: exemplar_stage(config, model, memory, x1, y1, plan.new_classes(1),
                                             sizes.memory_per_class, norm, gen, make_generator(2, "cpu"), 1),
                      device)  # before the evaluation, as in the trainer: NME needs the new exemplars
    te, tr = test.select(list(range(plan.ends[1]))), train.select(list(range(plan.ends[1])))
    t_eval, row = _timed(lambda: evaluate_phase(
        model=model, logits_fn=lambda b: method.logits(state, model, b), test_x=norm(test.x[te]),
        test_y=test.y[te], memory=memory, all_train=(norm(train.x[tr]), train.y[tr]), plan=plan, phase=1,
        batch=s.eval_batch), device)
    proj = project_full_run(plan, sizes, s.batch_size, _steady(t0), _steady(t1), len(ctx.train_y), t_eval,
                            plan.ends[1], (t_ex + t_ex1) / plan.ends[1])
    return {"schema": SCHEMA + "/paper-projection", "device": device_info(device), "amp": amp,
            "sizes": dataclasses.asdict(sizes), "batch": s.batch_size, "method": "lucir",
            "phase0_images": len(y0), "phase0_epoch_s": t0, "phase1_images": len(ctx.train_y),
            "phase1_epoch_s": t1, "exemplar_stage_s": [t_ex, t_ex1], "eval_phase1_s": t_eval,
            "phase1_acc_cnn": row["acc_cnn"], "projection": proj,
            "step": "cuda graph" if cuda_graphs_enabled(device) else "eager",
            "graph_steps": {k: v - graph_before.get(k, 0) for k, v in GRAPH_TOTALS.items()}}
