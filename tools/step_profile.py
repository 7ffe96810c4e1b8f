"""Where a training step's time goes: its kernels by kind, against the graphed step's wall time.

The GPU training target (5x the reference pipeline) is not met with the CUDA graphs alone (the
speed table in docs/study.md). A graph removes the host's launches; what remains is the
device executing some hundreds of small kernels. This profile says which: it records the
*eager* step's kernels (a captured graph replays the same kernels, but the profiler cannot look
inside a replay), sums their device time per step, groups them by kind (convolutions, batch
norm, optimiser, elementwise ...) and lists the costliest. Beside it, the graphed step's wall
time per step: when the two are close the step is bound by its kernels (so only fewer or faster
kernels help: fusion, other layouts), when the wall time is much larger the gaps between
kernels are (so fewer launches help).

On a CPU the same report comes from the operators' self times (no graphs there).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from .bench import BenchSizes, OursTrain, bench_data, bench_model, sync
from mnemonics_lib.pipeline import DeviceImages, Normaliser, tune_backends

# the first kind whose key occurs in a kernel's (lower-cased) name wins; order matters
# (cuDNN's batch-norm kernels carry "cudnn" too, so batch norm is looked for first)
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford", "native_batch_norm")),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "wgrad", "dgrad", "xmma", "cutlass", "sm90_", "sm80_")),
    ("matmul (head)", ("gemm", "addmm", "mm_", "matmul", "linear")),
    ("optimiser", ("multi_tensor", "foreach", "sgd")),
    ("loss / softmax", ("softmax", "nll", "cross_entropy", "log_softmax")),
    ("reduction", ("reduce", "sum_", "mean", "norm")),
    ("copy / layout", ("copy", "transpose", "permute", "contiguous", "cat", "index", "gather", "scatter")),
    ("fused (triton)", ("triton",)),
    ("elementwise", ("elementwise", "relu", "threshold", "add", "mul", "div", "sub", "fill", "where",
                     "clamp", "vectorized", "unrolled")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def _device_events(prof, device: torch.device) -> list[tuple[str, float, int]]:
    """(name, microseconds, calls) of what the device executed: CUDA kernels on a GPU, the operators'
    self times on a CPU (nested operators would otherwise count twice)."""
    if device.type == "cuda":
        return [(e.name, e.time_range.elapsed_us(), 1) for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA]
    return [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages() if e.self_cpu_time_total > 0]


def summarise_kernels(events: list[tuple[str, float, int]], steps: int, top: int = 15) -> dict[str, Any]:
    """Per-step totals, the time by kind (with shares) and the ``top`` costliest names."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, us, calls in events:
        by_name[name][0] += us
        by_name[name][1] += calls
    total = sum(v[0] for v in by_name.values())
    kinds: dict[str, float] = defaultdict(float)
    for name, (us, _) in by_name.items():
        kinds[kernel_kind(name)] += us
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "steps": steps,
        "kernels_per_step": sum(v[1] for v in by_name.values()) / steps,
        "kernel_ms_per_step": total / steps / 1e3,
        "by_kind": {k: {"ms_per_step": us / steps / 1e3, "share": us / total if total else 0.0}
                    for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top": [{"name": n[:120], "kind": kernel_kind(n), "calls_per_step": c / steps,
                 "ms_per_step": us / steps / 1e3, "share": us / total if total else 0.0}
                for n, (us, c) in ranked],
    }


def profile_variant(images: DeviceImages, norm: Normaliser, sizes: BenchSizes, n_classes: int,
                    device: torch.device, amp: bool, channels_last: bool, compiled: bool) -> dict[str, Any]:
    """One layout / compilation choice: the eager step's kernels, and the graphed step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    eager = OursTrain(bench_model(sizes, n_classes, device, channels_last), images, norm, sizes.batch, amp,
                      channels_last=channels_last, graphs=False, compiled=compiled)
    eager(sizes.warmup_steps)
    sync(device)
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        eager(sizes.train_steps)
        sync(device)
    out = summarise_kernels(_device_events(prof, device), sizes.train_steps)
    if device.type == "cuda":
        graphed = OursTrain(bench_model(sizes, n_classes, device, channels_last), images, norm, sizes.batch, amp,
                            channels_last=channels_last, compiled=compiled)
        graphed(sizes.warmup_steps)
        sync(device)
        t = time.perf_counter()
        graphed(sizes.train_steps)
        sync(device)
        out["graphed_ms_per_step"] = (time.perf_counter() - t) / sizes.train_steps * 1e3
        # > 1: time between kernels (launch gaps, host work between replays) beyond the kernels
        out["graphed_over_kernels"] = out["graphed_ms_per_step"] / out["kernel_ms_per_step"]
        # the same replayed step on one fixed batch: what the batch preparation outside the graph
        # (index draw, gather, normalise, crop/flip, layout copy) adds is the difference
        out["step_alone_ms_per_step"] = _step_alone_ms(graphed, sizes.train_steps)
        out["batch_prep_share"] = 1.0 - out["step_alone_ms_per_step"] / out["graphed_ms_per_step"]
    return out


def _step_alone_ms(train: OursTrain, steps: int) -> float:
    """Milliseconds per step of ``train``'s step executor replayed on one prepared batch."""
    x, y = next(train._it)
    train.step(x, y)
    sync(train.device)
    t = time.perf_counter()
    for _ in range(steps):
        train.step(x, y)
    sync(train.device)
    return (time.perf_counter() - t) / steps * 1e3


def profile_training_step(device: torch.device | str, sizes: BenchSizes, amp: bool = True,
                          dataset: str = "synthetic") -> dict[str, Any]:
    """The step profile of the trainer's layout, and on CUDA also of NCHW and of compiled backbones."""
    device = torch.device(device)
    tune_backends(device)
    amp = amp and device.type == "cuda"
    data = bench_data(sizes, dataset)
    norm = Normaliser.create(data.mean, data.std, device)
    images = DeviceImages(data.x_train, data.y_train, device)
    n_classes = int(data.y_train.max()) + 1
    # name: (channels_last, compiled); the CPU has no graphs to compare with and trains NCHW
    variants = ({"channels_last": (True, False), "nchw": (False, False), "compiled_channels_last": (True, True)}
                if device.type == "cuda" else {"nchw": (False, False)})
    return {"device": device.type, "amp": amp, "batch": sizes.batch, "depth": sizes.depth,
            "variants": {name: profile_variant(images, norm, sizes, n_classes, device, amp, cl, comp)
                         for name, (cl, comp) in variants.items()}}


def format_profile(report: dict[str, Any]) -> str:
    lines = []
    for name, v in report["variants"].items():
        head = f"{name}: {v['kernels_per_step']:.0f} kernels, {v['kernel_ms_per_step']:.3f} ms of kernels per step"
        if "graphed_ms_per_step" in v:
            head += f"; graphed step {v['graphed_ms_per_step']:.3f} ms ({v['graphed_over_kernels']:.2f}x the kernels)"
            head += (f"; on one fixed batch {v['step_alone_ms_per_step']:.3f} ms"
                     f" (batch preparation {100 * v['batch_prep_share']:.0f}% of the step)")
        lines.append(head)
        lines += [f"  {k:<16} {d['ms_per_step']:8.3f} ms  {100 * d['share']:5.1f}%" for k, d in v["by_kind"].items()]
        lines += [f"    {t['share'] * 100:5.1f}%  {t['calls_per_step']:5.1f}/step  {t['name'][:90]}" for t in v["top"][:8]]
    return "\n".join(lines)
